"""Steering sweep figures: accuracy over layer x strength, accuracy and perplexity versus strength, four conditions.

Inputs are plain lists of dict records (see :mod:`workbench.figures.records` for the schemas),
so any sweep runner can feed them; the figures plot exactly the values in the records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .records import CONDITIONS, RecordError, condition_records, sweep_records


@dataclass(frozen=True)
class SweepGrid:
    """One instruction's sweep as grids: ``accuracy[i][j]`` at ``layers[i]``, ``coeffs[j]`` (NaN where missing)."""

    instruction_id: str
    layers: list[int]
    coeffs: list[float]
    accuracy: list[list[float]]
    perplexity: list[list[float]]


def _pick_instruction(recs: list[dict[str, Any]], instruction_id: str | None, what: str) -> str:
    ids = list(dict.fromkeys(r["instruction_id"] for r in recs))
    if instruction_id is None:
        if len(ids) > 1:
            raise RecordError(f"{what}: the records hold {len(ids)} instructions {ids}; pass instruction_id=")
        return ids[0]
    if instruction_id not in ids:
        raise RecordError(f"{what}: no records for instruction {instruction_id!r}; the records hold {ids}")
    return instruction_id


def sweep_grid(records: Iterable[Mapping[str, Any]], instruction_id: str | None = None) -> SweepGrid:
    """Arrange sweep records (keys ``instruction_id, layer, coeff, accuracy, perplexity``) of one instruction as grids."""
    recs = sweep_records(records)
    iid = _pick_instruction(recs, instruction_id, "sweep")
    recs = [r for r in recs if r["instruction_id"] == iid]
    layers = sorted({r["layer"] for r in recs})
    coeffs = sorted({r["coeff"] for r in recs})
    acc = [[math.nan] * len(coeffs) for _ in layers]
    ppl = [[math.nan] * len(coeffs) for _ in layers]
    for r in recs:
        i, j = layers.index(r["layer"]), coeffs.index(r["coeff"])
        acc[i][j], ppl[i][j] = r["accuracy"], r["perplexity"]
    return SweepGrid(iid, layers, coeffs, acc, ppl)


def strength_curve(
    records: Iterable[Mapping[str, Any]], layer: int, instruction_id: str | None = None
) -> tuple[list[float], list[float], list[float]]:
    """``(coeffs, accuracy, perplexity)`` at one layer, sorted by strength."""
    grid = sweep_grid(records, instruction_id)
    if int(layer) not in grid.layers:
        raise RecordError(f"sweep: no records at layer {layer} for {grid.instruction_id!r}; layers present: {grid.layers}")
    i = grid.layers.index(int(layer))
    keep = [j for j in range(len(grid.coeffs)) if not math.isnan(grid.accuracy[i][j])]
    return [grid.coeffs[j] for j in keep], [grid.accuracy[i][j] for j in keep], [grid.perplexity[i][j] for j in keep]


def _nan_to_none(rows: list[list[float]]) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in rows]


def _title(text: str, subtitle: str) -> str:
    return f"{text}<br><sup>{subtitle}</sup>" if subtitle else text


def sweep_heatmap_figure(
    records: Iterable[Mapping[str, Any]], instruction_id: str | None = None, metric: str = "accuracy",
    coeff_label: str = "steering strength", subtitle: str = "",
):
    """Heatmap of ``metric`` (``accuracy`` or ``perplexity``) over layer (rows) x strength (columns)."""
    import plotly.graph_objects as go

    if metric not in ("accuracy", "perplexity"):
        raise RecordError(f"metric must be 'accuracy' or 'perplexity', got {metric!r}")
    grid = sweep_grid(records, instruction_id)
    z = grid.accuracy if metric == "accuracy" else grid.perplexity
    x = [f"{c:g}" for c in grid.coeffs]
    y = [str(layer) for layer in grid.layers]
    fmt = ".2f" if metric == "accuracy" else ".1f"
    fig = go.Figure(
        go.Heatmap(
            z=_nan_to_none(z), x=x, y=y, colorscale="Viridis" if metric == "accuracy" else "Magma_r",
            zmin=0 if metric == "accuracy" else None, zmax=1 if metric == "accuracy" else None,
            texttemplate="%{z:" + fmt + "}", colorbar=dict(title=metric),
            hovertemplate="layer %{y}, strength %{x}: " + metric + " %{z:" + fmt + "}<extra></extra>",
        )
    )
    fig.update_layout(
        title=_title(f"{metric.capitalize()} of '{grid.instruction_id}' over layer and steering strength", subtitle),
        xaxis_title=coeff_label, yaxis_title="layer", template="plotly_white",
        xaxis=dict(type="category"), yaxis=dict(type="category"), width=750, height=200 + 45 * len(y),
    )
    return fig


def strength_figure(
    records: Iterable[Mapping[str, Any]], layer: int, instruction_id: str | None = None,
    coeff_label: str = "steering strength", subtitle: str = "",
):
    """Accuracy (left axis) and perplexity (right axis) versus steering strength at one layer."""
    import plotly.graph_objects as go

    recs = list(records)
    coeffs, acc, ppl = strength_curve(recs, layer, instruction_id)
    iid = sweep_grid(recs, instruction_id).instruction_id
    at = {float(r["coeff"]): r for r in recs if r.get("instruction_id") == iid and r.get("layer") is not None
          and int(r["layer"]) == int(layer)}
    spans = [_interval(at.get(float(c))) for c in coeffs]
    error_y = None
    if any(sp is not None for sp in spans):  # 95% Wilson intervals where the records carry them (or their n)
        error_y = dict(type="data", symmetric=False, color="#2ca02c", thickness=1.2, width=4,
                       array=[None if sp is None else sp[1] - a for sp, a in zip(spans, acc)],
                       arrayminus=[None if sp is None else a - sp[0] for sp, a in zip(spans, acc)])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=coeffs, y=acc, name="accuracy (95% interval)", mode="lines+markers", line=dict(color="#2ca02c"),
                             error_y=error_y))
    fig.add_trace(
        go.Scatter(
            x=coeffs, y=[None if math.isnan(v) else v for v in ppl], name="perplexity", yaxis="y2",
            mode="lines+markers", line=dict(color="#9467bd", dash="dash"),
        )
    )
    fig.update_layout(
        title=_title(f"'{iid}' at layer {layer}: instruction accuracy and response perplexity vs strength", subtitle),
        xaxis_title=coeff_label, yaxis=dict(title="accuracy", range=[-0.03, 1.03]),
        yaxis2=dict(title="perplexity (unsteered model)", overlaying="y", side="right"),
        template="plotly_white", legend=dict(orientation="h", y=-0.2), width=800, height=480,
    )
    return fig


def condition_table(records: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str], list[list[float]]]:
    """``(instruction_ids, CONDITIONS, accuracy[instruction][condition])`` with NaN where a record is missing."""
    recs = condition_records(records)
    ids = list(dict.fromkeys(r["instruction_id"] for r in recs))
    acc = [[math.nan] * len(CONDITIONS) for _ in ids]
    for r in recs:
        acc[ids.index(r["instruction_id"])][CONDITIONS.index(r["condition"])] = r["accuracy"]
    return ids, list(CONDITIONS), acc


def _interval(rec: Mapping[str, Any] | None, n_key: str = "n") -> tuple[float, float] | None:
    """A record's 95% interval: its ``accuracy_lo/_hi`` if present, else the Wilson interval of ``accuracy`` over ``n``."""
    if rec is None:
        return None
    lo, hi = rec.get("accuracy_lo"), rec.get("accuracy_hi")
    if lo is None or hi is None:
        n = rec.get(n_key)
        if not isinstance(n, (int, float)) or isinstance(n, bool) or n <= 0:
            return None
        from ..evaluation.stats import wilson_interval

        lo, hi = wilson_interval(round(float(rec["accuracy"]) * n), int(n))
    if any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return None
    return float(lo), float(hi)


def conditions_figure(records: Iterable[Mapping[str, Any]], subtitle: str = ""):
    """Grouped bars per instruction: accuracy without/with the instruction in the prompt, unsteered/steered.

    Error bars are the 95% Wilson intervals (``accuracy_lo/_hi`` of a record, or computed from its ``n``).
    """
    import plotly.graph_objects as go

    recs = condition_records(records)
    ids, conditions, acc = condition_table(recs)
    by_key = {(r["instruction_id"], r["condition"]): r for r in recs}
    colours = ("#c7c7c7", "#98df8a", "#7f7f7f", "#2ca02c")
    fig = go.Figure()
    for j, (cond, colour) in enumerate(zip(conditions, colours)):
        ys = [None if math.isnan(acc[i][j]) else acc[i][j] for i in range(len(ids))]
        spans = [_interval(by_key.get((iid, cond))) for iid in ids]
        error_y = None
        if any(sp is not None for sp in spans):
            error_y = dict(type="data", symmetric=False, color="#444", thickness=1.2, width=4,
                           array=[None if sp is None or y is None else sp[1] - y for sp, y in zip(spans, ys)],
                           arrayminus=[None if sp is None or y is None else y - sp[0] for sp, y in zip(spans, ys)])
        labels = [None if y is None else (f"{y:.2f}" if sp is None else f"{y:.2f} [{sp[0]:.2f}, {sp[1]:.2f}]")
                  for y, sp in zip(ys, spans)]
        fig.add_trace(
            go.Bar(x=ids, y=ys, name=cond, marker_color=colour, error_y=error_y, text=[None if y is None else f"{y:.2f}" for y in ys],
                   textposition="inside", customdata=labels,
                   hovertemplate="%{x}<br>" + cond + ": %{customdata}<extra></extra>")
        )
    fig.update_layout(
        title=_title("Instruction accuracy in four conditions (95% intervals)", subtitle), barmode="group",
        yaxis=dict(title="accuracy", range=[0, 1.1]),
        template="plotly_white", legend=dict(orientation="h", y=-0.25), width=max(700, 260 * len(ids)), height=500,
    )
    return fig


def sample_efficiency_figure(records: Iterable[Mapping[str, Any]], subtitle: str = ""):
    """Steered test accuracy (95% Wilson interval) against the training pairs each estimator was given, one line per
    method; records carry ``method``, ``n_pairs``, ``accuracy`` and ``accuracy_lo/_hi`` (the estimators experiment)."""
    import plotly.graph_objects as go

    recs = [dict(r) for r in records]
    if not recs:
        raise RecordError("sample_efficiency_figure: no records")
    missing = {"method", "n_pairs", "accuracy"} - set(recs[0])
    if missing:
        raise RecordError(f"sample_efficiency_figure: records lack {sorted(missing)}")
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in recs):
        rows = sorted((r for r in recs if r["method"] == method), key=lambda r: r["n_pairs"])
        acc = [r["accuracy"] for r in rows]
        error_y = None
        if all("accuracy_lo" in r for r in rows):
            error_y = dict(type="data", symmetric=False, array=[r["accuracy_hi"] - a for r, a in zip(rows, acc)],
                           arrayminus=[a - r["accuracy_lo"] for r, a in zip(rows, acc)])
        fig.add_trace(go.Scatter(x=[r["n_pairs"] for r in rows], y=acc, name=str(method), mode="lines+markers", error_y=error_y))
    iid = recs[0].get("instruction_id", "")
    fig.update_layout(
        title=_title(f"'{iid}': steered accuracy without the instruction vs training pairs, per estimator", subtitle),
        xaxis=dict(title="training pairs", type="log"), yaxis=dict(title="accuracy (95% interval)", range=[-0.03, 1.03]),
        template="plotly_white", width=800, height=480,
    )
    return fig
