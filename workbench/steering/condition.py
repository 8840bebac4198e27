"""Conditional steering: steer a row only when its own prompt's projection on a condition direction crosses a threshold.

The decision is made once per row, before any token is generated, from a separate pass over that row's prompt tokens
(exactly the tokens :func:`workbench.generate` decodes from): the residual stream at the condition's layer (``hook``,
``resid_post`` by default) of the model as it stands outside the conditional blocks, i.e. with every open
unconditional ``steer`` block applied and no conditional steering. It reads the last prompt token (``on="last"``) or
the mean over all prompt tokens (``on="mean"``). So the decision is well defined whether the steered layer comes
before or after the condition's, and it never depends on another row of the batch. Rows that pass get the block's
specs as per-row steering (:mod:`.rows`), on every decoding path.

>>> gate = wb.Condition(title, layer=20, threshold=3.0)          # steer prompts that already ask for a title
>>> with wb.steer(model, title, layer=26, mode="project", condition=gate) as block:
...     out = wb.generate(model, prompts)
>>> block.last.steered, block.last.projections                     # which rows were steered, and why
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float

from ..activations import activations_of_tokens
from ..directions import Direction
from ..errors import LayerError, SteeringError
from ..hooks import RESID_HOOKS, check_layers
from .spec import SteeringSpec, _as_layer, _as_number, make_spec

COMPARES = (">", "<")
READS = ("last", "mean")


class ConditionError(SteeringError):
    """A condition that cannot be used (bad threshold, comparison, layer), or a forward pass it cannot decide."""


@dataclass(frozen=True, eq=False)
class Condition:
    """Steer a row when ``<h, u> compare threshold``, ``h`` its prompt's residual stream at ``layer`` (last token or
    mean over the prompt), ``u`` the unit vector of ``direction`` there.

    >>> wb.Condition(title, layer=20, threshold=3.0, compare=">", on="last")
    """

    direction: Any
    layer: int | None = None
    threshold: float = 0.0
    compare: str = ">"
    on: str = "last"
    hook: str = "resid_post"

    def __post_init__(self) -> None:
        if self.compare not in COMPARES:
            raise ConditionError(f"unknown comparison {self.compare!r}; choose one of {COMPARES}")
        if self.on not in READS:
            raise ConditionError(f"unknown on={self.on!r}; choose one of {READS} (the prompt's last token or its mean)")
        if self.hook not in RESID_HOOKS:
            raise ConditionError(f"unknown hook {self.hook!r}; choose one of {RESID_HOOKS}")
        try:
            object.__setattr__(self, "threshold", _as_number("threshold", self.threshold))
            object.__setattr__(self, "layer", _as_layer(self.layer))
            spec = make_spec(self.direction, self.layer)
        except SteeringError as exc:
            raise ConditionError(f"condition: {exc}") from None
        except LayerError as exc:
            raise ConditionError(f"condition: {exc}") from None
        object.__setattr__(self, "layer", spec.layer)
        object.__setattr__(self, "_unit", spec.unit)
        object.__setattr__(self, "name", spec.name)

    @property
    def unit(self) -> Float[torch.Tensor, "d_model"]:
        return self._unit  # type: ignore[attr-defined]

    def check(self, model: Any) -> None:
        """Refuse a condition layer out of the model's range or a direction of another width, in one line."""
        n, d = int(model.cfg.n_layers), int(model.cfg.d_model)
        if not 0 <= self.layer < n:
            raise ConditionError(f"condition layer {self.layer} is out of range: this model has layers 0..{n - 1}")
        if self.unit.shape[0] != d:
            raise ConditionError(f"condition direction {self.name!r} has d_model={self.unit.shape[0]}, the model has "
                                 f"d_model={d} (a direction from another model?)")

    def holds(self, projections: Float[torch.Tensor, "n"]) -> Bool[torch.Tensor, "n"]:
        """Which projections satisfy the condition."""
        return projections > self.threshold if self.compare == ">" else projections < self.threshold

    def scores(self, model: Any, prompts: Sequence[str], formatted: bool = False, batch_size: int = 16,
               ) -> Float[torch.Tensor, "n"]:
        """Each prompt's projection as the gate reads it (outside any conditional block).

        >>> gate.scores(model, ["Write a poem.", "Write a poem. Add a title in <<brackets>>."])
        """
        self.check(model)
        info = _info(model)
        rows = info.formatter.token_rows(list(prompts), formatted, int(model.cfg.n_ctx))
        with gates_open(model):
            return prompt_projections(model, rows, self, batch_size)

    def __repr__(self) -> str:
        return f"Condition({self.name!r}, layer={self.layer}, {self.on} {self.compare} {self.threshold:g})"


@dataclass
class GateDecisions:
    """One ``generate`` call's decisions: each prompt's projection and whether its row was steered."""

    prompts: list[str]
    projections: Float[torch.Tensor, "n"]
    steered: Bool[torch.Tensor, "n"]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per prompt (a DataFrame's records)."""
        return [{"prompt": p, "projection": float(x), "steered": bool(s)}
                for p, x, s in zip(self.prompts, self.projections, self.steered)]


@dataclass(eq=False)
class ConditionalSteering:
    """An open ``steer(..., condition=...)`` block: its specs, its condition, the decisions of each ``generate`` call."""

    specs: list[SteeringSpec]
    condition: Condition
    calls: list[GateDecisions] = field(default_factory=list)

    @property
    def last(self) -> GateDecisions:
        if not self.calls:
            raise ConditionError("no generate() call has run in this conditional block yet")
        return self.calls[-1]


def _info(model: Any) -> Any:
    from ..models.loading import model_info

    return model_info(model)


@contextlib.contextmanager
def gates_open(model: Any) -> Iterator[None]:
    """Let forward passes run inside conditional blocks (``generate`` decides and applies them itself)."""
    info = _info(model)
    before, info.gates_open = info.gates_open, True
    try:
        yield
    finally:
        info.gates_open = before


def guard(model: Any):
    """A ``hook_embed`` hook refusing forward passes a conditional block cannot decide (any but ``generate``'s)."""
    info = _info(model)

    def fn(x: torch.Tensor) -> None:
        if not info.gates_open:
            raise ConditionError("a forward pass inside a conditional steer block: the condition is decided per prompt by "
                                 "wb.generate(); run other passes outside the block")

    return fn


def prompt_projections(model: Any, rows: Sequence[Sequence[int]], condition: Condition, batch_size: int = 16,
                       ) -> Float[torch.Tensor, "n"]:
    """Projections of token ``rows`` (unpadded prompt tokens) at the condition's layer, read as it says."""
    ids, mask = _info(model).formatter.pad(rows, padding_side="right")
    acts = activations_of_tokens(model, ids, mask, [condition.layer], condition.hook, reduce=condition.on,
                                 batch_size=batch_size)[:, 0, 0]
    return acts @ condition.unit.float()


def gated_row_specs(model: Any, prompts: Sequence[str], rows: Sequence[Sequence[int]],
                    blocks: Sequence[ConditionalSteering]) -> list[list[SteeringSpec]]:
    """Per-row specs of the open conditional blocks for these prompt rows (in the blocks' order), recording each
    block's decisions."""
    specs: list[list[SteeringSpec]] = [[] for _ in rows]
    for block in blocks:
        projections = prompt_projections(model, rows, block.condition)
        steered = block.condition.holds(projections)
        block.calls.append(GateDecisions(list(prompts), projections, steered))
        for i in torch.nonzero(steered).flatten().tolist():
            specs[i].extend(block.specs)
    return specs



# --- choosing a gate -----------------------------------------------------------------------------------------------

def best_threshold(pos: np.ndarray, neg: np.ndarray) -> dict[str, Any]:
    """The threshold and side (``>`` or ``<``) that best separate ``pos`` (steer) from ``neg`` (leave alone) by Youden's
    J; ties go to the wider margin (distance from the threshold to the nearest score, over the scores' std)."""
    scores = np.sort(np.unique(np.concatenate([pos, neg])))
    cuts = np.concatenate([[scores[0] - 1.0], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1.0]])
    spread = float(np.concatenate([pos, neg]).std()) or 1.0
    best: dict[str, Any] | None = None
    for compare in (">", "<"):
        hit = (pos[None, :] > cuts[:, None]).mean(1) if compare == ">" else (pos[None, :] < cuts[:, None]).mean(1)
        false = (neg[None, :] > cuts[:, None]).mean(1) if compare == ">" else (neg[None, :] < cuts[:, None]).mean(1)
        j = hit - false
        margin = np.abs(np.concatenate([pos, neg])[None, :] - cuts[:, None]).min(1) / spread
        for i in np.lexsort((-margin, -j))[:1]:  # the largest J, then the largest margin
            cand = {"compare": compare, "threshold": float(cuts[i]), "youden_j": float(j[i]), "share_hit": float(hit[i]),
                    "share_false_trigger": float(false[i]), "margin": float(margin[i])}
            if best is None or (cand["youden_j"], cand["margin"]) > (best["youden_j"], best["margin"]):
                best = cand
    assert best is not None
    return best


def choose_gate(name: str, proj_in: torch.Tensor, proj_out: torch.Tensor, layers: Sequence[int],
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-layer best gates on validation projections (``[n, n_layers]`` of instructed and uninstructed prompts) and
    the chosen one (the best J over layers, then the widest margin, then the earliest layer)."""
    rows = []
    for j, layer in enumerate(layers):
        g = best_threshold(proj_in[:, j].double().numpy(), proj_out[:, j].double().numpy())
        rows.append({"instruction_id": name, "gate_layer": int(layer), **g, "n_instructed": int(proj_in.shape[0]),
                     "n_uninstructed": int(proj_out.shape[0]), "chosen": False})
    chosen = max(rows, key=lambda r: (r["youden_j"], r["margin"], -r["gate_layer"]))
    chosen["chosen"] = True
    return rows, chosen


@dataclass
class GateFit:
    """A gate chosen on prompts that should be steered (``instructed``) and prompts that should not: the
    :class:`Condition`, and per layer its best threshold with Youden's J, hit and false-trigger rates."""

    condition: Condition
    layers: list[dict[str, Any]]

    def figure(self, projections: Sequence[float] = (), instructed: Sequence[bool] = ()):
        """J, hit and false-trigger rate by layer (and, given, projections of other prompts at the chosen layer)."""
        from ..figures.gates import gate_figure

        return gate_figure(self.layers, projections, instructed)


def fit_condition(model: Any, direction: Any, steer_these: Sequence[str], leave_these: Sequence[str],
                  layers: Sequence[int] | None = None, on: str = "last", name: str | None = None) -> GateFit:
    """Choose the gate's layer, side and threshold that best separate ``steer_these`` prompts from ``leave_these``
    (Youden's J = hit rate - false-trigger rate; ties: the wider standardised margin, then the earlier layer), reading
    ``direction``'s projection at each of ``layers`` (default: all of its layers) as the gate will.

    >>> fit = wb.fit_condition(model, title, val.prompts(), val.prompts_without_instruction(), layers=range(10, 30))
    >>> fit.condition, fit.figure()
    """
    if not isinstance(direction, Direction):
        raise ConditionError(f"fit_condition needs a Direction (one vector per layer), got {type(direction).__name__}")
    direction.check_compatible(model)
    if isinstance(steer_these, str) or isinstance(leave_these, str) or not len(steer_these) or not len(leave_these):
        raise ConditionError("fit_condition: give a non-empty list of prompts to steer and one to leave alone")
    if on not in READS:
        raise ConditionError(f"unknown on={on!r}; choose one of {READS} (the prompt's last token or its mean)")
    layers = list(direction.layers) if layers is None else check_layers(model, list(layers))
    missing = [x for x in layers if x not in direction.layers]
    if missing:
        raise ConditionError(f"fit_condition: direction {direction.name!r} has no vector at layer(s) {missing[:5]}")
    units = torch.stack([direction.at(x).unit for x in layers]).float()
    formatter = _info(model).formatter

    def projections(prompts: Sequence[str]) -> torch.Tensor:
        ids, mask = formatter.encode(list(prompts), padding_side="right", max_tokens=int(model.cfg.n_ctx))
        acts = activations_of_tokens(model, ids, mask, layers, reduce=on)[:, :, 0]
        return torch.einsum("nld,ld->nl", acts, units)

    rows, chosen = choose_gate(name or direction.name, projections(steer_these), projections(leave_these), layers)
    condition = Condition(direction, layer=chosen["gate_layer"], threshold=chosen["threshold"], compare=chosen["compare"],
                          on=on)
    return GateFit(condition, rows)
