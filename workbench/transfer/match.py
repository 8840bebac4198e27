"""Which layer of one model matches which of another: the held-out fit of a map for every (source, target) pair."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float

from ..errors import WorkbenchError
from .maps import (
    HELDOUT,
    ResidualMap,
    _side,
    check_fit_texts,
    check_kind,
    check_side_layer,
    fit_map_from_activations,
    split_indices,
)

PAIRINGS: tuple[str, ...] = ("target", "source", "depth")


@dataclass(frozen=True)
class LayerMatch:
    """Held-out fit of a map for every ``(source layer, target layer)``, and the linear CKA of the two layers'
    activations (a map-free similarity, Kornblith et al. 2019); ``maps[(s, t)]`` the fitted maps."""

    r2: Float[torch.Tensor, "n_source n_target"]
    cosine: Float[torch.Tensor, "n_source n_target"]
    cka: Float[torch.Tensor, "n_source n_target"]
    source_layers: tuple[int, ...]
    target_layers: tuple[int, ...]
    source_model: str
    target_model: str
    n_source_layers: int
    n_target_layers: int
    kind: str
    n_fit: int
    n_heldout: int
    maps: dict[tuple[int, int], ResidualMap] = field(default_factory=dict, repr=False)

    def pairs(self, by: str = "target") -> list[tuple[int, int]]:
        """``(source layer, target layer)`` pairs: ``by="target"`` the best-fitting source layer for each target layer
        (what steering the target needs: one map per target layer), ``"source"`` the best target layer for each source
        layer, ``"depth"`` the source layer at the nearest relative depth for each target layer.

        >>> match.pairs("target")  # [(source, target), ...], one per target layer
        """
        if by not in PAIRINGS:
            raise WorkbenchError(f"unknown pairing {by!r}; choose one of {', '.join(PAIRINGS)}")
        if by == "source":
            return [(s, self.target_layers[int(self.r2[i].argmax())]) for i, s in enumerate(self.source_layers)]
        if by == "target":
            return [(s, t) for t, s in self.best_source().items()]
        depth = lambda layer, n: layer / max(n - 1, 1)  # noqa: E731
        return [(min(self.source_layers, key=lambda s: abs(depth(s, self.n_source_layers) - depth(t, self.n_target_layers))), t)
                for t in self.target_layers]

    def maps_for(self, by: str = "target") -> list[ResidualMap]:
        """The fitted maps of :meth:`pairs`: ``wb.transfer_direction(title, match.maps_for())``."""
        pairs = self.pairs(by)
        missing = [p for p in pairs if p not in self.maps]
        if missing:
            raise WorkbenchError(f"layer match kept no map for layers {missing[0]} (fitted with keep_maps=False?)")
        return [self.maps[p] for p in pairs]

    def best_source(self) -> dict[int, int]:
        """``{target layer: best-fitting source layer}`` by held-out R2: ``match.best_source()[20]``."""
        return {t: self.source_layers[int(self.r2[:, j].argmax())] for j, t in enumerate(self.target_layers)}

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer pair (source, target, r2, cosine, cka, n_fit, n_heldout): ``pandas.DataFrame(match.rows())``."""
        return [{"source_layer": s, "target_layer": t, "r2": round(float(self.r2[i, j]), 4), "cosine": round(float(self.cosine[i, j]), 4),
                 "cka": round(float(self.cka[i, j]), 4), "n_fit": self.n_fit, "n_heldout": self.n_heldout}
                for i, s in enumerate(self.source_layers) for j, t in enumerate(self.target_layers)]

    def figure(self, metric: str = "r2") -> Any:
        """A plotly heatmap of the held-out ``r2`` (or ``cosine``, or the linear ``cka`` of the activations), source layers
        down, target layers across: ``match.figure("cka").show()``."""
        import plotly.graph_objects as go

        if metric not in ("r2", "cosine", "cka"):
            raise WorkbenchError(f"metric is 'r2', 'cosine' or 'cka', got {metric!r}")
        z = getattr(self, metric)
        label = "linear CKA" if metric == "cka" else f"held-out {metric}"
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=list(self.target_layers), y=list(self.source_layers), colorscale="Viridis",
                                   colorbar={"title": label}))
        best = self.best_source()
        fig.add_trace(go.Scatter(x=list(best), y=list(best.values()), mode="markers", name="best source per target layer",
                                 marker={"symbol": "x", "color": "red", "size": 8}))
        fig.update_layout(title=f"{self.kind} maps {self.source_model} -> {self.target_model}: {label}<br>"
                                f"<sup>n_fit {self.n_fit}, n_heldout {self.n_heldout}, last token</sup>",
                          xaxis_title=f"{self.target_model} layer", yaxis_title=f"{self.source_model} layer")
        return fig


def linear_cka(x: Float[torch.Tensor, "n d_x"], y: Float[torch.Tensor, "n d_y"]) -> float:
    """Linear CKA of two sets of activations of the same ``n`` inputs (Kornblith et al. 2019): 1 when one is an
    orthogonal transform and scaling of the other, invariant to either; computed on centred n x n Gram matrices.

    >>> linear_cka(xs[:, 3], ys[:, 20])
    """
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise WorkbenchError(f"linear_cka: needs the same n >= 2 rows on both sides, got {x.shape[0]} and {y.shape[0]}")
    return float((_unit_gram(x) * _unit_gram(y)).sum())


def _unit_gram(x: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n n"]:
    """The Gram matrix of the centred rows, scaled to Frobenius norm 1 (zero when the rows do not vary)."""
    x = x.double() - x.double().mean(0)
    k = x @ x.T
    norm = torch.linalg.matrix_norm(k)
    return k / norm if float(norm) > 0 else k


def match_from_activations(
    xs: Float[torch.Tensor, "n n_source d_source"],
    ys: Float[torch.Tensor, "n n_target d_target"],
    *,
    source: tuple[str, Sequence[int], int],
    target: tuple[str, Sequence[int], int],
    kind: str = "affine",
    ridge: float | None = None,
    heldout: float = HELDOUT,
    seed: int = 0,
    keep_maps: bool = True,
    extra: dict[str, Any] | None = None,
) -> LayerMatch:
    """Fit a map for every layer pair of already collected activations; ``source``/``target``: ``(name, layers, n_layers)``.

    >>> match = match_from_activations(xs, ys, source=("qwen", range(24), 24), target=("smol", [18, 22, 26], 30))
    """
    check_kind(kind)
    s_layers, t_layers = list(source[1]), list(target[1])
    if xs.shape[:2] != (ys.shape[0], len(s_layers)) or ys.shape[1] != len(t_layers):
        raise WorkbenchError(f"match: activations {tuple(xs.shape)} and {tuple(ys.shape)} do not fit layers {s_layers} and {t_layers}")
    r2 = torch.empty(len(s_layers), len(t_layers))
    cos, cka = torch.empty_like(r2), torch.empty_like(r2)
    maps: dict[tuple[int, int], ResidualMap] = {}
    metrics: dict[str, Any] = {}
    target_grams = [_unit_gram(ys[:, j]) for j in range(len(t_layers))]  # linear CKA: one Gram matrix per layer
    for i, s in enumerate(s_layers):
        source_gram = _unit_gram(xs[:, i])
        cache: dict = {}  # one source layer's SVDs, shared by its fits to every target layer
        for j, t in enumerate(t_layers):
            m = fit_map_from_activations(xs[:, i], ys[:, j], kind=kind, source=(source[0], s, source[2]),
                                         target=(target[0], t, target[2]), ridge=ridge, heldout=heldout, seed=seed, extra=extra,
                                         cache=cache)
            metrics = m.metrics
            r2[i, j], cos[i, j] = m.metrics["r2"], m.metrics["centred_cosine"]
            cka[i, j] = float((source_gram * target_grams[j]).sum())
            if keep_maps:
                maps[(s, t)] = m
    return LayerMatch(r2=r2, cosine=cos, cka=cka, source_layers=tuple(s_layers), target_layers=tuple(t_layers), source_model=source[0],
                      target_model=target[0], n_source_layers=source[2], n_target_layers=target[2], kind=kind,
                      n_fit=int(metrics.get("n_fit", 0)), n_heldout=int(metrics.get("n_heldout", 0)), maps=maps)


def match_layers(
    source: Any,
    target: Any,
    prompts: Sequence[str],
    *,
    source_layers: Sequence[int] | None = None,
    target_layers: Sequence[int] | None = None,
    kind: str = "affine",
    ridge: float | None = None,
    heldout: float = HELDOUT,
    seed: int = 0,
    exclude: Any = None,
    keep_maps: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> LayerMatch:
    """Held-out fit (R2, centred cosine) of a map for every source x target layer pair, on the last token of ``prompts``.

    >>> match = wb.match_layers(qwen, smol, texts, exclude=title_pairs); match.figure().show(); match.best_source()
    """
    from ..activations import collect_activations

    check_kind(kind)
    s_name, s_d, s_n = _side(source)
    t_name, t_d, t_n = _side(target)
    s_layers = list(range(s_n)) if source_layers is None else [check_side_layer("source", x, s_name, s_n) for x in source_layers]
    t_layers = list(range(t_n)) if target_layers is None else [check_side_layer("target", x, t_name, t_n) for x in target_layers]
    if not s_layers or not t_layers:
        raise WorkbenchError("match_layers: no layers given")
    if kind == "identity" and s_d != t_d:
        raise WorkbenchError(f"identity map needs equal widths; {s_name} has d_model {s_d}, {t_name} {t_d}")
    texts = check_fit_texts(prompts, exclude)
    split_indices(len(texts), heldout, seed)
    if source is target and kind != "identity":
        warnings.warn(f"match_layers: the same model ({s_name}) on both sides with {kind} maps", stacklevel=2)
    kw = dict(batch_size=batch_size, progress=progress)
    xs = collect_activations(source, texts, layers=s_layers, **kw)
    ys = collect_activations(target, texts, layers=t_layers, **kw)
    return match_from_activations(xs, ys, source=(s_name, s_layers, s_n), target=(t_name, t_layers, t_n), kind=kind, ridge=ridge,
                                  heldout=heldout, seed=seed, keep_maps=keep_maps, extra={"n_texts": len(texts)})
