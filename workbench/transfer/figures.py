"""Figures of a transfer run: cosine of transferred vs own direction by layer, and the four directions' bars with the null.

(The layer-match heatmap is :meth:`workbench.transfer.LayerMatch.figure`.)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

DIRECTION_ORDER = ("none", "transferred", "own", "random")
COLOURS = {"none": "#7f7f7f", "transferred": "#1f77b4", "own": "#2ca02c", "random": "#d62728"}


def cosine_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Cosine of the transferred (and a random) direction with the target's own, by target layer: ``cosine_figure(rows)``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for iid in dict.fromkeys(r["instruction_id"] for r in rows):
        mine = [r for r in rows if r["instruction_id"] == iid]
        x = [r["target_layer"] for r in mine]
        fig.add_trace(go.Scatter(x=x, y=[r["cos_transferred_own"] for r in mine], mode="lines+markers", name=f"{iid}: transferred",
                                 customdata=[[r["source_layer"], r["map_r2"]] for r in mine],
                                 hovertemplate="target layer %{x}<br>cos %{y:.3f}<br>from source layer %{customdata[0]}"
                                               "<br>map held-out R2 %{customdata[1]}<extra></extra>"))
        if any(r.get("cos_random_own") is not None for r in mine):
            fig.add_trace(go.Scatter(x=x, y=[r["cos_random_own"] for r in mine], mode="lines", line={"dash": "dot"},
                                     name=f"{iid}: random (null)"))
    fig.update_layout(title="Cosine with the target model's own direction, by target layer", xaxis_title="target layer",
                      yaxis={"title": "cosine", "range": [-1, 1]}, template="plotly_white")
    return fig


def directions_figure(table: Sequence[Mapping[str, Any]]) -> Any:
    """Accuracy per condition for unsteered / transferred / own / random, with 95% intervals: ``directions_figure(table)``."""
    import plotly.graph_objects as go

    rows = [r for r in table if r.get("direction") in DIRECTION_ORDER]
    xs = list(dict.fromkeys((r["instruction_id"], r["condition"].replace("_steered", "")) for r in rows))
    fig = go.Figure()
    traces = [(label, paper) for paper in (False, True) for label in DIRECTION_ORDER if not (paper and label == "none")]
    for label, paper in traces:
        mine = {(r["instruction_id"], r["condition"].replace("_steered", "")): r for r in rows
                if r["direction"] == label and (r.get("rule") == "paper") == paper}
        if not mine:
            continue
        ys, lo, hi = [], [], []
        for key in xs:
            r = mine.get(key)
            y = None if r is None or r.get("accuracy") is None or math.isnan(r["accuracy"]) else r["accuracy"]
            ys.append(y)
            lo.append(None if y is None else y - r.get("accuracy_lo", y))
            hi.append(None if y is None else r.get("accuracy_hi", y) - y)
        name = ("unsteered" if label == "none" else label) + (" (paper's rule)" if paper else "")
        fig.add_trace(go.Bar(x=[f"{i}<br>{c}" for i, c in xs], y=ys, name=name, marker_color=COLOURS[label],
                             marker_pattern_shape="/" if paper else "",
                             error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
    fig.update_layout(title="Target model: unsteered, transferred, own and random directions (95% Wilson intervals)",
                      barmode="group", yaxis={"title": "accuracy", "range": [0, 1.1]}, template="plotly_white")
    return fig
