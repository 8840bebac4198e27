"""Necessity and sufficiency of a direction per layer, on the patching metric.

At layer L and the last prompt token: *sufficiency* adds to the without-instruction run only the
difference of the two runs' components along the unit direction, ``((x_with - x_without) . u) u``;
*necessity* subtracts the same from the with-instruction run (its projection set to the without
run's), and reports the effect that remains. For reference, *full patch* copies the with run's
whole last-token state (the ceiling of any last-token edit at that layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..directions import Direction
from ..models.loading import model_info
from .common import Edit, check_direction, check_layer_list, edited_logprobs, effect, tokenize_pairs
from .metric import make_metric
from .patching import clean_runs


@dataclass(frozen=True)
class NecessitySufficiency:
    """Per pair and layer: ``sufficiency``, ``necessity`` (effect left after ablation), ``full_patch``; and the
    with/without projections on the direction at the last token (for the separation curve)."""

    layers: tuple[int, ...]
    direction_name: str
    model_name: str
    metric: str
    sufficiency: Float[torch.Tensor, "n layers"]
    remaining: Float[torch.Tensor, "n layers"]
    full_patch: Float[torch.Tensor, "n layers"]
    proj_with: Float[torch.Tensor, "n layers"]
    proj_without: Float[torch.Tensor, "n layers"]

    @property
    def separation(self) -> Float[torch.Tensor, "layers"]:
        """Difference of mean projections over the pooled standard deviation (as in ``projection_figure``)."""
        pooled = torch.sqrt((self.proj_with.var(0, unbiased=False) + self.proj_without.var(0, unbiased=False)) / 2)
        return (self.proj_with.mean(0) - self.proj_without.mean(0)) / pooled.clamp_min(1e-6)

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: mean sufficiency, remaining effect after ablation, full patch, separation."""
        return [
            dict(layer=layer, sufficiency=float(self.sufficiency[:, i].mean()), remaining=float(self.remaining[:, i].mean()),
                 full_patch=float(self.full_patch[:, i].mean()), separation=float(self.separation[i]))
            for i, layer in enumerate(self.layers)
        ]


def necessity_sufficiency(
    model: Any, pairs: Any, direction: Direction, layers: Sequence[int] | None = None, target: str | None = None,
    batch_size: int = 32, progress: bool = True,
) -> NecessitySufficiency:
    """Per layer: is adding the direction's component difference sufficient, is removing it necessary?

    >>> ns = necessity_sufficiency(model, pairs.head(8), title, layers=range(0, 30, 2)); ns.summary()
    """
    layers = check_layer_list(model, layers if layers is not None else direction.layers)
    check_direction(model, direction, layers)
    metric = make_metric(model, target)
    tps = tokenize_pairs(model, pairs, "necessity/sufficiency")
    units = torch.stack([direction.at(layer).unit.float() for layer in layers])
    out = {k: torch.zeros(len(tps), len(layers)) for k in ("suff", "rem", "full", "pw", "pwo")}
    for i, tp in enumerate(tqdm(tps, desc="necessity/sufficiency pairs", disable=not progress, unit="pair")):
        runs = clean_runs(model, tp, layers, metric, i)
        a, b = len(tp.with_ids) - 1, len(tp.without_ids) - 1  # last prompt token of each
        xw, xwo = runs.resid_with[:, a], runs.resid_without[:, b]
        pw, pwo = (xw * units).sum(-1), (xwo * units).sum(-1)
        delta = (pw - pwo)[:, None] * units  # [layers, d_model]
        suff = [[Edit(layer, b, delta[li], "add")] for li, layer in enumerate(layers)]
        full = [[Edit(layer, b, xw[li], "set")] for li, layer in enumerate(layers)]
        nec = [[Edit(layer, a, -delta[li], "add")] for li, layer in enumerate(layers)]
        mw, mwo = torch.tensor(runs.m_with), torch.tensor(runs.m_without)
        lp_wo = edited_logprobs(model, runs.seq_without, suff + full, metric.rows(b + 1), batch_size, "edited runs", False)
        lp_w = edited_logprobs(model, runs.seq_with, nec, metric.rows(a + 1), batch_size, "ablated runs", False)
        e_wo = effect(metric.value(lp_wo, runs.lp_with, runs.lp_without), mw, mwo)
        out["suff"][i], out["full"][i] = e_wo[: len(layers)], e_wo[len(layers):]
        out["rem"][i] = effect(metric.value(lp_w, runs.lp_with, runs.lp_without), mw, mwo)
        out["pw"][i], out["pwo"][i] = pw, pwo
    return NecessitySufficiency(
        tuple(layers), direction.name, model_info(model).name, metric.label,
        out["suff"], out["rem"], out["full"], out["pw"], out["pwo"],
    )


def necessity_figure(ns: NecessitySufficiency):
    """Sufficiency, effect remaining after ablation and full last-token patch over layers (mean and IQR band),
    beside the direction's separation curve."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35], subplot_titles=(
        f"effect on the metric ({ns.metric}; 0 = without, 1 = with)", "separation on the direction (last token)"))
    x = list(ns.layers)
    for label, vals, color in (
        ("sufficiency: add the direction's component difference to the without run", ns.sufficiency, "#2ca02c"),
        ("necessity: effect left after removing it from the with run", ns.remaining, "#d62728"),
        ("full last-token patch (ceiling)", ns.full_patch, "#7f7f7f"),
    ):
        lo, hi = vals.quantile(0.25, dim=0), vals.quantile(0.75, dim=0)
        fig.add_trace(go.Scatter(x=x + x[::-1], y=hi.tolist() + lo.tolist()[::-1], fill="toself", fillcolor=color,
                                 opacity=0.15, line=dict(width=0), showlegend=False, hoverinfo="skip"), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=vals.mean(0).tolist(), name=label, mode="lines+markers", line=dict(color=color)), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=ns.separation.tolist(), name="separation (d')", mode="lines+markers",
                             line=dict(color="black", dash="dot")), 1, 2)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(
        title=f"Necessity and sufficiency of the '{ns.direction_name}' direction ({ns.model_name}, {ns.sufficiency.shape[0]} pairs; "
        "band: interquartile range)",
        template="plotly_white", width=1300, height=550, legend=dict(orientation="h", y=-0.2),
    )
    return fig
