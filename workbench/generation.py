"""Batched generation from user texts: greedy or seeded sampling, KV-cached or the reference loop."""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .arguments import check_count, check_seed
from .errors import WorkbenchError
from .hooks import forward_hooks
from .models.backends import GENERATION_BACKENDS, check_backend
from .models.loading import model_info
from .models.prompts import ContextLengthError
from .models.plain import plain_model_for
from .decoding.from_layer import LayerStart, first_changed_layer
from .decoding.static import Capture, next_tokens, static_decoder_for
from .steering.bridge import steer_rows
from .steering.condition import gated_row_specs, gates_open
from .steering.plain import hf_steer, hf_steer_rows
from .steering.rows import RowSteering
from .steering.spec import GenerationState, SteeringSpec


def eos_token_ids(model: Any) -> list[int]:
    """Every token id that ends a response (generation config and tokenizer)."""
    ids: set[int] = set()
    cfg_eos = getattr(getattr(model.original_model, "generation_config", None), "eos_token_id", None)
    for value in (cfg_eos, model.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


@contextlib.contextmanager
def generation_state(model: Any, prompt_len: int, use_cache: bool) -> Iterator[GenerationState]:
    """Track token positions during one generation so steering can target prompt or generated tokens."""
    info = model_info(model)
    state = GenerationState(prompt_len=prompt_len, use_cache=use_cache)
    info.generation_state = state

    def on_embed(x: torch.Tensor) -> None:
        state.on_embed(x.shape[1])

    try:
        with forward_hooks(model, [("hook_embed", on_embed)]):
            yield state
    finally:
        info.generation_state = None


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, gen: torch.Generator | None):
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def _reference_loop(model, ids, mask, max_new_tokens, min_new_tokens, eos, pad, do_sample, temperature, top_p, seed):
    """Re-run the whole sequence for every new token (the paper code's approach; slow but simple)."""
    gen = torch.Generator().manual_seed(seed) if do_sample else None
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    eos_t = torch.tensor(eos, device=ids.device)
    for step in range(max_new_tokens):
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(ids, attention_mask=mask, position_ids=position_ids, return_type="logits")[:, -1]
        nxt = next_tokens(logits, step, min_new_tokens, eos_t, done, pad,
                          lambda lg: _pick(lg, do_sample, temperature, top_p, gen))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if bool(done.all()):
            break
    return ids


BACKENDS = GENERATION_BACKENDS  # kept importable from here


def _layer_start(capture: Capture, row: int, tokens: list[int], n_layers: int) -> LayerStart | None:
    """What ``capture`` recorded for one row's response ``tokens`` (None: nothing usable)."""
    if capture.logprobs is not None and capture.scored[row]:
        return LayerStart(n_layers, capture.hidden[row, :0].clone(), tuple(tokens), capture.logprobs[row, : len(tokens)].clone())
    layer = capture.layers[row]
    if layer is None or layer < 1:
        return None
    return LayerStart(layer, capture.hidden[row, : max(len(tokens) - 1, 0)].clone(), tuple(tokens))


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[str] | str,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    use_cache: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    formatted: bool = False,
    progress: bool = False,
    return_tokens: bool = False,
    backend: str = "auto",
    min_new_tokens: int = 0,
    truncate: str | None = None,
    parse_special_tokens: bool = False,
    row_steering: Sequence[Sequence[SteeringSpec]] | None = None,
    unsteered_states: list | None = None,
    prompt_states: Any = None,
) -> list[str] | list[list[int]]:
    """Generate a response for each user text (prompt excluded from the output).

    Prompts are formatted with the model's prompt style, left-padded into batches and decoded
    greedily unless ``do_sample``; each row stops at its own EOS. ``use_cache=False`` runs the
    reference loop that re-runs the full sequence per token; both give the same greedy tokens,
    with or without active steering. ``return_tokens`` returns token ids instead of texts.

    ``min_new_tokens`` keeps EOS from being picked before that many tokens (benchmarks use it).
    ``backend``: KV-cached generation runs on a plain ``transformers`` model sharing the
    bridge's weights, with the active steering re-applied to its decoder layers (``plain``,
    faster), or through the TransformerLens bridge (``bridge``); ``auto`` takes ``plain``
    unless hooks are active that only the bridge can run. ``compiled`` decodes like ``plain``
    on a static KV cache with a ``torch.compile``d step: faster per token at batch 1, after a
    one-off compile per batch size and length bucket (:mod:`workbench.decoding.static`). All
    give the same greedy tokens; sampling draws from the workbench's own seeded generator there.

    A prompt whose tokens plus ``max_new_tokens`` exceed the model's context (``cfg.n_ctx``)
    raises :class:`~workbench.models.prompts.ContextLengthError` before anything runs;
    ``truncate="left"`` drops its earliest tokens instead and warns how many. Special tokens
    written in a user text (``<|im_start|>``) are tokenised as plain text, so a prompt cannot
    forge chat turns; ``parse_special_tokens=True`` parses them (``formatted=True`` prompts,
    full templates, always are).

    ``row_steering``: one list of :class:`~workbench.steering.SteeringSpec` per prompt, applied to that
    prompt's row only (after any open ``steer`` block's): several sweep units decode in one batch, each
    row with its own direction, layer, mode, strength and positions (:mod:`workbench.steering.rows`). A greedy
    call with ``row_steering`` on the plain path decodes in the workbench's eager loop (ended rows leave the
    batch) even when no row is steered (``[[]] * len(prompts)``).

    ``unsteered_states``: a list to fill with one :class:`~workbench.decoding.from_layer.LayerStart` or ``None``
    per prompt: for greedy ``row_steering`` rows on the plain path, the residual stream entering the first layer
    their steering changes, at each generated token fed back. It is the unsteered model's there, so the
    response's perplexity can be scored from that layer on (:func:`~workbench.evaluation.quality.response_nlls`);
    for rows decoded with no steering at all, the log-probability of each token, which is that score itself.
    ``prompt_states``: a :class:`~workbench.decoding.prompt_states.PromptStates` with ``keep_hidden=True``; those
    rows' prompt passes then start at the first layer their steering changes, the unsteered layers before it
    taken from the states (each prompt runs once however many rows share it).

    >>> generate(model, ["Describe a rainy afternoon."], max_new_tokens=32)
    """
    if prompts is None or isinstance(prompts, (bytes, dict)) or not isinstance(prompts, (str, Iterable)):
        raise WorkbenchError(f"generate: prompts must be a string or a list of strings, got {type(prompts).__name__}")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise WorkbenchError("generate: no prompts given")
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    batch_size = check_count("batch_size", batch_size)
    min_new_tokens = check_count("min_new_tokens", min_new_tokens, minimum=0)
    seed = check_seed(check_count("seed", seed, minimum=-(2**63)))
    for label, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkbenchError(f"{label} must be a number, got {value!r}")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise WorkbenchError("sampling needs temperature > 0 and 0 < top_p <= 1")
    info = model_info(model)
    check_backend(backend, GENERATION_BACKENDS)
    if unsteered_states is not None and not isinstance(unsteered_states, list):
        raise WorkbenchError(f"generate: unsteered_states must be a list to fill, got {type(unsteered_states).__name__}")
    if prompt_states is not None:
        from .decoding.prompt_states import PromptStates

        if not isinstance(prompt_states, PromptStates) or not prompt_states.keep_hidden:
            raise WorkbenchError("generate: prompt_states must be a PromptStates(keep_hidden=True) (prompt passes start "
                                 f"from its kept hidden states), got {prompt_states!r:.60}")
    n_ctx = int(model.cfg.n_ctx)
    n_layers = int(model.cfg.n_layers)
    if max_new_tokens >= n_ctx:
        raise ContextLengthError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {n_ctx}-token context")
    rows = info.formatter.token_rows(prompts, formatted, n_ctx - max_new_tokens, truncate, parse_special_tokens)
    if row_steering is not None and (isinstance(row_steering, (str, bytes)) or len(row_steering) != len(prompts)):
        raise WorkbenchError(f"generate: row_steering needs one list of specs per prompt ({len(prompts)}), "
                             f"got {len(row_steering) if not isinstance(row_steering, (str, bytes)) else 'a string'}")
    conditional = list(info.conditional)
    if conditional:  # open steer(condition=...) blocks: each row's own prompt decides, before anything is decoded
        with gates_open(model):
            gated = gated_row_specs(model, prompts, rows, conditional)
        row_steering = [g + list(u) for g, u in zip(gated, row_steering or [[] for _ in prompts])]
    rows_steering = None
    if row_steering is not None:
        rows_steering = RowSteering.build(row_steering, int(model.cfg.n_layers), int(model.cfg.d_model))
    bridge_only_rows = rows_steering is not None and any(h not in ("resid_post", "resid_pre") for h, _ in rows_steering.sites())
    plain = plain_model_for(model) if backend != "bridge" and not (bridge_only_rows and backend == "auto") else None
    if bridge_only_rows and backend in ("plain", "compiled"):
        raise WorkbenchError(f"backend={backend!r} steers rows at resid_post or resid_pre only; use backend='bridge'")
    if backend in ("plain", "compiled") and plain is None:
        raise WorkbenchError(
            f"backend={backend!r} cannot reproduce the active hooks (resid_mid steering or hooks added by hand); "
            "use backend='bridge'"
        )
    tok = model.tokenizer
    eos = eos_token_ids(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    device = model.cfg.device
    results: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    with gates_open(model) if conditional else contextlib.nullcontext():
        for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
            ids, mask = info.formatter.pad(rows[start : start + batch_size], padding_side="left")
            ids, mask = ids.to(device), mask.to(device)
            prompt_len = ids.shape[1]
            hf_kwargs = dict(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                temperature=temperature if do_sample else None, top_p=top_p if do_sample else None, top_k=None,
                eos_token_id=eos, pad_token_id=pad, use_cache=True, min_new_tokens=min_new_tokens or None,
            )
            if do_sample:
                torch.manual_seed(seed + start)
            batch_rows = None if rows_steering is None else rows_steering.rows(start, start + batch_size)
            # a greedy per-row batch, even one whose rows are all unsteered (a packed call of the unsteered conditions):
            # the eager loop, which drops rows as they end and records what scoring their perplexity needs
            packed = use_cache and plain is not None and batch_rows is not None and not do_sample  # (plain is None on "bridge")
            if batch_rows is not None and not batch_rows and not (packed and backend != "compiled"):
                batch_rows = None  # no row of this batch is steered on its own
            capture = None
            if use_cache and backend == "compiled" or packed:
                # compiled, or a greedy per-row batch: the workbench's own loop, which drops rows as they end (eager)
                gen = torch.Generator().manual_seed(seed + start) if do_sample else None
                specs = (info.active_specs if batch_rows is None
                         else [list(info.active_specs) + list(row) for row in batch_rows.specs])
                eager = backend != "compiled"  # a packed batch on the plain path (the compiled step keeps fixed shapes)
                if eager and unsteered_states is not None:
                    capture = Capture([first_changed_layer(row) for row in specs], scored=[not row for row in specs])
                out = static_decoder_for(model).generate(
                    ids, mask, specs, max_new_tokens, min_new_tokens, eos, pad,
                    lambda logits: _pick(logits, do_sample, temperature, top_p, gen), per_row=batch_rows is not None,
                    eager=eager, capture=capture, prompt_states=prompt_states if eager else None, states_model=plain,
                )
            elif use_cache and plain is not None:
                with contextlib.ExitStack() as stack:
                    if info.active_specs:
                        stack.enter_context(hf_steer(plain, *info.active_specs, prompt_len=prompt_len))
                    if batch_rows is not None:
                        stack.enter_context(hf_steer_rows(plain, batch_rows, prompt_len=prompt_len))
                    out = plain.generate(**hf_kwargs)
            else:
                with generation_state(model, prompt_len, use_cache), (
                    steer_rows(model, batch_rows) if batch_rows is not None else contextlib.nullcontext()
                ):
                    if use_cache:
                        out = model.original_model.generate(**hf_kwargs)
                    else:
                        out = _reference_loop(
                            model, ids, mask, max_new_tokens, min_new_tokens, eos, pad, do_sample, temperature, top_p,
                            seed + start,
                        )
            for j, row in enumerate(out[:, prompt_len:].tolist()):
                cut = next((i for i, t in enumerate(row) if t in eos), len(row))
                results.append(row[:cut])
                if unsteered_states is not None:
                    unsteered_states.append(None if capture is None else _layer_start(capture, j, row[:cut], n_layers))
    if return_tokens:
        return results
    return [tok.decode(r, skip_special_tokens=True) for r in results]
