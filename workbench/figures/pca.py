"""PCA of last-token activations at one layer, coloured by instruction and by with/without instruction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from jaxtyping import Float

from ..errors import ShapeError, WorkbenchError

# Instruction colours; red and blue are kept for with / without, as in the projection figure.
PALETTE = (
    "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
    "#637939", "#8c6d31", "#7b4173", "#7f7f7f", "#e7969c", "#9edae5", "#c49c94", "#dbdb8d",
)


@dataclass(frozen=True)
class PCAResult:
    """Principal components of a set of activations, in decreasing order of explained variance."""

    coords: Float[torch.Tensor, "n k"]
    components: Float[torch.Tensor, "k d_model"]
    explained_variance: Float[torch.Tensor, "k"]
    explained_ratio: Float[torch.Tensor, "k"]
    mean: Float[torch.Tensor, "d_model"]


def activation_pca(acts: Float[torch.Tensor, "n d_model"], k: int = 2) -> PCAResult:
    """Exact PCA by SVD of the centred activations (float64); each component's largest loading is positive."""
    if acts.dim() != 2:
        raise ShapeError(f"activation_pca expects [n, d_model] activations at one layer, got {tuple(acts.shape)}")
    n, d = acts.shape
    if n < 2:
        raise WorkbenchError(f"PCA needs at least 2 activations, got {n}")
    k = min(int(k), n, d)
    x = acts.detach().double().cpu()
    mean = x.mean(0)
    xc = x - mean
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:k]
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    var = s**2 / (n - 1)
    return PCAResult(
        coords=(xc @ comps.T).float(),
        components=comps.float(),
        explained_variance=var[:k].float(),
        explained_ratio=(var[:k] / var.sum().clamp_min(1e-30)).float(),
        mean=mean.float(),
    )


@dataclass(frozen=True)
class PCAPoints:
    """Projected points of several instructions' prompt sets: one row per prompt."""

    pca: PCAResult
    instruction: list[str]
    with_instruction: list[bool]


def pca_points(
    groups: Mapping[str, tuple[Float[torch.Tensor, "n d_model"], Float[torch.Tensor, "m d_model"]]], k: int = 2
) -> PCAPoints:
    """PCA over all prompts of ``{instruction: (with_acts, without_acts)}`` at one layer, with each row's labels."""
    if not groups:
        raise WorkbenchError("pca_points: no instructions given")
    blocks, instruction, flags = [], [], []
    for name, (with_acts, without_acts) in groups.items():
        for acts, flag in ((with_acts, True), (without_acts, False)):
            if acts.dim() != 2:
                raise ShapeError(
                    f"{name}: expected [n, d_model] activations at one layer, got {tuple(acts.shape)} "
                    "(pick a layer, e.g. with_acts[:, layer_index])"
                )
            blocks.append(acts.float())
            instruction += [str(name)] * acts.shape[0]
            flags += [flag] * acts.shape[0]
    return PCAPoints(activation_pca(torch.cat(blocks), k=k), instruction, flags)


def pca_figure(
    groups: Mapping[str, tuple[Float[torch.Tensor, "n d_model"], Float[torch.Tensor, "m d_model"]]],
    layer: int | None = None,
    model_name: str = "",
):
    """Two panels of the first two principal components: coloured by instruction, and by with/without.

    Prompts without an instruction are grey in the first panel; the second shows whether the
    instruction alone moves the activations along a shared axis.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pts = pca_points(groups, k=2)
    xy = pts.pca.coords
    if xy.shape[1] < 2:
        raise WorkbenchError("PCA figure needs at least two components (more than two distinct prompts)")
    ratio = pts.pca.explained_ratio.tolist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("coloured by instruction", "coloured by with / without"))
    names = list(dict.fromkeys(pts.instruction))

    def idx(pred) -> list[int]:
        return [i for i in range(len(pts.instruction)) if pred(i)]

    def scatter(rows: list[int], name: str, color: str, symbol: str, legendgroup: str, group_title: str = ""):
        return go.Scatter(
            x=xy[rows, 0].tolist(), y=xy[rows, 1].tolist(), mode="markers", name=name,
            marker=dict(color=color, symbol=symbol, size=7, opacity=0.8), legendgroup=legendgroup,
            legendgrouptitle_text=group_title or None,
            text=[f"{pts.instruction[i]} ({'with' if pts.with_instruction[i] else 'without'} instruction)" for i in rows],
            hovertemplate="%{text}<br>PC1 %{x:.2f}, PC2 %{y:.2f}<extra></extra>",
        )

    grey = idx(lambda i: not pts.with_instruction[i])
    fig.add_trace(scatter(grey, "without instruction", "#b0b0b0", "circle-open", "left", "left: by instruction"), 1, 1)
    for j, name in enumerate(names):
        rows = idx(lambda i: pts.with_instruction[i] and pts.instruction[i] == name)
        fig.add_trace(scatter(rows, name, PALETTE[j % len(PALETTE)], "circle", "left"), 1, 1)
    with_rows = idx(lambda i: pts.with_instruction[i])
    fig.add_trace(scatter(with_rows, "with instruction", "#d62728", "circle", "right", "right: with / without"), 1, 2)
    fig.add_trace(scatter(grey, "without instruction", "#1f77b4", "circle-open", "right"), 1, 2)
    for col in (1, 2):
        fig.update_xaxes(title_text=f"PC1 ({100 * ratio[0]:.1f}% of variance)", row=1, col=col)
        fig.update_yaxes(title_text=f"PC2 ({100 * ratio[1]:.1f}% of variance)", row=1, col=col)
    where = f" at layer {layer}" if layer is not None else ""
    fig.update_layout(
        title=f"PCA of last-token activations{where}" + (f"<br><sup>{model_name}</sup>" if model_name else ""),
        template="plotly_white", width=1150, height=560, legend=dict(groupclick="toggleitem"),
    )
    return fig
