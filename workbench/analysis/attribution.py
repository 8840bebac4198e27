"""Direct attribution of a direction: what the embedding, every head (through W_O) and every MLP write onto it.

At the last token, ``resid_post`` of layer L is the embedding plus, for each block up to L, the
attention output (the sum over heads of ``z_h @ W_O[h]``, plus ``b_O``) and the MLP output. Its
projection on the unit direction is therefore the sum of those components' projections; the
analysis reports them for the with- and without-instruction prompts and their difference, and
checks the sum against the measured ``resid_post`` before returning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..directions import Direction
from ..errors import WorkbenchError
from .common import batches, bridge_last_token_hooks, check_direction, tokenize_pairs

SUM_TOLERANCE = 1e-3  # relative; a larger gap means the block is not resid_pre + attn + mlp (e.g. post-norms)


@dataclass(frozen=True)
class Attribution:
    """Per-prompt contributions to the projection on the unit direction at ``layer`` (index 0: with, 1: without).

    ``heads[s, n, l, h]``, ``mlp[s, n, l]``, ``attn_bias[s, n, l]``, ``embed[s, n]``; ``total[s, n]`` is the
    measured projection of ``resid_post``. ``diff_*`` properties are mean (with - without) over pairs.
    """

    layer: int
    direction_name: str
    model_name: str
    embed: Float[torch.Tensor, "2 n"]
    heads: Float[torch.Tensor, "2 n layers heads"]
    mlp: Float[torch.Tensor, "2 n layers"]
    attn_bias: Float[torch.Tensor, "2 n layers"]
    total: Float[torch.Tensor, "2 n"]

    @property
    def component_sum(self) -> Float[torch.Tensor, "2 n"]:
        return self.embed + self.heads.sum((-1, -2)) + self.mlp.sum(-1) + self.attn_bias.sum(-1)

    @property
    def max_relative_error(self) -> float:
        """Largest |sum of components - total| / max(|total|, mean |total|) over prompts."""
        scale = self.total.abs().clamp_min(float(self.total.abs().mean()) + 1e-12)
        return float(((self.component_sum - self.total).abs() / scale).max())

    def mean_diff(self, what: str) -> torch.Tensor:
        """Mean over pairs of (with - without) of ``embed``, ``heads``, ``mlp``, ``attn_bias`` or ``total``."""
        x = getattr(self, what)
        return (x[0] - x[1]).mean(0)

    def top_components(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` components with the largest |mean difference|, as rows ``{component, layer, head, with, without, diff}``."""
        rows = [dict(component="embed", layer=None, head=None, w=self.embed[0].mean(), wo=self.embed[1].mean())]
        n_layers, n_heads = self.heads.shape[2:]
        for layer in range(n_layers):
            for h in range(n_heads):
                rows.append(dict(component=f"L{layer}H{h}", layer=layer, head=h,
                                 w=self.heads[0, :, layer, h].mean(), wo=self.heads[1, :, layer, h].mean()))
            rows.append(dict(component=f"MLP{layer}", layer=layer, head=None, w=self.mlp[0, :, layer].mean(), wo=self.mlp[1, :, layer].mean()))
            if self.attn_bias[:, :, layer].abs().max() > 0:
                rows.append(dict(component=f"b_O{layer}", layer=layer, head=None,
                                 w=self.attn_bias[0, :, layer].mean(), wo=self.attn_bias[1, :, layer].mean()))
        out = [dict(component=r["component"], layer=r["layer"], head=r["head"], with_=float(r["w"]),
                    without=float(r["wo"]), diff=float(r["w"] - r["wo"])) for r in rows]
        return sorted(out, key=lambda r: -abs(r["diff"]))[:k]


def _o_weights(model: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    attn = model.blocks[layer].attn
    w_o = getattr(attn, "W_O", None)
    if w_o is None or w_o.dim() != 3:
        raise WorkbenchError(f"layer {layer}: the model's attention exposes no per-head W_O [heads, d_head, d_model]")
    b_o = getattr(attn, "b_O", None)
    return w_o.detach().float().cpu(), None if b_o is None else b_o.detach().float().cpu()


@torch.no_grad()
def direct_attribution(
    model: Any, pairs: Any, direction: Direction, layer: int, batch_size: int = 8, progress: bool = True
) -> Attribution:
    """Split each pair's last-token projection on ``direction`` at ``layer`` into embedding, heads, MLPs.

    >>> att = direct_attribution(model, pairs, title, layer=20); att.top_components(5)
    """
    check_direction(model, direction, [layer])
    tps = tokenize_pairs(model, pairs, "direct attribution")
    u = direction.at(layer).unit.float().cpu()
    weights = [_o_weights(model, l) for l in range(layer + 1)]
    names = ["blocks.0.hook_resid_pre"]
    for l in range(layer + 1):
        names += [f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_mlp_out"]
    names.append(f"blocks.{layer}.hook_resid_post")

    def take(name: str, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return x[torch.arange(x.shape[0], device=x.device), last]

    n_heads = weights[0][0].shape[0]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("embed", "heads", "mlp", "bias", "total")}
    for side, label in ((0, "with"), (1, "without")):
        seqs = [tp.with_ids if side == 0 else tp.without_ids for tp in tps]
        acc: dict[str, list[torch.Tensor]] = {k: [] for k in parts}
        for chunk in batches(len(seqs), batch_size, f"attribution ({label})", progress):
            got = bridge_last_token_hooks(model, [seqs[i] for i in chunk], names, take, stop_after=names[-1])
            heads = torch.stack([
                torch.einsum("bhd,hdm,m->bh", got[f"blocks.{l}.attn.hook_z"].reshape(len(chunk), *weights[l][0].shape[:2]), weights[l][0], u) for l in range(layer + 1)
            ], 1)
            bias = torch.tensor([0.0 if b is None else float(b @ u) for _, b in weights]).expand(len(chunk), -1)
            acc["embed"].append(got["blocks.0.hook_resid_pre"] @ u)
            acc["heads"].append(heads)
            acc["mlp"].append(torch.stack([got[f"blocks.{l}.hook_mlp_out"] @ u for l in range(layer + 1)], 1))
            acc["bias"].append(bias)
            acc["total"].append(got[names[-1]] @ u)
        for k in parts:
            parts[k].append(torch.cat(acc[k]))
    result = Attribution(
        layer=layer, direction_name=direction.name, model_name=direction.model_name,
        embed=torch.stack(parts["embed"]), heads=torch.stack(parts["heads"]).reshape(2, len(tps), layer + 1, n_heads),
        mlp=torch.stack(parts["mlp"]), attn_bias=torch.stack(parts["bias"]), total=torch.stack(parts["total"]),
    )
    if result.max_relative_error > SUM_TOLERANCE:
        raise WorkbenchError(
            f"direct attribution: components sum to the resid_post projection only within "
            f"{result.max_relative_error:.1e} (relative); this architecture adds terms outside heads and MLPs "
            "(e.g. norms after attention), so the decomposition does not hold"
        )
    return result


def attribution_figure(att: Attribution, k: int = 12):
    """Layer x head heatmap of the mean (with - without) contribution, MLPs beside it, top components listed."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    heads, mlp = att.mean_diff("heads"), att.mean_diff("mlp")
    n_layers, n_heads = heads.shape
    top = att.top_components(k)
    lim = float(max(heads.abs().max(), 1e-9))  # the heads' own scale: MLPs are often larger and drawn beside
    fig = make_subplots(
        rows=1, cols=3, column_widths=[0.5, 0.15, 0.35], horizontal_spacing=0.06,
        specs=[[{"type": "heatmap"}, {"type": "bar"}, {"type": "table"}]],
        subplot_titles=("attention heads", "MLPs", f"top {k} components (mean over {att.total.shape[1]} pairs)"),
    )
    fig.add_trace(go.Heatmap(
        z=heads.tolist(), x=list(range(n_heads)), y=list(range(n_layers)), zmid=0, zmin=-lim, zmax=lim,
        colorscale="RdBu_r", colorbar=dict(title="heads", x=-0.12),
        hovertemplate="layer %{y} head %{x}: %{z:.3f}<extra></extra>",
    ), 1, 1)
    fig.add_trace(go.Bar(x=mlp.tolist(), y=list(range(n_layers)), orientation="h", marker_color="#555", name="MLP",
                         hovertemplate="MLP %{y}: %{x:.3f}<extra></extra>", showlegend=False), 1, 2)
    fig.add_trace(go.Table(
        header=dict(values=["component", "with", "without", "with - without"]),
        cells=dict(values=[[r["component"] for r in top], [f"{r['with_']:.3f}" for r in top],
                           [f"{r['without']:.3f}" for r in top], [f"{r['diff']:.3f}" for r in top]]),
    ), 1, 3)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="head", row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    total = att.mean_diff("total")
    fig.update_layout(
        title=f"Direct attribution of the '{att.direction_name}' direction at layer {att.layer} ({att.model_name}); "
        f"mean projection gap {float(total):.2f}, of which embedding {float(att.mean_diff('embed')):.2f}",
        template="plotly_white", width=1300, height=max(450, 18 * n_layers + 150),
    )
    return fig
