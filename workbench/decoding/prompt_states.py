"""Response log-probabilities that reuse each prompt's KV cache: a sweep scores many responses to one prompt.

The perplexity of a steered response is measured under the unsteered model, given its prompt. A sweep asks for
it once per (layer, strength) cell, so the same validation prompt is run again and again; here each formatted
prompt runs once (left-padded in a batch of the prompts not kept yet, positions counted from its own first
token) and its KV cache and next-token log-probabilities are kept, in a store bounded in bytes. Responses are then scored in batches of
similar length on top of the cached prompts: prompt tokens and most padding are never recomputed. The tokens every
prompt starts with (``prefix``: a chat template's system turn, ``PromptFormatter.template_prefix()``) run once. Example::

    states = PromptStates(prefix=model_info(model).formatter.template_prefix())
    logp = response_logprobs_cached(plain_model, [(prompt_ids, response_ids), ...], states, batch_size=20)
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float

from ..errors import WorkbenchError
from ..models.batching import pad_tokens
from ..models.plain import decoder_layers, layer_output
from .from_layer import LayerStart, from_layer

MAX_PAD_SHARE = 0.2  # a scoring batch grows while its padding stays under this share of its response tokens
MIN_SHARED_PREFIX = 4  # tokens; a shorter shared prefix runs with each prompt (not worth its own pass)


@dataclass
class PromptState:
    """One prompt's KV cache (``[(keys, values)]`` per layer, each ``[1, kv_heads, prompt, d_head]``) and the
    log-probabilities of the token after it (``[vocab]``)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    next_logprobs: Float[torch.Tensor, "vocab"]
    hidden: Float[torch.Tensor, "layer prompt d_model"] | None = None  # each decoder layer's output, if kept

    @property
    def length(self) -> int:
        return int(self.kv[0][0].shape[2])

    @property
    def nbytes(self) -> int:
        return (sum(k.nbytes + v.nbytes for k, v in self.kv) + self.next_logprobs.nbytes
                + (0 if self.hidden is None else self.hidden.nbytes))


@dataclass
class PromptStates:
    """Prompt states of one model, by token ids, least recently used dropped beyond ``max_bytes``."""

    max_bytes: int = 1 << 30
    keep_hidden: bool = False  # also keep every layer's output (packed decoding starts prompts from them)
    prefix: tuple[int, ...] = ()  # tokens most prompts start with (a chat template's system turn): run once, shared
    entries: OrderedDict = field(default_factory=OrderedDict)
    nbytes: int = 0
    runs: int = 0  # prompts run (misses)
    shared: int = 0  # prompts run on the kept ``prefix`` state instead of from their first token
    resumed: int = 0  # responses scored from a steered decode's hidden states (a LayerStart), not from the embeddings
    _prefix: PromptState | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.prefix, (str, bytes)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in self.prefix):
            raise WorkbenchError(f"PromptStates: prefix must be token ids (ints), got {self.prefix!r:.60}")
        self.prefix = tuple(self.prefix)

    def get(self, plain: Any, prompt: Sequence[int]) -> PromptState:
        """The state of one prompt, run now if it is not kept."""
        key = tuple(prompt)
        if not self._has(key):
            self.fill(plain, [key], 1)
        self.entries.move_to_end(key)
        return self.entries[key]

    def fill(self, plain: Any, prompts: Sequence[Sequence[int]], batch_size: int) -> None:
        """Run the prompts not kept yet, ``batch_size`` at a time, and keep them."""
        missing = list(dict.fromkeys(tuple(p) for p in prompts if not self._has(tuple(p))))
        n = len(self.prefix)
        shared = [p for p in missing if n >= MIN_SHARED_PREFIX and len(p) > n and p[:n] == self.prefix]
        prefix = self._prefix_state(plain) if shared else None  # every prompt with the prefix runs on it, even alone
        on_prefix = set(shared)
        alone = [p for p in missing if p not in on_prefix]
        for group, on in ((shared, prefix), (alone, None)):
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                self.shared += len(chunk) if on is not None else 0
                self._keep(chunk, run_prompts(plain, chunk, self.keep_hidden, on))
        while self.nbytes > self.max_bytes and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.nbytes

    def _prefix_state(self, plain: Any) -> PromptState:
        """The state of :attr:`prefix` alone, run once (kept outside the byte budget: one short prompt)."""
        if self._prefix is None:
            self._prefix = run_prompts(plain, [self.prefix], self.keep_hidden)[0]
        return self._prefix

    def _keep(self, chunk: Sequence[tuple[int, ...]], states: Sequence[PromptState]) -> None:
        for key, state in zip(chunk, states):
            self.runs += 1
            if key in self.entries:
                self.nbytes -= self.entries.pop(key).nbytes
            self.entries[key] = state
            self.nbytes += state.nbytes

    def _has(self, key: tuple[int, ...]) -> bool:
        return key in self.entries and (not self.keep_hidden or self.entries[key].hidden is not None)


def window_fits(plain: Any, length: int) -> bool:
    """Whether rows of ``length`` tokens fit within ``plain``'s sliding attention window, if it has one (a sliding
    cache keeps only the window, not a prompt's every position)."""
    config = plain.config.get_text_config() if hasattr(plain.config, "get_text_config") else plain.config
    window = getattr(config, "sliding_window", None)
    return window is None or length < int(window)


def fits(plain: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> bool:
    """Whether prompt caches can be reused on ``plain``: a standard per-layer KV cache, and no prompt plus response
    as long as a sliding attention window (whose cache would drop the prompt's first tokens)."""
    from transformers import DynamicCache

    if not window_fits(plain, max((len(p) + len(r) for p, r in pairs), default=0)):
        return False
    config = plain.config.get_text_config() if hasattr(plain.config, "get_text_config") else plain.config
    try:
        cache = DynamicCache(config=plain.config)
    except Exception:  # noqa: BLE001 - an architecture whose cache cannot be built from its config
        return False
    return len(cache.layers) == int(config.num_hidden_layers)


def run_prompts(plain: Any, prompts: Sequence[tuple[int, ...]], keep_hidden: bool = False,
                 prefix: PromptState | None = None) -> list[PromptState]:
    """The states of ``prompts`` (token ids) run as one batch, e.g. ``run_prompts(plain, [ids], keep_hidden=True)[0]``.

    Left-padded, so every prompt ends at the last position (one logits row each); pads are masked out and
    positions count from each prompt's first token, so a prompt's cache is what it would be alone.
    ``keep_hidden``: also keep each decoder layer's output (the input of the next; the last: the final norm's).
    ``prefix``: the state of the tokens every prompt starts with; only the rest of each prompt runs, on top of it
    (pads sit between the prefix and the rest, masked out), and each state is the prefix's joined to the rest's."""
    from transformers import DynamicCache

    device = next(plain.parameters()).device
    skip = 0 if prefix is None else prefix.length
    rest = [p[skip:] for p in prompts]
    ids, mask = pad_tokens(rest, 0, "left", device)
    width = ids.shape[1]
    positions = skip + (mask.cumsum(-1) - 1).clamp_min(0)
    run: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    if prefix is not None:
        cache = DynamicCache(config=plain.config)
        for layer, (k, v) in enumerate(prefix.kv):
            cache.update(k.expand(len(prompts), -1, -1, -1).contiguous(), v.expand(len(prompts), -1, -1, -1).contiguous(), layer)
        run.update(attention_mask=torch.cat([mask.new_ones(len(prompts), skip), mask], dim=1), past_key_values=cache)
    outputs: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda m, a, out: outputs.append(layer_output(out)))
               for block in (decoder_layers(plain) if keep_hidden else [])]
    try:
        out = plain(**run)
    finally:
        for handle in handles:
            handle.remove()
    hidden = torch.stack(outputs, dim=1) if keep_hidden else None  # [batch, layer, width, d_model]
    logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    layers = out.past_key_values.layers

    def joined(own: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
        return own.clone() if shared is None else torch.cat([shared, own], dim=-2)

    states = []
    for j, p in enumerate(rest):
        at = skip + width - len(p)  # this row's first own position in the cache
        kv = [(joined(layer.keys[j:j + 1, :, at:], None if prefix is None else prefix.kv[i][0]),
               joined(layer.values[j:j + 1, :, at:], None if prefix is None else prefix.kv[i][1])) for i, layer in enumerate(layers)]
        own = None if hidden is None else hidden[j, :, width - len(p):]
        states.append(PromptState(kv=kv, next_logprobs=logprobs[j].clone(),
                                  hidden=None if own is None else joined(own, None if prefix is None else prefix.hidden)))
    return states


def length_batches(lengths: Sequence[int], batch_size: int, max_pad_share: float = MAX_PAD_SHARE) -> list[list[int]]:
    """Indices of ``lengths`` grouped longest first into batches of at most ``batch_size`` whose padding to their
    longest member stays within ``max_pad_share`` of their tokens (a lone row is always its own batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    total = 0
    for i in order:
        if batches and len(batches[-1]) < batch_size:
            width = lengths[batches[-1][0]]
            if width * (len(batches[-1]) + 1) - (total + lengths[i]) <= max_pad_share * (total + lengths[i]):
                batches[-1].append(i)
                total += lengths[i]
                continue
        batches.append([i])
        total = lengths[i]
    return batches


def usable_start(start: LayerStart | None, response: Sequence[int]) -> int:
    """The layer a response can be scored from with ``start`` (0: from the embeddings): ``start`` must have been
    recorded for these very tokens (the response's ids are its tokens, or the first of them)."""
    if start is None or not response or tuple(response) != tuple(start.tokens[: len(response)]):
        return 0
    if start.logprobs is not None:
        return int(start.layer) if start.logprobs.shape[0] >= len(response) else 0
    if start.hidden.shape[0] < len(response) - 1:
        return 0
    return int(start.layer)


@torch.no_grad()
def response_logprobs_cached(
    plain: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], states: PromptStates, batch_size: int,
    starts: Sequence[LayerStart | None] | None = None,
) -> list[list[float]]:
    """``log p(response token | prompt, earlier response tokens)`` for every token of each (prompt ids, response
    ids) pair, on the prompts' cached states; an empty response gives ``[]``.

    ``starts``: per pair, the unsteered residual stream a steered decode computed for the response's tokens
    (:class:`~.from_layer.LayerStart`); that pair's layers before ``start.layer`` are not run
    again, and an unsteered decode's own log-probabilities are taken as they are. A start recorded for other
    tokens is ignored."""
    from transformers import DynamicCache

    device = next(plain.parameters()).device
    out: list[list[float]] = [[] for _ in pairs]
    layer_of = {i: usable_start(starts[i] if starts is not None else None, r) for i, (_, r) in enumerate(pairs) if r}
    for i in list(layer_of):  # decoded unsteered: the decode's own log-probabilities are the scores
        if layer_of[i] and starts[i].logprobs is not None:
            out[i] = starts[i].logprobs[: len(pairs[i][1])].tolist()
            del layer_of[i]
            states.resumed += 1
    scored = list(layer_of)
    states.fill(plain, [pairs[i][0] for i in scored], batch_size)
    batches = []
    for start_layer in sorted(set(layer_of.values())):
        group = [i for i in scored if layer_of[i] == start_layer]
        batches += [(start_layer, [group[j] for j in batch]) for batch in length_batches([len(pairs[i][1]) for i in group], batch_size)]
    states.resumed += sum(1 for layer in layer_of.values() if layer)
    for first_layer, idx in batches:
        prompts = [states.get(plain, pairs[i][0]) for i in idx]
        responses = [list(pairs[i][1]) for i in idx]
        width = max(s.length for s in prompts)
        r_width = max(len(r) for r in responses)
        n = len(idx)
        mask = torch.zeros(n, width + r_width, dtype=torch.long, device=device)
        ids = torch.zeros(n, r_width, dtype=torch.long, device=device)
        positions = torch.zeros(n, r_width, dtype=torch.long, device=device)
        for j, (state, resp) in enumerate(zip(prompts, responses)):
            mask[j, width - state.length : width + len(resp)] = 1
            ids[j, : len(resp)] = torch.tensor(resp, device=device)
            positions[j] = state.length + torch.arange(r_width, device=device)
        first = torch.stack([s.next_logprobs for s in prompts])  # [n, vocab]
        first = first.gather(1, ids[:, :1])[:, 0]
        rest = torch.zeros(n, max(r_width - 1, 0), device=device)
        if r_width > 1:
            cache = DynamicCache(config=plain.config)
            for layer in range(len(prompts[0].kv)):
                keys = [_left_pad(s.kv[layer][0], width) for s in prompts]
                values = [_left_pad(s.kv[layer][1], width) for s in prompts]
                cache.update(torch.cat(keys), torch.cat(values), layer)
            keep = torch.arange(r_width - 1, device=device)
            with _started(plain, first_layer, [starts[i] for i in idx] if first_layer else [], r_width):
                logits = plain(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                               use_cache=True, logits_to_keep=keep).logits.float()
            rest = logits.gather(-1, ids[:, 1:, None])[..., 0] - torch.logsumexp(logits, dim=-1)
        for j, (i, resp) in enumerate(zip(idx, responses)):
            out[i] = [float(first[j])] + rest[j, : len(resp) - 1].tolist()
    return out


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """``[1, heads, length, d]`` padded with zeros on the left of the positions to ``width``."""
    if x.shape[2] == width:
        return x
    return torch.cat([x.new_zeros(x.shape[0], x.shape[1], width - x.shape[2], x.shape[3]), x], dim=2)


def _started(plain: Any, layer: int, starts: Sequence[LayerStart], width: int):
    """Run from ``layer`` on the starts' hidden states (right-padded with zeros to ``width`` positions; the last
    position of each response is never an input that is scored), or from the embeddings when ``layer`` is 0."""
    if not layer:
        return contextlib.nullcontext()
    first = starts[0].hidden
    hidden = first.new_zeros(len(starts), width, first.shape[-1])
    for j, start in enumerate(starts):
        n = min(width - 1, start.hidden.shape[0])
        hidden[j, :n] = start.hidden[:n]
    return from_layer(plain, layer, hidden)
