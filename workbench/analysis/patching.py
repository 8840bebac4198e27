"""Activation patching: run the without-instruction prompt with the with-instruction run's residual stream
patched in at one (layer, position), and measure how much of the instruction's effect comes back.

Positions are aligned from the end (0 = last token): the chat template's suffix after the user
text is the same in both prompts. The effect is normalised, 0 = the without run, 1 = the with run
(:mod:`workbench.analysis.metric`). Patching the last position at the last layer gives 1 for any
pair; patching every position at layer 0 gives 1 when both prompts have the same number of tokens
(otherwise the with run's extra tokens have no place to go).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..errors import WorkbenchError
from ..models.loading import model_info
from .attention import token_labels
from .common import Edit, TokenPair, clean_forward, check_layer_list, edited_logprobs, effect, tokenize_pairs
from .metric import Metric, make_metric

MIN_EFFECT = 1e-6  # below this, the instruction does not change the metric and no effect can be normalised


@dataclass(frozen=True)
class PairRuns:
    """One pair's clean runs: token sequences, resid_post of both at the analysed layers, the metric's log-probs."""

    pair: TokenPair
    seq_with: list[int]
    seq_without: list[int]
    resid_with: Float[torch.Tensor, "layers seq d_model"]
    resid_without: Float[torch.Tensor, "layers seq d_model"]
    lp_with: Float[torch.Tensor, "rows vocab"]
    lp_without: Float[torch.Tensor, "rows vocab"]
    m_with: float
    m_without: float


def clean_runs(model: Any, tp: TokenPair, layers: Sequence[int], metric: Metric, index: int = 0) -> PairRuns:
    """Both clean runs of a pair, with the metric's normaliser checked (the instruction must move the metric)."""
    seq_w, seq_wo = metric.sequence(tp.with_ids), metric.sequence(tp.without_ids)
    resid_w, lp_w = clean_forward(model, seq_w, layers, metric.rows(len(tp.with_ids)))
    resid_wo, lp_wo = clean_forward(model, seq_wo, layers, metric.rows(len(tp.without_ids)))
    m = metric.value(torch.stack([lp_w, lp_wo]), lp_w, lp_wo)
    if not math.isfinite(float(m[0] - m[1])) or abs(float(m[0] - m[1])) < MIN_EFFECT:
        raise WorkbenchError(
            f"pair {index}: the instruction does not change the metric ({metric.label}: with {float(m[0]):.3g}, "
            f"without {float(m[1]):.3g}); drop the pair or choose another --target"
        )
    return PairRuns(tp, seq_w, seq_wo, resid_w, resid_wo, lp_w, lp_wo, float(m[0]), float(m[1]))


def patch_effects(
    model: Any, runs: PairRuns, layers: Sequence[int], patches: Sequence[Sequence[tuple[int, int]]], metric: Metric,
    batch_size: int = 16, progress: bool = False,
) -> Float[torch.Tensor, "n_patches"]:
    """Effect of each patch set: a list of ``(layer, position from the end)`` copied from the with run into the without run.

    >>> patch_effects(model, runs, [0], [[], [(0, j) for j in range(n)]], metric)  # nothing -> 0, everything -> 1
    """
    n_w, n_wo = len(runs.seq_with), len(runs.seq_without)
    rows = []
    for patch in patches:
        edits = []
        for layer, j in patch:
            if not 0 <= j < n_wo:
                raise WorkbenchError(f"position {j} from the end is outside the without-instruction prompt ({n_wo} tokens)")
            li = list(layers).index(layer)
            edits.append(Edit(layer, n_wo - 1 - j, runs.resid_with[li, n_w - 1 - j], "set"))
        rows.append(edits)
    lp = edited_logprobs(model, runs.seq_without, rows, metric.rows(len(runs.pair.without_ids)), batch_size, "patched runs", progress)
    m = metric.value(lp, runs.lp_with, runs.lp_without)
    return effect(m, torch.tensor(runs.m_with), torch.tensor(runs.m_without))


@dataclass(frozen=True)
class Patching:
    """``effects[n, layer, position]``: normalised effect of patching one (layer, position from the end); NaN
    where a pair's without-instruction prompt is shorter than the position. ``labels`` / ``labels_with`` are the first
    pair's tokens at those positions in its without / with prompt (they differ where the instruction or the query sits)."""

    layers: tuple[int, ...]
    positions: tuple[int, ...]
    effects: Float[torch.Tensor, "n layers positions"]
    labels: tuple[str, ...]
    metric: str
    model_name: str
    labels_with: tuple[str, ...] = ()

    @property
    def mean(self) -> Float[torch.Tensor, "layers positions"]:
        return self.effects.nanmean(0)


def activation_patching(
    model: Any, pairs: Any, layers: Sequence[int] | None = None, n_positions: int = 16, target: str | None = None,
    batch_size: int = 32, progress: bool = True,
) -> Patching:
    """Layer x position patching heatmap (positions counted from the end), averaged over pairs.

    >>> p = activation_patching(model, pairs.head(4), layers=range(0, 30, 3)); p.mean.shape
    """
    layers = check_layer_list(model, layers)
    if n_positions < 1:
        raise WorkbenchError(f"n_positions must be >= 1, got {n_positions}")
    metric = make_metric(model, target)
    tps = tokenize_pairs(model, pairs, "activation patching")
    positions = tuple(range(n_positions))
    effects = torch.full((len(tps), len(layers), n_positions), float("nan"))
    for i, tp in enumerate(tqdm(tps, desc="patching pairs", disable=not progress, unit="pair")):
        runs = clean_runs(model, tp, layers, metric, i)
        n = min(n_positions, len(runs.seq_without))
        cells = [(layer, j) for layer in layers for j in range(n)]
        vals = patch_effects(model, runs, layers, [[c] for c in cells], metric, batch_size, progress)
        for (layer, j), v in zip(cells, vals):
            effects[i, layers.index(layer), j] = v
    labels = []
    for seq in (metric.sequence(tps[0].without_ids), metric.sequence(tps[0].with_ids)):
        lab = tuple(reversed(token_labels(model, seq[-n_positions:])))
        labels.append(lab + ("",) * (n_positions - len(lab)))
    return Patching(tuple(layers), positions, effects, labels[0], metric.label, model_info(model).name, labels[1])


def patching_figure(p: Patching, title: str = ""):
    """Layer x position heatmap of the mean normalised effect (x: positions from the end, labelled by the first pair's tokens)."""
    import plotly.graph_objects as go

    with_labels = p.labels_with or p.labels
    x = [f"-{j} {wo!r}" if wo == w else f"-{j} {wo!r}<-{w!r}" for j, wo, w in zip(p.positions, p.labels, with_labels)]
    fig = go.Figure(go.Heatmap(
        z=p.mean.tolist(), x=x, y=list(p.layers), colorscale="RdBu_r", zmid=0, zmin=-1, zmax=1,
        colorbar=dict(title="effect"), hovertemplate="layer %{y}, position %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_xaxes(autorange="reversed", title_text="position from the end: first pair's token without <- with the instruction", tickangle=-60)
    fig.update_yaxes(title_text="layer (resid_post patched)")
    fig.update_layout(
        title=title or f"Activation patching, with -> without instruction ({p.model_name}, {p.effects.shape[0]} pairs)"
        f"<br><sup>metric: {p.metric}; 0 = without, 1 = with</sup>",
        template="plotly_white", width=1100, height=max(450, 16 * len(p.layers) + 200),
    )
    return fig
