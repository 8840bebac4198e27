"""Attention to the instruction: how much each head attends from the last token onto the instruction's tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..errors import WorkbenchError
from ..models.loading import model_info
from .common import batches, bridge_last_token_hooks, check_layer_list, tokenize_pairs


@dataclass(frozen=True)
class InstructionAttention:
    """``weights[n, layer, head]``: attention from each with-instruction prompt's last token onto its instruction span.

    ``example_pattern[layer, head, pos]`` is the first prompt's last-token attention over all its
    tokens (``example_tokens``), whose instruction is ``example_span``.
    """

    layers: tuple[int, ...]
    model_name: str
    weights: Float[torch.Tensor, "n layers heads"]
    span_fraction: Float[torch.Tensor, "n"]
    example_pattern: Float[torch.Tensor, "layers heads seq"]
    example_tokens: tuple[str, ...]
    example_span: tuple[int, int]
    response: Float[torch.Tensor, "n tokens layers heads"] | None = None  # from generated tokens; NaN after EOS

    @property
    def response_mean(self) -> Float[torch.Tensor, "layers heads"] | None:
        """Mean attention onto the span from the first generated tokens (None unless ``response_tokens`` was given)."""
        return None if self.response is None else self.response.nanmean((0, 1))

    @property
    def mean(self) -> Float[torch.Tensor, "layers heads"]:
        return self.weights.mean(0)

    def top_heads(self, k: int = 10, source: str = "last") -> list[dict[str, Any]]:
        """Heads with the largest mean attention onto the span: ``{layer, head, attention, share_of_tokens}``.

        ``source="last"``: from the prompt's last token; ``"response"``: from the first generated tokens.
        """
        if source not in ("last", "response"):
            raise WorkbenchError(f"source must be 'last' or 'response', got {source!r}")
        if source == "response" and self.response is None:
            raise WorkbenchError("no response attention: call instruction_attention(..., response_tokens=N)")
        mean = self.mean if source == "last" else self.response_mean
        order = torch.argsort(mean.flatten(), descending=True)[:k]
        n_heads = mean.shape[1]
        return [
            dict(layer=self.layers[int(i) // n_heads], head=int(i) % n_heads, attention=float(mean.flatten()[i]),
                 share_of_tokens=float(self.span_fraction.mean()))
            for i in order
        ]


def token_labels(model: Any, ids: Any) -> tuple[str, ...]:
    tok = model_info(model).formatter.tokenizer
    return tuple(tok.decode([int(t)]).replace("\n", "\\n") for t in ids)


@torch.no_grad()
def instruction_attention(
    model: Any, pairs: Any, layers: Any = None, batch_size: int = 8, progress: bool = True, response_tokens: int = 0
) -> InstructionAttention:
    """Mean attention weight of every head from the last token onto the instruction span (found by a token diff).

    With ``response_tokens=N``, each with-instruction prompt's greedy response (up to N tokens)
    is generated first and the attention from each generated token onto the span is kept too.

    >>> att = instruction_attention(model, pairs, response_tokens=4); att.top_heads(5, source="response")
    """
    layers = check_layer_list(model, layers)
    if isinstance(response_tokens, bool) or not isinstance(response_tokens, int) or response_tokens < 0:
        raise WorkbenchError(f"response_tokens must be an integer >= 0, got {response_tokens!r}")
    tps = tokenize_pairs(model, pairs, "instruction attention")
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    responses = [[] for _ in tps]
    if response_tokens:
        from ..decoding import generate

        responses = generate(model, [row.prompt for row in pairs], max_new_tokens=response_tokens, return_tokens=True,
                             batch_size=batch_size, progress=progress)
    seqs = [list(tp.with_ids) + list(resp) for tp, resp in zip(tps, responses)]
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and max(len(s) for s in seqs) > n_ctx:
        raise WorkbenchError(f"instruction attention: a prompt plus its {response_tokens} response tokens exceeds the context of {n_ctx}")

    def queries(i: int) -> list[int]:
        n = len(tps[i].with_ids)
        return [n - 1] + list(range(n, n + len(responses[i])))

    weights, example = [], None
    response = torch.full((len(tps), response_tokens, len(layers), int(model.cfg.n_heads)), float("nan"))
    for chunk in batches(len(tps), batch_size, "attention to the instruction", progress):
        q = [queries(i) for i in chunk]
        width = max(len(x) for x in q)
        qpos = torch.tensor([x + [x[-1]] * (width - len(x)) for x in q])  # [batch, width], padded by repeating

        def take(name: str, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(x.shape[0], device=x.device)[:, None]
            return x.transpose(1, 2)[rows, qpos.to(x.device)]  # [batch, width, heads, keys]

        got = bridge_last_token_hooks(model, [seqs[i] for i in chunk], names, take, stop_after=names[-1])
        rows = torch.stack([got[n] for n in names], 2)  # [batch, width, layers, heads, keys]
        for r, i in enumerate(chunk):
            a, b = tps[i].span
            on_span = rows[r, :, :, :, a:b].sum(-1)  # [width, layers, heads]
            weights.append(on_span[0])
            n_resp = len(responses[i])
            response[i, :n_resp] = on_span[1 : 1 + n_resp]
            if i == 0:
                example = rows[r, 0, :, :, : len(tps[0].with_ids)]
    return InstructionAttention(
        layers=tuple(layers), model_name=model_info(model).name, weights=torch.stack(weights),
        span_fraction=torch.tensor([(tp.span[1] - tp.span[0]) / len(tp.with_ids) for tp in tps]),
        example_pattern=example, example_tokens=token_labels(model, tps[0].with_ids), example_span=tps[0].span,
        response=response if response_tokens else None,
    )


def attention_figure(att: InstructionAttention, k: int = 10):
    """Layer x head heatmap of attention onto the instruction; the top heads listed; the top head's attention on one prompt."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    top = att.top_heads(k)
    best = top[0]
    li = att.layers.index(best["layer"])
    pattern = att.example_pattern[li, best["head"]]
    a, b = att.example_span
    fig = make_subplots(
        rows=2, cols=2, column_widths=[0.6, 0.4], row_heights=[0.65, 0.35], vertical_spacing=0.12,
        specs=[[{"type": "heatmap"}, {"type": "table"}], [{"type": "bar", "colspan": 2}, None]],
        subplot_titles=(
            f"mean attention from the last token onto the instruction ({att.weights.shape[0]} prompts)",
            f"top {k} heads",
            f"example prompt: attention of L{best['layer']}H{best['head']} from the last token (instruction in red)",
        ),
    )
    fig.add_trace(go.Heatmap(z=att.mean.tolist(), x=list(range(att.mean.shape[1])), y=list(att.layers),
                             colorscale="Viridis", colorbar=dict(title=dict(text="attention", side="right"), x=0.56, len=0.6, y=0.8),
                             hovertemplate="layer %{y} head %{x}: %{z:.3f}<extra></extra>"), 1, 1)
    header, cells = ["head", "from the last token"], [[f"L{r['layer']}H{r['head']}" for r in top], [f"{r['attention']:.3f}" for r in top]]
    if att.response is not None:  # the heads that read the instruction while the response is written
        resp = att.top_heads(k, source="response")
        header += [f"head ({att.response.shape[1]} response tokens)", "from response tokens"]
        cells += [[f"L{r['layer']}H{r['head']}" for r in resp], [f"{r['attention']:.3f}" for r in resp]]
    fig.add_trace(go.Table(header=dict(values=header), cells=dict(values=cells)), 1, 2)
    colors = ["#d62728" if a <= i < b else "#1f77b4" for i in range(len(pattern))]
    fig.add_trace(go.Bar(x=list(range(len(pattern))), y=pattern.tolist(), marker_color=colors, showlegend=False,
                         customdata=list(att.example_tokens), hovertemplate="%{customdata}: %{y:.3f}<extra></extra>"), 2, 1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(pattern))), ticktext=list(att.example_tokens),
                     tickangle=-60, tickfont=dict(size=8), row=2, col=1)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="head", row=1, col=1)
    fig.update_layout(
        title=f"Attention to the instruction's tokens ({att.model_name}); the span is "
        f"{100 * float(att.span_fraction.mean()):.0f}% of a prompt's tokens on average",
        template="plotly_white", width=1300, height=900,
    )
    return fig
