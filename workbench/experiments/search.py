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
import copy
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..arguments import check_count
from ..decoding.from_layer import first_changed_layer, from_layer
from ..decoding.prompt_states import MIN_SHARED_PREFIX, PromptState, run_prompts, window_fits
from ..errors import LayerError, SteeringError, WorkbenchError
from ..evaluation.quality import _encode_pairs
from ..models.loading import model_info
from ..models.prompts import ContextLengthError
from ..models.batching import pad_tokens
from ..models.plain import decoder_layers, layer_output, plain_model_for
from ..steering import SteeringSpec, hf_steer, resolve_specs
from .conditions import GenerationMemo
from .targets import SweepTarget, steering_spec

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
    if model_info(model).active_specs or model_info(model).conditional:
        raise SteeringError("fast search: steer() blocks are open on the model; score outside them (each cell steers itself)")
    plain = plain_model_for(model)
    if plain is None:
        raise SteeringError("fast search: the model carries hooks the plain model cannot reproduce; remove them first")
    return plain


@dataclass
class _Batch:
    """One right-padded batch of teacher-forced rows: ``idx`` into the pairs, and the unsteered residual stream
    entering each kept layer at the positions after the shared prefix (``inputs[layer]: [rows, width - prefix,
    d_model]``), filled by an unsteered pass."""

    idx: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    p_lens: list[int]
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Rows:
    """Teacher-forced rows in batches, all starting with ``prefix`` (a chat template's system turn; may be empty):
    each pass runs the batches on the prefix's KV cache. The prefix's unsteered state (its KV cache and every
    layer's output, a kept prompt state) is run once, as one row."""

    batches: list[_Batch]
    prefix: tuple[int, ...] = ()
    prefix_state: PromptState | None = None


def _batches(pairs: Sequence[Pair], batch_size: int, pad_id: int, prefix: Sequence[int] = ()) -> _Rows:
    """The non-empty rows sorted by length, in right-padded batches of ``batch_size``; ``prefix`` is shared when
    every such prompt starts with it and is longer (the positions scored all come after it)."""
    order = sorted((i for i, (_, r) in enumerate(pairs) if r), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    n = len(prefix)
    if n < MIN_SHARED_PREFIX or not all(len(pairs[i][0]) > n and tuple(pairs[i][0][:n]) == tuple(prefix) for i in order):
        prefix = ()
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_tokens([list(pairs[i][0]) + list(pairs[i][1]) for i in idx], pad_id)
        out.append(_Batch(idx, ids, mask, [len(pairs[i][0]) for i in idx]))
    return _Rows(out, tuple(prefix))


@contextlib.contextmanager
def _recording(plain: torch.nn.Module, into: dict[int, torch.Tensor], layers: Sequence[int]) -> Iterator[None]:
    """Keep the residual stream entering each of ``layers`` (> 0) in ``into`` during one forward pass."""
    blocks = decoder_layers(plain)

    def keep(layer: int):
        def fn(module: torch.nn.Module, args: tuple, output: Any) -> None:
            into[layer] = layer_output(output).detach().clone()

        return fn

    handles = [blocks[k - 1].register_forward_hook(keep(k)) for k in sorted(set(layers)) if 0 < k <= len(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _resumable(spec: SteeringSpec | None) -> int | None:
    """The first layer a steered pass of ``spec`` can start at from kept unsteered states (0: from the embeddings,
    on the kept prefix); None: every layer from the embeddings, no prefix (a spec that steers only some positions,
    or hooks elsewhere)."""
    if spec is None:
        return 0
    return first_changed_layer([spec]) if spec.positions == "all" else None


def _entering(spec: SteeringSpec | None, first: int, kept: dict[int, torch.Tensor]) -> tuple[int, torch.Tensor] | None:
    """``from_layer`` arguments: the kept unsteered stream entering ``first``, with a ``resid_post`` spec's own
    shift applied (its layer is skipped); None from the embeddings."""
    if not first or first not in kept:
        return None
    hidden = kept[first]
    return first, spec.apply(hidden, None) if spec is not None and spec.hook == "resid_post" else hidden


def _prefix_cache(plain: torch.nn.Module, rows: _Rows, spec: SteeringSpec | None, first: int) -> Any:
    """The prefix's KV cache under ``spec``: unsteered, its kept state's; steered, the kept unsteered layers before
    ``first`` and the rest run on the prefix from its kept stream entering ``first`` (from the embeddings if 0)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=plain.config)
    if spec is None:  # the unsteered pass comes first: no steering is active here
        if rows.prefix_state is None:
            rows.prefix_state = run_prompts(plain, [rows.prefix], keep_hidden=True)[0]
        kept = len(rows.prefix_state.kv)
    else:
        ids = torch.tensor([rows.prefix], device=next(plain.parameters()).device)
        start = _entering(spec, first, {first: rows.prefix_state.hidden[first - 1][None]} if first else {})
        with from_layer(plain, *start) if start is not None else contextlib.nullcontext():
            plain(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        kept = first
    for layer in range(kept):  # the unsteered prefix's
        cache.update(*rows.prefix_state.kv[layer], layer)
    return cache


@torch.no_grad()
def _score_batches(plain: torch.nn.Module, pairs: Sequence[Pair], rows: _Rows, spec: SteeringSpec | None,
                   record: Sequence[int] = ()) -> list[torch.Tensor]:
    """:func:`response_logprobs` over prepared rows. The unsteered pass (``spec`` None) keeps the residual stream
    entering each layer of ``record``; a steered pass then starts at the first layer its spec changes, from those
    states (the layers before it are the unsteered model's). The shared prefix runs once per pass."""
    out: list[torch.Tensor] = [torch.zeros(0) for _ in pairs]
    device = next(plain.parameters()).device
    first = _resumable(spec)
    if first and not (rows.batches and first in rows.batches[0].inputs):
        first = 0  # no unsteered pass kept the stream entering it: every layer runs (on the prefix)
    skip = len(rows.prefix) if first is not None and rows.batches else 0
    with hf_steer(plain, spec) if spec is not None else contextlib.nullcontext():
        prefix = _prefix_cache(plain, rows, spec, first) if skip else None
        for batch in rows.batches:
            width = batch.ids.shape[1]
            lo, hi = min(batch.p_lens) - 1, width - 1  # positions whose logits predict some row's response token
            run = dict(input_ids=batch.ids[:, skip:].to(device), attention_mask=batch.mask.to(device),
                       logits_to_keep=torch.arange(lo - skip, hi - skip, device=device), use_cache=prefix is not None)
            if prefix is not None:
                run["past_key_values"] = past = copy.deepcopy(prefix)
                past.batch_repeat_interleave(len(batch.idx))
            start = None if spec is None or first is None else _entering(spec, first, batch.inputs)
            with (_recording(plain, batch.inputs, record) if spec is None
                  else from_layer(plain, *start) if start is not None else contextlib.nullcontext()):
                logits = plain(**run).logits.float()
            norm = torch.logsumexp(logits, dim=-1)  # [batch, kept positions]
            for j, i in enumerate(batch.idx):
                p_len, r_len = batch.p_lens[j], len(pairs[i][1])
                pos = torch.arange(p_len - 1 - lo, p_len - 1 - lo + r_len, device=device)
                tgt = batch.ids[j, p_len : p_len + r_len].to(device)
                out[i] = (logits[j, pos, tgt] - norm[j, pos]).cpu()
    return out


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
    return _score_batches(plain, pairs, _batches(pairs, batch_size, pad_id), spec)


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
    prefix = model_info(model).formatter.template_prefix()  # run once per pass, not once per row

    kinds = [lambda t: t.rows.prompts()] + ([lambda t: t.rows.prompts_without_instruction()] if contrast else [])
    flat = [p for kind in kinds for t in targets for p in kind(t)]
    generated = iter(memo.generate_many([(flat, [])], gen_tokens)[0])  # one packed call for every response the scores need
    responses = [[[next(generated) for _ in t.rows] for t in targets] for _ in kinds]  # [kind][target][row]
    shifts: dict[tuple[str, int, float], list[float]] = {}
    bar = tqdm(total=len(targets) * len(layers) * len(strengths), desc="fast search", unit="cell", disable=not progress)
    for ti, (target, cells) in enumerate(zip(targets, grid)):
        n = len(target.rows)
        pairs = [p for k in range(len(kinds)) for p in _target_pairs(model, target, responses[k][ti], n_tokens)]
        # (no shared prefix where a sliding-window cache would keep only part of it)
        fits = window_fits(plain, max((len(p) + len(r) for p, r in pairs), default=0))
        rows = _batches(pairs, batch_size, pad_id, prefix if fits else ())
        # the unsteered pass keeps the residual stream entering each cell's first steered layer: a cell's layers
        # before it are the unsteered model's, so its pass starts there (the same logits up to float noise)
        starts = [first_changed_layer([spec]) for row in cells for spec in row]
        base = _score_batches(plain, pairs, rows, None, record=[k for k in starts if k is not None])
        for layer, row in zip(layers, cells):
            for strength, spec in zip(strengths, row):
                steered = _score_batches(plain, pairs, rows, spec)
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
