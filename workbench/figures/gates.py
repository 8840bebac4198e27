"""The gate of conditional steering: how well each layer's projection separates instructed from uninstructed
prompts on validation (Youden's J, hit and false-trigger rates), and the test projections at the chosen layer."""

from __future__ import annotations

from typing import Any, Sequence


def gate_figure(gates: Sequence[dict[str, Any]], projections: Sequence[float] = (), instructed: Sequence[bool] = ()):
    """Left: validation J, hit rate and false-trigger rate of each layer's best threshold (the chosen layer marked).
    Right: the test prompts' projections at the chosen layer, instructed vs not, with the threshold.

    >>> gate_figure(result_gates, block.last.projections.tolist(), [True] * 40 + [False] * 40)
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not gates:
        raise ValueError("gate_figure: no gate rows")
    gates = sorted(gates, key=lambda g: g["gate_layer"])
    chosen = next((g for g in gates if g.get("chosen")), max(gates, key=lambda g: g["youden_j"]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "validation: best threshold per layer", f"test prompts at layer {chosen['gate_layer']}"))
    layers = [g["gate_layer"] for g in gates]
    for key, label, dash in (("youden_j", "Youden's J", "solid"), ("share_hit", "hit rate (instructed)", "dot"),
                             ("share_false_trigger", "false-trigger rate (uninstructed)", "dash")):
        fig.add_trace(go.Scatter(x=layers, y=[g[key] for g in gates], mode="lines+markers", name=label,
                                 line={"dash": dash}), row=1, col=1)
    fig.add_vline(x=chosen["gate_layer"], line={"color": "grey", "dash": "dot"}, row=1, col=1)
    if len(projections):
        for flag, label in ((True, "with the instruction"), (False, "without")):
            xs = [p for p, f in zip(projections, instructed) if bool(f) == flag]
            if xs:
                fig.add_trace(go.Histogram(x=xs, name=f"test, {label}", opacity=0.6, nbinsx=30), row=1, col=2)
        fig.add_vline(x=chosen["threshold"], line={"color": "black"}, row=1, col=2,
                      annotation_text=f"steer if {chosen['compare']} {chosen['threshold']:.3g}")
    fig.update_layout(barmode="overlay", title=f"Gate of {chosen['instruction_id']}", xaxis_title="condition layer",
                      xaxis2_title="projection at the last prompt token", yaxis_title="rate", yaxis2_title="prompts")
    return fig
