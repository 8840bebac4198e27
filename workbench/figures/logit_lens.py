"""Vocabulary projection (logit lens) of a direction: the tokens it promotes and suppresses, per layer.

Scores are ``W_U @ (g * u)``: ``W_U`` is the unembedding (``lm_head.weight``, ``[vocab, d_model]``),
``u`` the unit direction and ``g`` the final norm's elementwise scale (RMSNorm weight; ``1 + weight``
for Gemma, whose norm stores the offset). The norm's division by the RMS is a positive scalar per
position, so it cannot change the ranking and is left out; with ``fold_norm=False`` ``g`` is
omitted too and the scores are the raw ``W_U @ u``. For LayerNorm models ``u`` is mean-centred first.
This reads what adding the direction at the last layer would do to the logits; at earlier layers
it is only indicative, since later blocks transform the direction.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int

from ..directions import Direction
from ..errors import ShapeError, WorkbenchError


def _final_norm(hf_model: Any) -> Any | None:
    for path in ("model.norm", "model.final_layernorm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        obj = hf_model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


def unembedding(
    model: Any, fold_norm: bool = True
) -> tuple[Float[torch.Tensor, "vocab d_model"], Float[torch.Tensor, "d_model"] | None, bool]:
    """``(W_U, g, centre)``: the unembedding, the final norm's scale (None if not folded) and whether to mean-centre."""
    hf = model.original_model
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else getattr(hf, "lm_head", None)
    if head is None or getattr(head, "weight", None) is None:
        raise WorkbenchError(f"{type(hf).__name__} has no output embedding (lm_head) to project onto")
    w_u = head.weight.detach().float().cpu()
    if w_u.shape[-1] != int(model.cfg.d_model):
        raise ShapeError(f"lm_head weight has shape {tuple(w_u.shape)}, expected [vocab, {model.cfg.d_model}]")
    norm = _final_norm(hf)
    centre = norm is not None and "rms" not in type(norm).__name__.lower() and "layernorm" in type(norm).__name__.lower()
    if not fold_norm or norm is None or getattr(norm, "weight", None) is None:
        return w_u, None, centre
    g = norm.weight.detach().float().cpu()
    if str(getattr(hf.config, "model_type", "")).startswith("gemma"):
        g = 1.0 + g  # Gemma's RMSNorm multiplies by (1 + weight)
    return w_u, g, centre


@dataclass(frozen=True)
class VocabProjection:
    """Top-k promoted and suppressed tokens of a direction at each layer, with their scores."""

    layers: list[int]
    top_ids: Int[torch.Tensor, "n_layers k"]
    top_scores: Float[torch.Tensor, "n_layers k"]
    bottom_ids: Int[torch.Tensor, "n_layers k"]
    bottom_scores: Float[torch.Tensor, "n_layers k"]
    top_tokens: list[list[str]]
    bottom_tokens: list[list[str]]


def direction_logits(
    model: Any, direction: Direction, layers: Sequence[int] | None = None, fold_norm: bool = True
) -> Float[torch.Tensor, "n_layers vocab"]:
    """``W_U @ (g * u)`` for the direction's unit vector at each of ``layers`` (default all of its layers)."""
    direction.check_compatible(model)
    layers = list(direction.layers) if layers is None else [int(x) for x in layers]
    w_u, g, centre = unembedding(model, fold_norm)
    units = torch.stack([direction.at(layer).unit.float() for layer in layers])
    if centre:
        units = units - units.mean(-1, keepdim=True)
    if g is not None:
        units = units * g
    return units @ w_u.T


def token_label(tokenizer: Any, token_id: int) -> str:
    """A readable label of one token: its decoded text with whitespace made visible."""
    text = tokenizer.decode([int(token_id)])
    if text == "" or text == "\ufffd":
        text = str(tokenizer.convert_ids_to_tokens(int(token_id)))
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def plot_text(label: str) -> str:
    """``label`` safe inside plotly text, which reads a few HTML tags (<b>, <br>, ...) and entities."""
    return html.escape(label, quote=False)


def vocab_projection(
    model: Any, direction: Direction, layers: Sequence[int] | None = None, k: int = 10, fold_norm: bool = True
) -> VocabProjection:
    """The ``k`` tokens whose logits the direction raises most and lowers most, per layer."""
    logits = direction_logits(model, direction, layers, fold_norm)
    k = min(int(k), logits.shape[-1])
    top = logits.topk(k, dim=-1)
    bottom = logits.topk(k, dim=-1, largest=False)
    tok = model.tokenizer
    return VocabProjection(
        layers=list(direction.layers) if layers is None else [int(x) for x in layers],
        top_ids=top.indices, top_scores=top.values, bottom_ids=bottom.indices, bottom_scores=bottom.values,
        top_tokens=[[token_label(tok, i) for i in row] for row in top.indices.tolist()],
        bottom_tokens=[[token_label(tok, i) for i in row] for row in bottom.indices.tolist()],
    )


def logit_lens_figure(
    model: Any, direction: Direction, layers: Sequence[int] | None = None, k: int = 8, fold_norm: bool = True
):
    """Two token tables (promoted, suppressed): a row per layer, a column per rank, coloured by score."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    vp = vocab_projection(model, direction, layers, k, fold_norm)
    ranks = list(range(1, vp.top_ids.shape[1] + 1))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("promoted (highest logit change)", "suppressed (lowest)"),
                        horizontal_spacing=0.08)
    ylab = [f"layer {layer}" for layer in vp.layers]
    for col, scores, tokens, scale in ((1, vp.top_scores, vp.top_tokens, "Reds"), (2, vp.bottom_scores, vp.bottom_tokens, "Blues_r")):
        fig.add_trace(
            go.Heatmap(
                z=scores.tolist(), x=ranks, y=ylab, text=[[plot_text(t) for t in row] for row in tokens], texttemplate="%{text}", textfont=dict(size=10),
                colorscale=scale, showscale=False,
                hovertemplate="%{y}, rank %{x}: %{text}<br>score %{z:.3f}<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_xaxes(title_text="rank", row=1, col=col, dtick=1)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    how = "W_U (g \u2299 u), g = final RMSNorm scale" if fold_norm else "W_U u"
    fig.update_layout(
        title=f"Vocabulary projection of the '{direction.name}' direction ({direction.model_name}): {how}",
        template="plotly_white", width=max(900, 220 * len(ranks)), height=160 + 24 * len(vp.layers),
    )
    return fig
