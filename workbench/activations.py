"""Batched last-token residual-stream activations, caching only the requested hooks and positions."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .arguments import check_count, check_prompts
from .errors import DatasetError, ShapeError, WorkbenchError
from .hooks import RESID_HOOKS, check_layers, forward_hooks, hook_name
from .io import load_tensors, save_tensors
from .models.backends import EXTRACTION_BACKENDS, check_backend
from .models.loading import model_info
from .models.plain import decoder_layers, layer_input, layer_output, plain_model_for


BACKENDS = EXTRACTION_BACKENDS  # kept importable from here
MIN_SHARED_PREFIX = 8  # tokens; below this a shared prefix is not worth its cache copies


class _Done(Exception):
    """Raised by the hook of the deepest requested layer to end the forward pass early."""


def shared_prefix_length(ids: torch.Tensor, lengths: torch.Tensor, keep: int) -> int:
    """Tokens every prompt starts with (e.g. a chat template's system prompt), leaving ``keep`` of each."""
    limit = max(int(lengths.min()) - keep, 0)
    same = (ids[:, :limit] == ids[:1, :limit]).all(0)
    return limit if bool(same.all()) else int(torch.argmin(same.int()))


class _Grabber:
    """Keeps the activations at given positions of each requested layer; stops after the deepest.

    With ``weights`` (``[batch, k]``, 0 on padding) it keeps their weighted mean over the positions instead."""

    def __init__(self, layers: Sequence[int], rows: torch.Tensor, pos: torch.Tensor,
                 weights: torch.Tensor | None = None) -> None:
        self.layers, self.last = list(layers), max(layers)
        self.rows, self.pos = rows, pos  # [batch, 1] and [batch, k]: which tokens to keep
        self.weights = weights
        self.got: dict[int, torch.Tensor] = {}

    def take(self, slot: int, x: torch.Tensor) -> None:
        kept = x[self.rows, self.pos.to(x.device)].float().cpu()
        if self.weights is not None:
            w = self.weights[..., None]
            kept = (kept * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        self.got[slot] = kept
        if self.layers[slot] == self.last:
            raise _Done  # later blocks and the unembedding are not needed

    def result(self, what: str) -> list[torch.Tensor]:
        if len(self.got) != len(self.layers):
            raise WorkbenchError(f"collect_activations: hooks of {what} did not all run")
        return [self.got[j] for j in range(len(self.layers))]


def _extraction_model(model: Any, hook: str, backend: str) -> torch.nn.Module | None:
    """The plain weight-sharing model when it computes exactly what the bridge would, else None."""
    check_backend(backend, EXTRACTION_BACKENDS)
    plain = None
    info = model_info(model)
    if info.conditional and not info.gates_open:
        raise WorkbenchError("collect_activations inside a conditional steer block: conditional steering is decided per "
                             "prompt by generate(); collect activations outside the block")
    if backend != "bridge" and hook in ("resid_post", "resid_pre") and not info.active_specs:
        plain = plain_model_for(model)
    if backend == "plain" and plain is None:
        raise WorkbenchError(
            "backend='plain' extracts resid_post/resid_pre with no steering or hand-added hooks active; "
            "use backend='bridge' or 'auto'"
        )
    return plain


@contextlib.contextmanager
def _layer_hooks(plain: torch.nn.Module, layers: Sequence[int], hook: str, grab: _Grabber) -> Iterator[None]:
    """``resid_post`` of block L is the output of decoder layer L, ``resid_pre`` its input."""
    blocks = decoder_layers(plain)
    handles = []
    try:
        for slot, layer in enumerate(layers):
            if hook == "resid_post":
                fn = lambda m, a, out, slot=slot: grab.take(slot, layer_output(out))  # noqa: E731
                handles.append(blocks[layer].register_forward_hook(fn))
            else:
                fn = lambda m, a, kw, slot=slot: grab.take(slot, layer_input(a, kw))  # noqa: E731
                handles.append(blocks[layer].register_forward_pre_hook(fn, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _run_plain(plain: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, past: Any = None) -> None:
    try:
        plain.base_model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=past is not None)
    except _Done:
        pass


@torch.no_grad()
def collect_activations(
    model: Any,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    last_k: int | None = None,
    batch_size: int = 16,
    formatted: bool = False,
    progress: bool = True,
    backend: str = "auto",
    share_prefix: bool = True,
    truncate: str | None = None,
    parse_special_tokens: bool = False,
) -> Float[torch.Tensor, "n_prompts n_layers *k d_model"]:
    """Run ``prompts`` (formatted with the model's prompt style) and keep the last token's activations.

    Returns ``[n_prompts, n_layers, d_model]``, or ``[n_prompts, n_layers, last_k, d_model]``
    when ``last_k`` is given. Batches are right-padded, so each prompt's real tokens see exactly
    what they would see alone. ``backend="auto"`` reads ``resid_post``/``resid_pre`` from the
    plain ``transformers`` modules under the bridge (the same tensors, without the bridge's
    per-module overhead) unless steering or hand-added hooks are active, which only the bridge
    (``backend="bridge"``) runs. There, with ``share_prefix``, the tokens all prompts start with
    (a chat template's system prompt) are run once and reused from a KV cache.

    A prompt longer than the model's context (``cfg.n_ctx``) raises ``ContextLengthError``
    before anything runs; ``truncate="left"`` keeps its last ``n_ctx`` tokens and warns.
    Special tokens inside user texts are text unless ``parse_special_tokens`` (as in ``generate``).

    >>> acts = collect_activations(model, ["Hi.", "Write a poem."], layers=[10, 20])  # [2, 2, d_model]
    """
    prompts = check_prompts(prompts, "collect_activations", DatasetError)
    layers = check_layers(model, layers)
    if hook not in RESID_HOOKS:
        raise WorkbenchError(f"unknown hook {hook!r}; choose one of {RESID_HOOKS}")
    batch_size = check_count("batch_size", batch_size)
    k = 1 if last_k is None else check_count("last_k", last_k)
    formatter = model_info(model).formatter
    all_ids, all_mask = formatter.encode(prompts, padding_side="right", formatted=formatted, max_tokens=int(model.cfg.n_ctx),
                                         truncate=truncate, parse_special_tokens=parse_special_tokens)
    out = activations_of_tokens(model, all_ids, all_mask, layers, hook, k, batch_size=batch_size, backend=backend,
                                share_prefix=share_prefix, progress=progress)
    return out[:, :, 0] if last_k is None else out


@torch.no_grad()
def activations_of_tokens(
    model: Any,
    all_ids: torch.Tensor,
    all_mask: torch.Tensor,
    layers: Sequence[int],
    hook: str = "resid_post",
    k: int = 1,
    reduce: str = "last",
    batch_size: int = 16,
    backend: str = "auto",
    share_prefix: bool = True,
    progress: bool = False,
) -> Float[torch.Tensor, "n_prompts n_layers k d_model"]:
    """Activations of right-padded token rows (``[n, seq]`` ids and mask) at ``layers``: the last ``k`` real tokens of
    each row (``reduce="last"``), or the mean over all its real tokens (``reduce="mean"``, ``k`` = 1)."""
    if reduce not in ("last", "mean"):
        raise WorkbenchError(f"unknown reduce {reduce!r}; choose 'last' or 'mean'")
    plain = _extraction_model(model, hook, backend)
    d_model = int(model.cfg.d_model)
    n = all_ids.shape[0]
    out = torch.empty(n, len(layers), k, d_model, dtype=torch.float32)
    device = model.cfg.device
    # batch prompts of similar length together (less padding); results go back to the caller's order
    all_lengths = all_mask.sum(1)
    if k > int(all_lengths.min()):
        raise ShapeError(f"last_k={k} is longer than the shortest prompt ({int(all_lengths.min())} tokens)")
    shared = shared_prefix_length(all_ids, all_lengths, k) if plain is not None and share_prefix and reduce == "last" else 0
    prefix_cache = None
    if shared >= MIN_SHARED_PREFIX:
        prefix_cache = _prefix_cache(plain, all_ids[:1, :shared].to(device), max(layers))
    else:
        shared = 0
    order = torch.argsort(all_lengths, stable=True)
    names = [hook_name(layer, hook) for layer in layers]
    bar = tqdm(total=n, desc=f"activations ({hook})", disable=not progress, unit="prompt")
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        lengths = all_lengths[idx]
        width = int(lengths.max())
        ids, mask = all_ids[idx, shared:width].to(device), all_mask[idx, :width].to(device)
        if reduce == "mean":
            pos = torch.arange(width)[None, :].expand(len(idx), width)
            grab = _Grabber(layers, torch.arange(len(idx))[:, None], pos, weights=all_mask[idx, :width].float())
        else:
            # positions [batch, k]: the last k real tokens of each row (after the shared prefix)
            pos = lengths[:, None] - shared - k + torch.arange(k)[None, :]
            grab = _Grabber(layers, torch.arange(len(idx))[:, None], pos)
        if plain is not None:
            past = None
            if prefix_cache is not None:
                past = copy.deepcopy(prefix_cache)
                past.batch_repeat_interleave(len(idx))
            with _layer_hooks(plain, layers, hook, grab):
                _run_plain(plain, ids, mask, past)
        else:
            try:
                with forward_hooks(model, [(n_, lambda x, j=j: grab.take(j, x)) for j, n_ in enumerate(names)]):
                    model(ids, attention_mask=mask, return_type=None)
            except _Done:
                pass
        for j, acts in enumerate(grab.result(", ".join(names))):
            out[idx, j] = acts
        bar.update(len(idx))
    bar.close()
    return out


def _prefix_cache(plain: torch.nn.Module, prefix: torch.Tensor, deepest: int) -> Any:
    """KV cache of the shared prefix, filled up to the deepest requested layer."""
    from transformers import DynamicCache

    cache = DynamicCache(config=plain.config)
    zero = torch.zeros(1, 1, dtype=torch.long)
    with _layer_hooks(plain, [deepest], "resid_post", _Grabber([deepest], zero, zero)):
        _run_plain(plain, prefix, torch.ones_like(prefix), cache)
    return cache


def save_activations(path: str | Path, activations: torch.Tensor, **metadata: Any) -> None:
    """Save an activation tensor (atomically) with JSON-serialisable metadata."""
    save_tensors(path, {"activations": activations}, {"kind": "activations", **metadata})


def load_activations(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load activations saved by :func:`save_activations`: ``(tensor, metadata)``."""
    tensors, meta = load_tensors(path, "activations")
    if "activations" not in tensors:
        raise ShapeError(f"{path}: no 'activations' tensor")
    return tensors["activations"], meta
