"""Per-layer projections of with- and without-instruction activations on an instruction direction."""

from __future__ import annotations

import torch
from jaxtyping import Float

from ..directions import Direction
from ..errors import ShapeError


def projections(
    direction: Direction, acts: Float[torch.Tensor, "n n_layers d_model"]
) -> Float[torch.Tensor, "n n_layers"]:
    """Projection of each prompt's activation at each of the direction's layers on its unit vector."""
    if acts.dim() != 3 or acts.shape[1:] != direction.vectors.shape:
        raise ShapeError(
            f"activations of shape {tuple(acts.shape)} do not match direction {direction.name!r} "
            f"(expected [n, {len(direction.layers)}, {direction.d_model}])"
        )
    return torch.einsum("nld,ld->nl", acts.float(), direction.units)


def projection_figure(
    direction: Direction,
    with_acts: Float[torch.Tensor, "n n_layers d_model"],
    without_acts: Float[torch.Tensor, "m n_layers d_model"],
):
    """Box plots per layer of both prompt sets' projections, with the gap between means in the hover.

    Where the two sets separate, the direction reads the instruction at that layer.
    """
    import plotly.graph_objects as go

    p_with, p_without = projections(direction, with_acts), projections(direction, without_acts)
    layers = list(direction.layers)
    # separation in pooled standard deviations: how cleanly the direction tells the sets apart
    pooled = torch.sqrt((p_with.var(0, unbiased=False) + p_without.var(0, unbiased=False)) / 2).clamp_min(1e-6)
    separation = (p_with.mean(0) - p_without.mean(0)) / pooled
    fig = go.Figure()
    for label, values, color in (("with instruction", p_with, "#d62728"), ("without instruction", p_without, "#1f77b4")):
        fig.add_trace(
            go.Box(
                x=[layer for _ in range(values.shape[0]) for layer in layers],
                y=values.reshape(-1).tolist(),
                name=label,
                marker_color=color,
                boxpoints=False,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=layers, y=separation.tolist(), name="separation (d')", yaxis="y2",
            mode="lines+markers", line=dict(color="black", dash="dot"),
        )
    )
    fig.update_layout(
        title=f"Projection on the '{direction.name}' direction per layer ({direction.model_name})",
        xaxis_title="layer",
        yaxis_title="projection on unit direction",
        yaxis2=dict(title="separation (difference of means / pooled std)", overlaying="y", side="right"),
        boxmode="group",
        template="plotly_white",
        legend=dict(orientation="h", y=-0.2),
    )
    return fig
