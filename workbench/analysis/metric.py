"""The effect metric shared by patching and necessity/sufficiency: 0 = the without-instruction run, 1 = the with run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float

from ..errors import WorkbenchError
from ..models.loading import model_info


@dataclass(frozen=True)
class Metric:
    """``kind="kl"``: mean log-probability of the first response token under the with-run's distribution,
    ``sum_t p_with(t) * log p(t)``, so with - without is KL(p_with || p_without). ``kind="target"``: the
    teacher-forced log-probability of ``target_ids`` (e.g. ``<<`` for a title) after the prompt.
    """

    kind: str = "kl"
    target: str | None = None
    target_ids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return "KL shift of the first response token" if self.kind == "kl" else f"log p({self.target!r})"

    def sequence(self, prompt_ids: Sequence[int]) -> list[int]:
        """The tokens a run sees: the prompt, then all but the last target token (teacher forcing)."""
        return list(prompt_ids) + list(self.target_ids[:-1])

    def rows(self, prompt_len: int) -> list[int]:
        """Positions whose next-token log-probabilities the metric reads."""
        n = max(len(self.target_ids), 1)
        return list(range(prompt_len - 1, prompt_len - 1 + n))

    def value(
        self, lp: Float[torch.Tensor, "n rows vocab"], lp_with: Float[torch.Tensor, "rows vocab"], lp_without: Float[torch.Tensor, "rows vocab"]
    ) -> Float[torch.Tensor, "n"]:
        """The metric of each run in ``lp`` (relative to the without run for ``kl``)."""
        if self.kind == "kl":
            p_with = lp_with[0].exp()
            return ((lp[:, 0] - lp_without[0]) * p_with).sum(-1)
        idx = torch.tensor(self.target_ids)
        return lp[:, torch.arange(len(idx)), idx].sum(-1)


def make_metric(model: Any, target: str | None = None) -> Metric:
    """The default KL metric, or the teacher-forced log-probability of ``target``.

    >>> make_metric(model, "<<").target_ids
    """
    if target is None:
        return Metric()
    if not target:
        raise WorkbenchError("metric target is empty; give a continuation such as '<<'")
    tok = model_info(model).formatter.tokenizer
    ids = tuple(int(t) for t in tok(target, add_special_tokens=False)["input_ids"])
    if not ids:
        raise WorkbenchError(f"metric target {target!r} has no tokens")
    return Metric(kind="target", target=target, target_ids=ids)
