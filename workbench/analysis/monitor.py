"""A compliance monitor: does an instruction direction's projection tell, before any token is generated, whether a
prompt carries the instruction, and whether the model is about to follow it?

``monitor`` returns each prompt's projection at its last token per layer; ``compliance_monitor`` scores it by AUROC
(with a bootstrap 95% interval) for (a) instruction present vs absent and (b) among instructed prompts, the unsteered
response followed (IFEval strict) vs not, beside a random direction of the same norm as the null.

>>> proj = wb.monitor(model, title, ["Write a poem. Add a title in <<double brackets>>.", "Write a poem."])
>>> proj.projections.shape   # [2, n_layers]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

from ..activations import activations_of_tokens, collect_activations
from ..directions import Direction
from ..errors import DatasetError, ShapeError
from ..hooks import check_layers


@dataclass
class MonitorProjections:
    """Each prompt's projection on the direction's unit vector at its last token, per layer; with ``generated``, also
    at each token of its greedy response (``generated[i]``: ``[n_tokens_i, n_layers]``, ``responses[i]`` its text)."""

    prompts: list[str]
    layers: list[int]
    projections: Float[torch.Tensor, "n_prompts n_layers"]
    direction: str
    generated: list[torch.Tensor] | None = None
    responses: list[str] | None = None


def monitor(model: Any, direction: Direction, prompts: Sequence[str], layers: Sequence[int] | None = None,
            batch_size: int = 16, progress: bool = False, generated: bool = False, max_new_tokens: int = 64,
            ) -> MonitorProjections:
    """Projections of ``prompts``' last-token residual stream on ``direction`` at ``layers`` (default: its layers);
    ``generated=True`` also decodes each prompt greedily (``max_new_tokens``) and projects the residual stream at
    every response token, as the model reads it back (does the direction fade or grow as the response unfolds?).

    >>> wb.monitor(model, title, prompts, layers=[20, 26]).projections   # [n_prompts, 2]
    >>> wb.monitor(model, title, prompts, layers=[26], generated=True).generated[0]   # [n_tokens, 1]
    """
    direction.check_compatible(model)
    if isinstance(prompts, str) or not len(prompts):
        raise DatasetError("monitor: give a non-empty list of prompts")
    layers = list(direction.layers) if layers is None else check_layers(model, layers)
    missing = [x for x in layers if x not in direction.layers]
    if missing:
        raise ShapeError(f"monitor: direction {direction.name!r} has no vector at layer(s) {missing[:5]}")
    acts = collect_activations(model, list(prompts), layers=layers, batch_size=batch_size, progress=progress)
    units = torch.stack([direction.at(x).unit for x in layers]).to(acts.dtype)
    out = MonitorProjections(list(prompts), layers, torch.einsum("nld,ld->nl", acts, units), direction.name)
    if generated:
        out.generated, out.responses = _generated_projections(model, list(prompts), layers, units, max_new_tokens, batch_size)
    return out


def _generated_projections(model: Any, prompts: list[str], layers: list[int], units: torch.Tensor, max_new_tokens: int,
                           batch_size: int) -> tuple[list[torch.Tensor], list[str]]:
    """Greedy responses and, per response token, the projection of the residual stream at that token's position."""
    from ..decoding import generate
    from ..models.loading import model_info

    tokens = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, return_tokens=True)
    rows = model_info(model).formatter.token_rows(prompts, max_tokens=int(model.cfg.n_ctx))
    out = []
    for row, response in zip(rows, tokens):
        if not response:
            out.append(torch.zeros(0, len(layers)))
            continue
        ids = torch.tensor([list(row) + list(response)])
        acts = activations_of_tokens(model, ids, torch.ones_like(ids), layers, k=len(response))[0]  # [n_layers, k, d]
        out.append(torch.einsum("lkd,ld->kl", acts, units))
    texts = [model.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    return out, texts


def _pairwise_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC as P(positive scores above negative) + half the ties, over the last two axes (Mann-Whitney)."""
    diff = pos[..., :, None] - neg[..., None, :]
    return (diff > 0).mean(axis=(-1, -2)) + 0.5 * (diff == 0).mean(axis=(-1, -2))


def auroc_interval(scores: Sequence[float], labels: Sequence[bool], n_boot: int = 1000, seed: int = 0,
                   ) -> tuple[float, float, float]:
    """AUROC of ``scores`` for ``labels`` (scikit-learn's) with a 95% percentile bootstrap interval (resampling within
    each class, vectorised); NaN when one class is empty (an AUROC needs both)."""
    from sklearn.metrics import roc_auc_score

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan"), float("nan"), float("nan")
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    boots = _pairwise_auc(pos[rng.integers(0, len(pos), (n_boot, len(pos)))], neg[rng.integers(0, len(neg), (n_boot, len(neg)))])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return auc, float(lo), float(hi)


@dataclass
class MonitorResult:
    """Per-layer AUROC (95% interval) of the projection for presence and for compliance, and the random null."""

    layers: list[int]
    presence: list[tuple[float, float, float]]
    presence_null: list[tuple[float, float, float]]
    compliance: list[tuple[float, float, float]]
    compliance_null: list[tuple[float, float, float]]
    with_proj: Float[torch.Tensor, "n n_layers"]
    without_proj: Float[torch.Tensor, "n n_layers"]
    followed: list[bool]
    responses: list[str] = field(default_factory=list)
    direction: str = ""
    model: str = ""

    def best_layer(self, task: str = "compliance") -> int:
        """The layer with the highest AUROC for ``task`` (``presence`` or ``compliance``; ties: the earlier layer)."""
        values = [a for a, _, _ in getattr(self, task)]
        if all(np.isnan(values)):
            return self.layers[-1]
        return self.layers[int(np.nanargmax(values))]

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-ready row per layer."""
        rows = []
        for i, layer in enumerate(self.layers):
            row: dict[str, Any] = {"layer": layer}
            for task in ("presence", "presence_null", "compliance", "compliance_null"):
                a, lo, hi = getattr(self, task)[i]
                row.update({task: _round(a), f"{task}_lo": _round(lo), f"{task}_hi": _round(hi)})
            rows.append(row)
        return rows


def _round(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)


def compliance_monitor(model: Any, direction: Direction, pairs: Any, layers: Sequence[int] | None = None,
                       max_new_tokens: int = 64, batch_size: int = 16, seed: int = 0, n_boot: int = 1000,
                       progress: bool = False) -> MonitorResult:
    """AUROC by layer of the direction's last-token projection for (a) with vs without the instruction and (b) among
    instructed prompts, the unsteered greedy response following it; a seeded random direction is the null."""
    from ..evaluation.checkers import follows
    from ..decoding import generate
    from ..transfer.direct import random_like

    rows = pairs.with_twin()
    if len(rows) < 2:
        raise DatasetError(f"compliance monitor: needs at least 2 pairs with an instruction-free twin, got {len(rows)}")
    layers = list(direction.layers) if layers is None else check_layers(model, layers)
    null = random_like(direction, seed)
    w = monitor(model, direction, rows.prompts(), layers, batch_size, progress).projections
    wo = monitor(model, direction, rows.prompts_without_instruction(), layers, batch_size, progress).projections
    wn = monitor(model, null, rows.prompts(), layers, batch_size, progress).projections
    won = monitor(model, null, rows.prompts_without_instruction(), layers, batch_size, progress).projections
    responses = generate(model, rows.prompts(), max_new_tokens=max_new_tokens, batch_size=batch_size)
    followed = [follows(r, t) for r, t in zip(rows, responses)]
    labels = [True] * len(rows) + [False] * len(rows)
    out = MonitorResult(layers=layers, presence=[], presence_null=[], compliance=[], compliance_null=[], with_proj=w,
                        without_proj=wo, followed=followed, responses=list(responses), direction=direction.name,
                        model=direction.model_name)
    for i in range(len(layers)):
        out.presence.append(auroc_interval(torch.cat([w[:, i], wo[:, i]]).tolist(), labels, n_boot, seed))
        out.presence_null.append(auroc_interval(torch.cat([wn[:, i], won[:, i]]).tolist(), labels, n_boot, seed))
        out.compliance.append(auroc_interval(w[:, i].tolist(), followed, n_boot, seed))
        out.compliance_null.append(auroc_interval(wn[:, i].tolist(), followed, n_boot, seed))
    return out


def monitor_figure(result: MonitorResult):
    """AUROC by layer with intervals (direction vs random null, both tasks), the ROC at the best compliance layer,
    and the projection histograms of followed vs not followed there."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from sklearn.metrics import roc_curve

    best = result.best_layer("compliance")
    bi = result.layers.index(best)
    fig = make_subplots(rows=1, cols=3, column_widths=[0.5, 0.25, 0.25], subplot_titles=(
        "AUROC by layer (95% bootstrap interval)", f"ROC at layer {best}: followed vs not",
        f"projection at layer {best}"))
    styles = {"presence": ("#1f77b4", "solid"), "presence_null": ("#1f77b4", "dot"),
              "compliance": ("#d62728", "solid"), "compliance_null": ("#d62728", "dot")}
    names = {"presence": "instruction present", "presence_null": "present (random direction)",
             "compliance": "response follows it", "compliance_null": "follows (random direction)"}
    for task, (colour, dash) in styles.items():
        vals = getattr(result, task)
        a = [None if np.isnan(v[0]) else v[0] for v in vals]
        fig.add_trace(go.Scatter(
            x=result.layers, y=a, name=names[task], mode="lines+markers", line=dict(color=colour, dash=dash),
            error_y=dict(type="data", symmetric=False, array=[None if np.isnan(v[0]) else v[2] - v[0] for v in vals],
                         arrayminus=[None if np.isnan(v[0]) else v[0] - v[1] for v in vals])), row=1, col=1)
    fig.add_hline(y=0.5, line=dict(color="grey", dash="dash"), row=1, col=1)
    scores = result.with_proj[:, bi].numpy()
    followed = np.asarray(result.followed, dtype=bool)
    if followed.any() and (~followed).any():
        fpr, tpr, _ = roc_curve(followed, scores)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, name=f"ROC, layer {best}", mode="lines", line=dict(color="#d62728")), row=1, col=2)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="grey", dash="dash"), showlegend=False),
                  row=1, col=2)
    for label, mask, colour in (("followed", followed, "#2ca02c"), ("not followed", ~followed, "#7f7f7f")):
        fig.add_trace(go.Histogram(x=scores[mask], name=f"{label} (n={int(mask.sum())})", opacity=0.6,
                                   marker_color=colour), row=1, col=3)
    fig.update_layout(barmode="overlay", template="plotly_white", width=1300, height=470,
                      title=f"Compliance monitor: '{result.direction}' on {result.model}, {len(result.followed)} pairs "
                            f"({int(followed.sum())} unsteered responses follow the instruction)")
    fig.update_yaxes(range=[-0.03, 1.03], title_text="AUROC", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="false positive rate", row=1, col=2)
    fig.update_yaxes(title_text="true positive rate", row=1, col=2)
    fig.update_xaxes(title_text="projection (last prompt token)", row=1, col=3)
    return fig
