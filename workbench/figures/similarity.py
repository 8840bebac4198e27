"""Cosine similarities of directions: one instruction across layers, and instructions at one layer (clustered)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float

from ..directions import Direction
from ..errors import ShapeError, WorkbenchError


def layer_cosine(direction: Direction) -> Float[torch.Tensor, "n_layers n_layers"]:
    """Cosine similarity between the direction's unit vectors at every pair of its layers.

    Blocks of high similarity show layer ranges where the instruction is written the same way.
    """
    units = direction.units.double()
    return (units @ units.T).clamp(-1.0, 1.0).float()


def _as_named(directions: Mapping[str, Direction] | Sequence[Direction]) -> list[tuple[str, Direction]]:
    if isinstance(directions, Mapping):
        named = [(str(k), v) for k, v in directions.items()]
    else:
        named = [(d.name, d) for d in directions]
    if len(named) < 2:
        raise WorkbenchError(f"instruction similarity needs at least two directions, got {len(named)}")
    d_models = {d.d_model for _, d in named}
    if len(d_models) > 1:
        raise ShapeError(f"directions come from models of different d_model {sorted(d_models)}")
    return named


def instruction_cosine(
    directions: Mapping[str, Direction] | Sequence[Direction], layer: int
) -> tuple[list[str], Float[torch.Tensor, "n_instructions n_instructions"]]:
    """Names and the cosine similarity matrix of several instructions' unit directions at ``layer``."""
    named = _as_named(directions)
    units = torch.stack([d.at(layer).unit.double() for _, d in named])
    return [n for n, _ in named], (units @ units.T).clamp(-1.0, 1.0).float()


def cluster_order(similarity: Float[torch.Tensor, "n n"]) -> list[int]:
    """Leaf order of average-linkage (UPGMA) clustering on ``1 - similarity``, so similar rows sit together.

    Pure numpy (no scipy needed); merged clusters are flipped so that the closest leaves meet,
    and ties go to the lowest index, so the order is deterministic.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ShapeError(f"cluster_order needs a square matrix, got shape {sim.shape}")
    dist = 1.0 - (sim + sim.T) / 2.0
    clusters: list[list[int]] = [[i] for i in range(sim.shape[0])]
    while len(clusters) > 1:
        best: tuple[float, int, int] | None = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                d = float(dist[np.ix_(clusters[a], clusters[b])].mean())
                if best is None or d < best[0] - 1e-12:
                    best = (d, a, b)
        assert best is not None
        _, a, b = best
        left, right = clusters[a], clusters[b]
        options = [left + right, left + right[::-1], left[::-1] + right, left[::-1] + right[::-1]]
        joined = min(options, key=lambda o: dist[o[len(left) - 1], o[len(left)]])
        clusters = [c for i, c in enumerate(clusters) if i not in (a, b)]
        clusters.insert(a, joined)
    return clusters[0] if clusters else []


def layer_cosine_figure(direction: Direction):
    """Layer x layer heatmap of the cosine similarity of one instruction's directions."""
    import plotly.graph_objects as go

    sim = layer_cosine(direction)
    layers = list(direction.layers)
    fig = go.Figure(
        go.Heatmap(
            z=sim.tolist(), x=layers, y=layers, zmin=-1, zmax=1, colorscale="RdBu_r",
            colorbar=dict(title="cosine"),
            hovertemplate="layer %{y} vs layer %{x}: cosine %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Cosine of the '{direction.name}' direction across layers<br><sup>{direction.model_name}</sup>",
        xaxis_title="layer", yaxis_title="layer", template="plotly_white",
        yaxis=dict(autorange="reversed", scaleanchor="x"), width=700, height=650,
    )
    return fig


def instruction_cosine_figure(
    directions: Mapping[str, Direction] | Sequence[Direction], layer: int, cluster: bool = True
):
    """Instruction x instruction heatmap of direction cosines at ``layer``, rows ordered by clustering."""
    import plotly.graph_objects as go

    names, sim = instruction_cosine(directions, layer)
    order = cluster_order(sim) if cluster else list(range(len(names)))
    labels = [names[i] for i in order]
    z = sim[order][:, order]
    model_name = _as_named(directions)[0][1].model_name
    fig = go.Figure(
        go.Heatmap(
            z=z.tolist(), x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu_r",
            colorbar=dict(title="cosine"), text=[[f"{v:.2f}" for v in row] for row in z.tolist()],
            texttemplate="%{text}" if len(labels) <= 16 else None,
            hovertemplate="%{y}<br>%{x}<br>cosine %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Cosine between instruction directions at layer {layer}<br><sup>{model_name}"
        + (", rows and columns ordered by average-linkage clustering" if cluster else "") + "</sup>",
        template="plotly_white", yaxis=dict(autorange="reversed"),
        width=max(650, 450 + 55 * len(labels)), height=max(550, 350 + 55 * len(labels)),
    )
    return fig


def method_cosine(
    directions: Mapping[str, Direction], reference: str = "mean"
) -> tuple[list[int], dict[str, Float[torch.Tensor, " n_layers"]]]:
    """Per layer, the cosine between each estimator's direction and ``reference``'s (same model, same layers).

    >>> layers, cos = method_cosine(wb.compute_directions_by_method(model, pairs))   # cos["probe"][i] at layers[i]
    """
    named = dict(_as_named(directions))
    if reference not in named:
        raise WorkbenchError(f"method_cosine: no {reference!r} direction to compare with; have {', '.join(named)}")
    ref = named[reference]
    for name, d in named.items():
        if list(d.layers) != list(ref.layers) or d.model_name != ref.model_name:
            raise ShapeError(f"method_cosine: {name!r} is from {d.model_name} at layers {list(d.layers)[:4]}..., "
                             f"{reference!r} from {ref.model_name} at {list(ref.layers)[:4]}...: compare one model's layers")
    return list(ref.layers), {name: (d.units.double() * ref.units.double()).sum(-1).clamp(-1.0, 1.0).float()
                              for name, d in named.items() if name != reference}


def method_cosine_figure(directions: Mapping[str, Direction], reference: str = "mean"):
    """Line per estimator: its cosine with ``reference``'s direction at each layer (did they find the same direction?)."""
    import plotly.graph_objects as go

    layers, cos = method_cosine(directions, reference)
    ref = directions[reference]
    fig = go.Figure([go.Scatter(x=layers, y=c.tolist(), mode="lines+markers", name=name,
                                hovertemplate=f"{name}<br>layer %{{x}}<br>cosine %{{y:.3f}}<extra></extra>")
                     for name, c in cos.items()])
    fig.update_layout(
        title=f"Cosine of each estimator's direction with the {reference} direction, per layer<br>"
              f"<sup>{ref.name} on {ref.model_name}, {ref.n_pairs} pairs</sup>",
        xaxis_title="layer", yaxis=dict(title="cosine", range=[-1.05, 1.05]), template="plotly_white", width=800, height=450,
    )
    return fig
