"""Reliability of a difference-of-means direction, per layer: split-half cosine, bootstrap interval of the
cosine to the full-data direction, cosine against the number of pairs, and chance baselines.

Baselines: *random label swaps* flips each pair's (with - without) difference at random, which
removes any shared direction (what chance looks like); *shuffled pairing* pairs each with-prompt
with another query's without-prompt (the mean difference is the same, the split halves are not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..directions import pair_activations
from ..errors import DatasetError, ShapeError, WorkbenchError
from ..models.loading import model_info
from .common import check_layer_list


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def _split_half(diffs: Float[torch.Tensor, "n d"], n_splits: int, gen: torch.Generator) -> Float[torch.Tensor, "splits"]:
    n = diffs.shape[0]
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(n_splits)])
    half = n // 2
    a = diffs[perm[:, :half]].mean(1)
    b = diffs[perm[:, half : 2 * half]].mean(1)
    return _cos(a, b)


@dataclass(frozen=True)
class Reliability:
    """Per layer (rows) the statistics over random draws; ``sizes`` are the pair counts of ``by_size``.

    ``split_half[layer, split]``, ``bootstrap[layer, draw]`` (cosine of a resampled direction to the full one),
    ``by_size[layer, size, draw]`` (cosine of a subsample of that many pairs to the full direction),
    ``swap_split_half`` / ``shuffle_split_half`` the two baselines' split-half cosines.
    """

    layers: tuple[int, ...]
    n_pairs: int
    sizes: tuple[int, ...]
    split_half: Float[torch.Tensor, "layers splits"]
    bootstrap: Float[torch.Tensor, "layers draws"]
    by_size: Float[torch.Tensor, "layers sizes draws"]
    swap_split_half: Float[torch.Tensor, "layers splits"]
    shuffle_split_half: Float[torch.Tensor, "layers splits"]
    name: str = "direction"
    model_name: str = ""

    def bootstrap_interval(self, level: float = 0.95) -> Float[torch.Tensor, "layers 2"]:
        q = (1 - level) / 2
        return torch.stack([self.bootstrap.quantile(q, dim=1), self.bootstrap.quantile(1 - q, dim=1)], 1)

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: mean split-half cosine, bootstrap 95% interval, baselines' means."""
        ci = self.bootstrap_interval()
        return [
            dict(layer=layer, split_half=float(self.split_half[i].mean()), bootstrap_lo=float(ci[i, 0]),
                 bootstrap_hi=float(ci[i, 1]), swap_baseline=float(self.swap_split_half[i].mean()),
                 shuffle_baseline=float(self.shuffle_split_half[i].mean()))
            for i, layer in enumerate(self.layers)
        ]


def reliability_from_activations(
    with_acts: Float[torch.Tensor, "n layers d_model"],
    without_acts: Float[torch.Tensor, "n layers d_model"],
    layers: Sequence[int] | None = None,
    n_splits: int = 200,
    n_boot: int = 200,
    sizes: Sequence[int] | None = None,
    n_draws: int = 50,
    seed: int = 0,
    progress: bool = True,
    name: str = "direction",
    model_name: str = "",
) -> Reliability:
    """Reliability statistics of the mean (with - without) direction from paired activations.

    >>> r = reliability_from_activations(w, wo, layers=range(30)); r.summary()[20]
    """
    if with_acts.shape != without_acts.shape or with_acts.dim() != 3:
        raise ShapeError(f"with/without activations must both be [n, layers, d_model], got {tuple(with_acts.shape)} and {tuple(without_acts.shape)}")
    n = with_acts.shape[0]
    if n < 4:
        raise DatasetError(f"reliability needs at least 4 pairs (two halves of 2), got {n}")
    layers = tuple(range(with_acts.shape[1])) if layers is None else tuple(int(x) for x in layers)
    if len(layers) != with_acts.shape[1]:
        raise ShapeError(f"{len(layers)} layers given for activations of {with_acts.shape[1]} layers")
    if min(n_splits, n_boot, n_draws) < 1:
        raise WorkbenchError("n_splits, n_boot and n_draws must be >= 1")
    sizes = tuple(sorted({s for s in (sizes or _default_sizes(n)) if 1 <= s <= n}))
    if not sizes:
        raise WorkbenchError(f"no pair counts between 1 and {n} to evaluate")
    gen = torch.Generator().manual_seed(seed)
    diffs = (with_acts - without_acts).float()
    stats = {k: [] for k in ("split", "boot", "size", "swap", "shuffle")}
    for li in tqdm(range(len(layers)), desc="reliability (layers)", disable=not progress, unit="layer"):
        d = diffs[:, li]
        full = d.mean(0)
        stats["split"].append(_split_half(d, n_splits, gen))
        idx = torch.randint(0, n, (n_boot, n), generator=gen)
        stats["boot"].append(_cos(d[idx].mean(1), full))
        per_size = []
        for s in sizes:
            sub = torch.stack([torch.randperm(n, generator=gen)[:s] for _ in range(n_draws)])
            per_size.append(_cos(d[sub].mean(1), full))
        stats["size"].append(torch.stack(per_size))
        signs = torch.randint(0, 2, (n_splits, n), generator=gen).float() * 2 - 1
        perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(n_splits)])
        half = n // 2
        swapped = d[None] * signs[..., None]  # [splits, n, d]
        rows = torch.arange(n_splits)[:, None]
        stats["swap"].append(_cos(swapped[rows, perm[:, :half]].mean(1), swapped[rows, perm[:, half : 2 * half]].mean(1)))
        shuffled = with_acts[:, li].float() - without_acts[torch.randperm(n, generator=gen), li].float()
        stats["shuffle"].append(_split_half(shuffled, n_splits, gen))
    return Reliability(
        layers=layers, n_pairs=n, sizes=sizes, split_half=torch.stack(stats["split"]), bootstrap=torch.stack(stats["boot"]),
        by_size=torch.stack(stats["size"]), swap_split_half=torch.stack(stats["swap"]),
        shuffle_split_half=torch.stack(stats["shuffle"]), name=name, model_name=model_name,
    )


def _default_sizes(n: int) -> list[int]:
    sizes, s = [], 2
    while s < n:
        sizes.append(s)
        s *= 2
    return sizes + [n]


def direction_reliability(
    model: Any, pairs: Any, layers: Sequence[int] | None = None, batch_size: int = 16, progress: bool = True, **kwargs: Any
) -> Reliability:
    """:func:`reliability_from_activations` on a model's last-token activations of ``pairs``.

    >>> r = direction_reliability(model, wb.load_pairs("format", "detectable_format:title").head(64))
    """
    layers = check_layer_list(model, layers)
    pairs.require_nonempty("direction reliability")
    for i, row in enumerate(pairs):
        if row.prompt == row.prompt_without_instruction:
            raise DatasetError(f"direction reliability: pair {i} ({row.base_id}): the two prompts are identical")
    w, wo = pair_activations(model, pairs, layers, batch_size=batch_size, progress=progress)
    ids = pairs.instruction_ids()
    return reliability_from_activations(w, wo, layers, progress=progress, name="+".join(ids),
                                        model_name=model_info(model).name, **kwargs)


def reliability_figure(r: Reliability, layer: int | None = None):
    """Left: split-half cosine, bootstrap interval and the two baselines over layers (bands: 5-95%).
    Right: cosine to the full-data direction against the number of pairs at ``layer`` (default: the middle one)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layer = r.layers[len(r.layers) // 2] if layer is None else int(layer)
    if layer not in r.layers:
        raise WorkbenchError(f"reliability was computed for layers {r.layers[0]}..{r.layers[-1]}, not {layer}")
    li = r.layers.index(layer)
    x = list(r.layers)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], subplot_titles=(
        f"per layer ({r.n_pairs} pairs)", f"how many pairs are enough (layer {layer})"))

    def band(xs, vals, color, label, col, group):
        lo, hi, mid = vals.quantile(0.05, dim=-1), vals.quantile(0.95, dim=-1), vals.mean(-1)
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi.tolist() + lo.tolist()[::-1], fill="toself", fillcolor=color, opacity=0.15,
                                 line=dict(width=0), showlegend=False, hoverinfo="skip", legendgroup=group), 1, col)
        fig.add_trace(go.Scatter(x=xs, y=mid.tolist(), name=label, mode="lines+markers", line=dict(color=color), legendgroup=group), 1, col)

    band(x, r.split_half, "#1f77b4", "split-half cosine", 1, "a")
    band(x, r.bootstrap, "#2ca02c", "bootstrap: cosine to the full direction", 1, "b")
    band(x, r.shuffle_split_half, "#9467bd", "baseline: shuffled pairing (split-half)", 1, "c")
    band(x, r.swap_split_half, "#7f7f7f", "baseline: random label swaps (split-half)", 1, "d")
    band(list(r.sizes), r.by_size[li], "#ff7f0e", "subsample of n pairs: cosine to the full direction", 2, "e")
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="number of pairs", type="log", row=1, col=2)
    fig.update_yaxes(title_text="cosine", range=[-1.02, 1.02])
    fig.update_layout(
        title=f"Reliability of the '{r.name}' direction ({r.model_name}); bands: 5-95% over random draws",
        template="plotly_white", width=1300, height=550, legend=dict(orientation="h", y=-0.2),
    )
    return fig
