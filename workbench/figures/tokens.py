"""Per-token projection of a text (prompt and response) on a direction, as coloured tokens or a heatmap."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float

from ..directions import Direction, LayerDirection
from ..errors import ShapeError, WorkbenchError
from ..hooks import check_layer, forward_hooks, hook_name
from ..models.loading import model_info
from .logit_lens import plot_text, token_label


@dataclass(frozen=True)
class TokenProjections:
    """Projection of the residual stream at every token on a unit direction; renders as HTML in Jupyter.

    The first ``n_prompt`` tokens are the formatted prompt, the rest the response. ``center`` is
    the value shown white: midway between the direction's mean projections without and with the
    instruction when it stores them (so red reads "instruction-like"), else 0.
    """

    tokens: list[str]
    token_ids: list[int]
    values: Float[torch.Tensor, "pos"]
    n_prompt: int
    layer: int
    name: str
    center: float = 0.0

    def __repr__(self) -> str:
        return (
            f"TokenProjections({self.name!r}, layer={self.layer}, {len(self.tokens)} tokens "
            f"({self.n_prompt} prompt), values {float(self.values.min()):.2f}..{float(self.values.max()):.2f})"
        )

    def html(self, scale: float | None = None) -> str:
        """The coloured-token HTML (see :func:`token_html`)."""
        return token_html(self, scale)

    def _repr_html_(self) -> str:
        return token_html(self)


def _unit_and_center(direction: Direction | LayerDirection, layer: int | None) -> tuple[torch.Tensor, int, str, float]:
    if isinstance(direction, Direction):
        if layer is None and len(direction.layers) == 1:
            layer = direction.layers[0]
        if layer is None:
            raise WorkbenchError(f"direction {direction.name!r} covers several layers: pass layer=")
        direction = direction.at(layer)
    if not isinstance(direction, LayerDirection):
        raise WorkbenchError(f"token_projections needs a Direction or LayerDirection, got {type(direction).__name__}")
    layer = direction.layer if layer is None else int(layer)
    center = 0.0
    if direction.proj_with is not None and direction.proj_without is not None:
        center = (direction.proj_with + direction.proj_without) / 2
    return direction.unit.float(), layer, direction.name, float(center)


@torch.no_grad()
def token_projections(
    model: Any,
    direction: Direction | LayerDirection,
    prompt: str,
    response: str | Sequence[int] | None = None,
    layer: int | None = None,
    formatted: bool = False,
    hook: str = "resid_post",
) -> TokenProjections:
    """Run prompt (formatted with the model's prompt style) + response and project each token's residual stream.

    ``response`` may be text (tokenised without special tokens) or the token ids ``generate(...,
    return_tokens=True)`` returned. Steering active around the call is applied, as in generation.
    """
    unit, layer, name, center = _unit_and_center(direction, layer)
    check_layer(model, layer)
    if unit.shape[0] != int(model.cfg.d_model):
        raise ShapeError(f"{name}: direction has d_model={unit.shape[0]}, the model has {model.cfg.d_model}")
    prompt_ids, _ = model_info(model).formatter.encode([prompt], formatted=formatted)
    ids = prompt_ids[0].tolist()
    n_prompt = len(ids)
    if response is not None:
        if isinstance(response, str):
            ids += model.tokenizer(response, add_special_tokens=False)["input_ids"]
        else:
            ids += [int(t) for t in response]
    grabbed: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor) -> None:
        grabbed["x"] = x[0].float().cpu()

    with forward_hooks(model, [(hook_name(layer, hook), grab)]):
        model(torch.tensor([ids], device=model.cfg.device), return_type=None)
    values = grabbed["x"] @ unit
    return TokenProjections(
        tokens=[token_label(model.tokenizer, i) for i in ids], token_ids=ids, values=values,
        n_prompt=n_prompt, layer=layer, name=name, center=center,
    )


def colour_scale(tp: TokenProjections, quantile: float = 0.95) -> float:
    """Deviation from ``center`` that gets full colour: a quantile of |value - center|, so that one
    outlier (the first token's residual stream is often huge, an attention sink) does not wash out the rest."""
    dev = (tp.values.float() - tp.center).abs()
    if dev.numel() == 0:
        return 1.0
    return float(dev.quantile(quantile)) or float(dev.max()) or 1.0


def _colour(value: float, center: float, scale: float) -> str:
    t = max(-1.0, min(1.0, (value - center) / scale)) if scale > 0 else 0.0
    if t >= 0:  # white -> red
        r, g, b = 255, int(255 - 155 * t), int(255 - 155 * t)
    else:  # white -> blue
        r, g, b = int(255 + 155 * t), int(255 + 105 * t), 255
    return f"rgb({r},{g},{b})"


def token_html(tp: TokenProjections, scale: float | None = None) -> str:
    """Tokens as coloured spans (red above ``center``, blue below; hover shows the value), prompt and response apart."""
    values = tp.values.tolist()
    if scale is None:
        scale = colour_scale(tp)
    spans = []
    for i, (tok, value) in enumerate(zip(tp.tokens, values)):
        if i == tp.n_prompt:
            spans.append('<div style="margin:6px 0 4px;color:#555;font-size:90%">&#8212; response &#8212;</div>')
        spans.append(
            f'<span title="{html.escape(tok)}: {value:.3f}" style="background:{_colour(value, tp.center, scale)};'
            f'padding:1px 1px;margin:0 1px;border-radius:2px;white-space:pre;display:inline-block">{html.escape(tok)}</span>'
        )
        if tok.endswith("\\n"):
            spans.append("<br>")
    head = (
        f'<div style="font-size:90%;color:#333;margin-bottom:4px">Projection on <b>{html.escape(tp.name)}</b> '
        f"at layer {tp.layer}: red above {tp.center:.2f}, blue below (full colour at &#177;{scale:.2f}; "
        "hover a token for its value)</div>"
    )
    return f'<div style="font-family:monospace;line-height:1.9">{head}{"".join(spans)}</div>'


def token_projection_figure(tp: TokenProjections, per_row: int = 16):
    """Heatmap variant: tokens laid out in rows of ``per_row``, coloured by projection around ``center``."""
    import plotly.graph_objects as go

    values, n = tp.values.tolist(), len(tp.tokens)
    rows = (n + per_row - 1) // per_row
    z = [[None] * per_row for _ in range(rows)]
    text = [[""] * per_row for _ in range(rows)]
    hover = [[""] * per_row for _ in range(rows)]
    for i in range(n):
        r, c = divmod(i, per_row)
        z[r][c] = values[i]
        part = "prompt" if i < tp.n_prompt else "response"
        text[r][c] = plot_text(tp.tokens[i])
        hover[r][c] = f"token {i} ({part}): {plot_text(tp.tokens[i])}<br>projection {values[i]:.3f}"
    span = colour_scale(tp)
    fig = go.Figure(
        go.Heatmap(
            z=z, text=text, texttemplate="%{text}", textfont=dict(size=10), customdata=hover,
            hovertemplate="%{customdata}<extra></extra>", colorscale="RdBu_r",
            zmin=tp.center - span, zmax=tp.center + span, colorbar=dict(title="projection"), xgap=1, ygap=1,
        )
    )
    r0, c0 = divmod(tp.n_prompt, per_row)
    if tp.n_prompt < n:  # mark where the response starts
        fig.add_shape(type="line", x0=c0 - 0.5, x1=c0 - 0.5, y0=r0 - 0.5, y1=r0 + 0.5, line=dict(color="black", width=3))
    fig.update_layout(
        title=f"Per-token projection on '{tp.name}' at layer {tp.layer}<br><sup>black bar: the response starts; "
        f"white = {tp.center:.1f}, colour saturates at the 95th percentile of |deviation|</sup>",
        template="plotly_white", yaxis=dict(autorange="reversed", showticklabels=False),
        xaxis=dict(showticklabels=False), width=1100, height=140 + 28 * rows,
    )
    return fig
