"""Fast layer search: score every (layer, strength) cell with teacher-forced forward passes instead of decoding.

A cell's score is the activation-patching metric: the mean per-token log-probability shift, steered minus
unsteered, of the first ``n_tokens`` of the model's own unsteered response *with* the instruction,
teacher-forced after the prompt the sweep decodes (without the instruction unless the target says
otherwise). A direction that makes the uninstructed prompt continue like the instructed response scores
high. One forward pass per validation prompt and cell (plus one unsteered pass per prompt) replaces a
``max_new_tokens``-step decode, so the sweep can decode only the :func:`shortlist` of layers. Example::

    memo = GenerationMemo(model, max_new_tokens=48)
    scores = fast_scores(model, targets, default_layers(30), [1.0], memo)
    shortlist(scores, keep=3)   # {"detectable_format:title": [24, 26, 28]} on SmolLM2 (docs/search.md)
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..errors import LayerError, SteeringError, WorkbenchError
from ..evaluation.quality import _encode_pairs, pad_right
from ..generation import check_count
from ..models.loading import model_info
from ..models.prompts import ContextLengthError
from ..models.plain import plain_model_for
from ..steering import SteeringSpec, hf_steer, resolve_specs
from .conditions import GenerationMemo
from .sweep import SweepTarget, steering_spec

__all__ = ["fast_scores", "response_logprobs", "shortlist", "SCORE_KEYS"]

SCORE_KEYS = ("instruction_id", "layer", "coeff", "score", "n")
Pair = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt ids, response ids)


def _check_grid(model: Any, targets: Sequence[SweepTarget], layers: Sequence[int], strengths: Sequence[float]
                ) -> list[list[list[SteeringSpec]]]:
    """Every cell's spec per target (``[target][layer][strength]``), checked against the model before any work."""
    if not targets:
        raise WorkbenchError("fast search: no targets given")
    if not layers:
        raise LayerError("fast search: no layers given")
    if not strengths:
        raise WorkbenchError("fast search: no strengths given")
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < n_layers:
            raise LayerError(f"fast search: layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}")
    grid = []
    for target in targets:
        target.rows.require_nonempty(f"fast search target {target.name}")
        target.direction.check_compatible(model)
        target.prompts()  # raises DatasetError when a row lacks the prompt this target decodes
        cells = [[steering_spec(target.direction, layer, s, target.mode, target.scale) for s in strengths] for layer in layers]
        resolve_specs(tuple(spec for row in cells for spec in row), n_layers, d_model)
        grid.append(cells)
    return grid


def _check_context(model: Any, targets: Sequence[SweepTarget], n_tokens: int, gen_tokens: int, contrast: bool) -> None:
    """Refuse a prompt that cannot fit ``cfg.n_ctx`` with the tokens generated or teacher-forced after it, before any work."""
    n_ctx, formatter = int(model.cfg.n_ctx), model_info(model).formatter
    lengths: dict[str, int] = {}
    for target in targets:
        uses = [(target.rows.prompts(), gen_tokens, "generated")]
        if contrast:
            uses.append((target.rows.prompts_without_instruction(), gen_tokens, "generated"))
        uses.append((target.prompts(), n_tokens, "teacher-forced"))
        for prompts, extra, verb in uses:
            for i, prompt in enumerate(prompts):
                n = lengths.setdefault(prompt, len(formatter.token_ids(prompt, False)))
                if n + extra > n_ctx:
                    raise ContextLengthError(
                        f"fast search target {target.name}: prompt {i} has {n} tokens; with the {extra} response tokens "
                        f"{verb} after it that is {n + extra}, more than the model's {n_ctx}-token context")


def _plain_for_scoring(model: Any, memo: GenerationMemo) -> torch.nn.Module:
    """The weight-sharing plain model, refusing a bridge with open steer() blocks or hand-added hooks."""
    if memo.model is not model:
        raise WorkbenchError("fast search: the GenerationMemo generates with another model than the one scored")
    if model_info(model).active_specs:
        raise SteeringError("fast search: steer() blocks are open on the model; score outside them (each cell steers itself)")
    plain = plain_model_for(model)
    if plain is None:
        raise SteeringError("fast search: the model carries hooks the plain model cannot reproduce; remove them first")
    return plain


@torch.no_grad()
def response_logprobs(
    plain: torch.nn.Module,
    pairs: Sequence[Pair],
    spec: SteeringSpec | None = None,
    batch_size: int = 20,
    pad_id: int = 0,
) -> list[Float[torch.Tensor, "r"]]:
    """Log-probability of each response token given its prompt and the earlier response tokens, under ``spec``.

    Teacher-forced on a plain ``transformers`` model (right-padded batches of rows sorted by length; logits
    only over the positions that predict response tokens). Empty responses give empty tensors.

    >>> response_logprobs(plain_model_for(model), [(prompt_ids, response_ids)], spec)[0].sum()
    """
    out: list[torch.Tensor] = [torch.zeros(0) for _ in pairs]
    order = sorted((i for i, (_, r) in enumerate(pairs) if r), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    device = next(plain.parameters()).device
    with hf_steer(plain, spec) if spec is not None else contextlib.nullcontext():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_right([list(pairs[i][0]) + list(pairs[i][1]) for i in idx], pad_id)
            p_lens = [len(pairs[i][0]) for i in idx]
            width = ids.shape[1]
            lo, hi = min(p_lens) - 1, width - 1  # positions whose logits predict some row's response token
            keep = torch.arange(lo, hi, device=device)
            logits = plain(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep,
                           use_cache=False).logits.float()
            norm = torch.logsumexp(logits, dim=-1)  # [batch, kept positions]
            for j, i in enumerate(idx):
                p_len, r_len = p_lens[j], len(pairs[i][1])
                pos = torch.arange(p_len - 1 - lo, p_len - 1 - lo + r_len, device=device)
                tgt = ids[j, p_len : p_len + r_len].to(device)
                out[i] = (logits[j, pos, tgt] - norm[j, pos]).cpu()
    return out


def _target_pairs(model: Any, target: SweepTarget, responses: Sequence[str], n_tokens: int) -> list[Pair]:
    """(prompt ids as generation sees them, first ``n_tokens`` ids of the with-instruction response) per row."""
    encoded = _encode_pairs(model, target.prompts(), responses, formatted=False)
    return [(tuple(p), tuple(r[:n_tokens])) for p, r in encoded]


def fast_scores(
    model: Any,
    targets: Sequence[SweepTarget],
    layers: Sequence[int],
    strengths: Sequence[float],
    memo: GenerationMemo,
    n_tokens: int = 16,
    batch_size: int = 20,
    response_tokens: int | None = None,
    contrast: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One record per (target group, layer, strength): ``{"instruction_id", "layer", "coeff", "score", "n"}``.

    ``score``: mean over validation rows of the mean per-token log-prob shift (steered minus unsteered) of the
    first ``n_tokens`` tokens of the unsteered with-instruction response, teacher-forced after the prompt the
    target decodes (``target.prompts()``). The responses come from ``memo`` (greedy, unsteered) at
    ``response_tokens`` new tokens (default ``memo.max_new_tokens``, so a sweep's cached responses are reused),
    cut to ``n_tokens``. ``n``: rows scored (rows whose response is empty are left out; ``score`` NaN if none).
    ``contrast=True`` subtracts the same shift of the unsteered *without*-instruction response (the sweep's
    baseline responses), so steering that merely degrades every continuation does not score as "toward" it.
    A prompt whose tokens plus the response tokens generated (``response_tokens``) or teacher-forced
    (``n_tokens``) after it exceed ``model.cfg.n_ctx`` raises ``ContextLengthError`` before any forward pass.

    >>> fast_scores(model, [SweepTarget("title", val, direction)], [22, 24, 26], [1.0], GenerationMemo(model))
    """
    n_tokens = check_count("n_tokens", n_tokens)
    batch_size = check_count("batch_size", batch_size)
    gen_tokens = max(n_tokens, check_count("response_tokens", memo.max_new_tokens if response_tokens is None else response_tokens))
    grid = _check_grid(model, targets, layers, strengths)
    if contrast:
        for target in targets:
            target.rows.prompts_without_instruction()  # contrast needs every row's uninstructed prompt
    _check_context(model, targets, n_tokens, gen_tokens, contrast)
    plain = _plain_for_scoring(model, memo)
    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    kinds = [lambda t: t.rows.prompts()] + ([lambda t: t.rows.prompts_without_instruction()] if contrast else [])
    flat = [p for kind in kinds for t in targets for p in kind(t)]
    generated = iter(memo.generate(flat, [], gen_tokens))  # one batched call for every response the scores need
    responses = [[[next(generated) for _ in t.rows] for t in targets] for _ in kinds]  # [kind][target][row]
    shifts: dict[tuple[str, int, float], list[float]] = {}
    base_cache: dict[Pair, torch.Tensor] = {}
    bar = tqdm(total=len(targets) * len(layers) * len(strengths), desc="fast search", unit="cell", disable=not progress)
    for ti, (target, cells) in enumerate(zip(targets, grid)):
        n = len(target.rows)
        pairs = [p for k in range(len(kinds)) for p in _target_pairs(model, target, responses[k][ti], n_tokens)]
        new = [p for p in dict.fromkeys(pairs) if p not in base_cache]
        base_cache.update(zip(new, response_logprobs(plain, new, None, batch_size, pad_id)))
        base = [base_cache[p] for p in pairs]
        for layer, row in zip(layers, cells):
            for strength, spec in zip(strengths, row):
                steered = response_logprobs(plain, pairs, spec, batch_size, pad_id)
                delta = [float((s - b).mean()) if b.numel() else None for s, b in zip(steered, base)]
                per_row = [[delta[k * n + i] for k in range(len(kinds))] for i in range(n)]
                cell = shifts.setdefault((target.group_name, layer, float(strength)), [])
                cell += [d[0] - (d[1] if contrast else 0.0) for d in per_row if None not in d]
                bar.update(1)
    bar.close()
    return [
        {"instruction_id": g, "layer": layer, "coeff": coeff, "score": sum(v) / len(v) if v else math.nan, "n": len(v)}
        for (g, layer, coeff), v in sorted(shifts.items())
    ]


def shortlist(scores: Sequence[dict[str, Any]], keep: int = 3) -> dict[str, list[int]]:
    """Per group, the ``keep`` layers with the best cell score (ties: earlier layer), sorted ascending.

    A layer's score is its best strength's; NaN scores rank last.

    >>> shortlist(fast_scores(model, targets, layers, [1.0], memo), keep=3)["detectable_format:title"]
    [24, 26, 28]
    """
    keep = check_count("keep", keep)
    if not scores:
        raise WorkbenchError("shortlist: no scores given")
    best: dict[str, dict[int, float]] = {}
    for rec in scores:
        missing = [k for k in ("instruction_id", "layer", "score") if k not in rec]
        if missing:
            raise WorkbenchError(f"shortlist: a score record lacks {missing} (got keys {sorted(rec)})")
        s = float(rec["score"])
        s = -math.inf if math.isnan(s) else s
        layers = best.setdefault(rec["instruction_id"], {})
        layers[int(rec["layer"])] = max(layers.get(int(rec["layer"]), -math.inf), s)
    return {g: sorted(sorted(ls, key=lambda layer: (-ls[layer], layer))[:keep]) for g, ls in sorted(best.items())}
