"""Decoding on a static KV cache with a ``torch.compile``d step: ``generate(..., backend="compiled")``.

Batch-1 decoding of a small model on a CPU spends a third of each token in Python and in
small tensor ops; compiling the one-token step fuses them. Steering lives in per-layer tensors
read by hooks that are part of the compiled graph, so new directions or strengths reuse the
compiled step. A new batch size, cache-length bucket or number of directions at one layer
compiles again (about 40 s for SmolLM2 on 2 CPU cores; later processes reuse inductor's cache).

The same decoder runs packed sweep batches uncompiled (``eager=True``): a cache sized to the call whose
attention reads only the positions written so far, ended rows dropped from the batch, each row's prompt pass
started from kept unsteered states at the first layer its steering changes, and each row's unsteered residual
stream at that layer recorded for scoring its perplexity from there (:class:`Capture`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int

from ..errors import WorkbenchError
from ..models.attention import use_sdpa_gqa
from ..models.plain import build_plain_model, decoder_layers, layer_input, layer_output, with_layer_input, with_layer_output
from ..steering.compiled import SteeringSlots
from ..steering.rows import PHASES
from ..steering.spec import SteeringSpec
from .from_layer import first_changed_layer, from_layer
from .prompt_states import window_fits

BUCKET = 128  # cache lengths are rounded up to a multiple of this, so prompts of similar length share a compile
STATES_BATCH = 32  # prompts run at a time to fill kept prompt states (each keeps every layer's output)
COMPACT_SHARE = 0.125  # eager decoding drops ended rows once they are this share of the batch (or one row)


def attend_to_written(cache: Any) -> None:
    """Make a static cache's full-attention layers hand attention only the positions written so far (in place).

    A static cache attends over its whole length at every step, unwritten positions masked out; for a
    128-token answer to a 60-token prompt that reads three times the keys and values the early steps need,
    and attention reads them from memory at every layer. The eager loop needs no fixed shapes, so its
    layers return the written prefix (and masks are sized to it); the compiled step keeps the fixed length."""
    from transformers.cache_utils import StaticLayer

    for layer in cache.layers:
        if type(layer) is StaticLayer:
            layer.__class__ = WrittenPrefixLayer


def _written_prefix_layer() -> type:
    from transformers.cache_utils import StaticLayer

    class WrittenPrefixLayer(StaticLayer):
        """A :class:`StaticLayer` whose ``update`` returns only the positions written so far."""

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            n = int(self.cumulative_length)
            return keys[:, :, :n], values[:, :, :n]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return int(self.get_seq_length()) + query_length, 0

    return WrittenPrefixLayer


WrittenPrefixLayer = _written_prefix_layer()


def select_cache_rows(cache: Any, rows: Int[torch.Tensor, "keep"]) -> None:
    """Keep only ``rows`` of a static KV cache's batch (in place), e.g. when other rows have ended."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
            layer.max_batch_size = len(rows)


def next_tokens(
    logits: Float[torch.Tensor, "batch vocab"], step: int, min_new_tokens: int, eos: torch.Tensor,
    done: torch.Tensor, pad: int, pick: Callable[[torch.Tensor], torch.Tensor],
) -> Int[torch.Tensor, "batch"]:
    """Each row's next token as ``transformers``' generate picks it: no EOS before ``min_new_tokens``,
    ``pad`` after the row's EOS; rows that end now are marked in ``done`` (in place)."""
    if step < min_new_tokens:
        logits[:, eos] = float("-inf")
    nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), pick(logits))
    done |= torch.isin(nxt, eos)
    return nxt


@dataclass
class Capture:
    """What an eager :meth:`StaticDecoder.generate` records for each row: the raw (unsteered) input of decoder
    layer ``layers[row]`` at every token fed back (``hidden[row, step]``: the token generated at ``step``);
    ``None``: nothing for that row. Used to score responses under the unsteered model from that layer on.
    For the rows ``scored`` (decoded with no steering at all) the decode *is* the unsteered model: the
    log-probability of each token it picked is the score itself (``logprobs[row, step]``)."""

    layers: Sequence[int | None]
    scored: Sequence[bool] = ()  # rows decoded unsteered: their tokens' log-probabilities are recorded instead
    hidden: Float[torch.Tensor, "batch new d_model"] | None = None
    logprobs: Float[torch.Tensor, "batch new"] | None = None  # log p(token) of the ``scored`` rows, per step
    step: int | None = None  # the decoding step being computed (None during the prompt)
    alive: torch.Tensor | None = None  # the original row of each row still decoding
    scored_mask: torch.Tensor | None = None  # ``scored`` as a tensor, set with ``logprobs``

    def scored_rows(self, alive: torch.Tensor) -> torch.Tensor | None:
        """Positions in the current batch (original rows ``alive``) of the rows whose log-probabilities are kept."""
        scored = self.scored_mask[alive]
        return scored.nonzero()[:, 0] if bool(scored.any()) else None


@contextlib.contextmanager
def capturing(blocks: torch.nn.ModuleList, capture: Capture, batch: int, max_new_tokens: int,
              d_model: int, dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Hooks that fill ``capture.hidden`` before any steering of the layer they watch runs (prepended)."""
    want = torch.tensor([-1 if k is None else int(k) for k in capture.layers], device=device)
    capture.hidden = torch.zeros(batch, max_new_tokens, d_model, dtype=dtype, device=device)
    if any(capture.scored):
        capture.logprobs = torch.zeros(batch, max_new_tokens, device=device)
        capture.scored_mask = torch.tensor(list(capture.scored), dtype=torch.bool, device=device)

    def watch(layer: int):
        def fn(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if capture.step is None:
                return
            sel = want[capture.alive] == layer + 1
            if bool(sel.any()):
                capture.hidden[capture.alive[sel], capture.step] = layer_output(output)[sel, -1].to(dtype)

        return fn

    handles = [blocks[k - 1].register_forward_hook(watch(k - 1), prepend=True)
               for k in sorted({int(k) for k in capture.layers if k is not None and k > 0})]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class StaticDecoder:
    """A weight-sharing plain model with permanent steering hooks, its compiled step and caches."""

    model: torch.nn.Module
    slots: SteeringSlots
    step: Callable[..., Any]
    caches: dict = field(default_factory=dict)  # one static KV cache per (batch, length), reused

    @classmethod
    def build(cls, bridge: Any) -> "StaticDecoder":
        plain = build_plain_model(bridge)
        ref = next(plain.parameters())
        if ref.device.type == "cpu":  # measured on CPU only (models/attention.py)
            use_sdpa_gqa(plain)
        blocks = decoder_layers(plain)
        d_model = int(bridge.cfg.d_model)
        slots = SteeringSlots(len(blocks), d_model, ref.dtype, ref.device)

        def post(layer: int):
            def fn(module: torch.nn.Module, args: tuple, output: Any) -> Any:
                if slots.tables["resid_post"]["a"].shape[1] == 0:
                    return None
                return with_layer_output(output, slots.apply("resid_post", layer, layer_output(output)))

            return fn

        def pre(layer: int):
            def fn(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
                if slots.tables["resid_pre"]["a"].shape[1] == 0:
                    return None
                return with_layer_input(args, kwargs, slots.apply("resid_pre", layer, layer_input(args, kwargs)))

            return fn

        for layer, block in enumerate(blocks):
            block.register_forward_hook(post(layer))
            block.register_forward_pre_hook(pre(layer), with_kwargs=True)
        step = torch.compile(plain.forward, dynamic=False)
        return cls(model=plain, slots=slots, step=step)

    @torch.no_grad()
    def generate(
        self,
        ids: Int[torch.Tensor, "batch prompt"],
        mask: Int[torch.Tensor, "batch prompt"],
        specs: Sequence[SteeringSpec] | Sequence[Sequence[SteeringSpec]],
        max_new_tokens: int,
        min_new_tokens: int,
        eos: list[int],
        pad: int,
        pick: Callable[[torch.Tensor], torch.Tensor],
        per_row: bool = False,
        eager: bool = False,
        capture: Capture | None = None,
        prompt_states: Any = None,
        states_model: Any = None,
    ) -> Int[torch.Tensor, "batch total"]:
        """Prompt plus new tokens, each row padded with ``pad`` after its EOS (as ``transformers``' generate).

        ``specs``: one list for every row, or one list per row (``per_row=True``: rows of a packed batch).
        ``eager``: run the step uncompiled on a cache sized to this call, and drop the rows that have ended
        from the batch as they end (:data:`COMPACT_SHARE`), so a batch whose rows end at different lengths
        does not keep decoding finished rows. Needs a ``pick`` that treats rows alike (greedy): the rows a
        step computes change. ``capture`` (eager only): record each row's unsteered input to a layer at every
        token fed back (:class:`Capture`). ``prompt_states`` (eager, per row): a
        :class:`~.prompt_states.PromptStates` keeping hidden states, run on ``states_model``
        (the unsteered plain model): each row's prompt pass starts at the first layer its steering changes."""
        args = (ids, mask, specs, max_new_tokens, min_new_tokens, eos, pad, pick, per_row, eager, capture,
                prompt_states, states_model)
        if capture is None:
            return self._generate(*args)
        if not eager:
            raise WorkbenchError("StaticDecoder.generate: capture needs eager=True")
        ref = next(self.model.parameters())
        with capturing(decoder_layers(self.model), capture, ids.shape[0], max_new_tokens, self.slots.d_model,
                       ref.dtype, ids.device):
            return self._generate(*args)

    def _generate(self, ids, mask, specs, max_new_tokens, min_new_tokens, eos, pad, pick, per_row, eager, capture,
                  prompt_states, states_model):
        from transformers import StaticCache

        batch, prompt_len = ids.shape
        if eager:
            length = prompt_len + max_new_tokens
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            attend_to_written(cache)
        else:
            length = -(-(prompt_len + max_new_tokens) // BUCKET) * BUCKET
            cache = self.caches.get((batch, length))
            if cache is None:
                cache = self.caches[(batch, length)] = StaticCache(config=self.model.config, max_cache_len=length)
            else:
                cache.reset()
        full_mask = torch.ones(batch, length, dtype=mask.dtype, device=mask.device)
        full_mask[:, :prompt_len] = mask
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        next_pos = positions[:, -1:] + 1
        eos_t = torch.tensor(eos, device=ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=ids.device)
        alive = torch.arange(batch, device=ids.device)  # the original row of each row still decoding
        rows = list(specs) if per_row else [specs]
        if prompt_states is not None and eager and per_row and window_fits(self.model, length):
            logits = self._prefill_from_states(prompt_states, states_model, ids, mask, positions, rows, cache)
        else:
            self.slots.load_rows(rows, "prompt")
            logits = self.model(
                input_ids=ids, attention_mask=full_mask, position_ids=positions,
                cache_position=torch.arange(prompt_len, device=ids.device), past_key_values=cache,
                use_cache=True, logits_to_keep=1,
            ).logits[:, -1]
        self.slots.load_rows(rows, "generated")
        n_steps = 0
        for step in range(max_new_tokens):
            scored = None
            if capture is not None and capture.logprobs is not None:
                scored = capture.scored_rows(alive)
                if scored is not None:  # before next_tokens masks EOS: the model's own distribution
                    logp = torch.log_softmax(logits[scored].float(), dim=-1)
            nxt = next_tokens(logits, step, min_new_tokens, eos_t, done, pad, pick)
            if scored is not None:
                capture.logprobs[alive[scored], step] = logp.gather(1, nxt[scored][:, None])[:, 0].to(capture.logprobs.dtype)
            tokens[alive, step] = nxt
            n_steps = step + 1
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if eager and int(done.sum()) >= max(1, COMPACT_SHARE * len(alive)):
                keep = (~done).nonzero()[:, 0]
                alive, done, nxt, full_mask, next_pos = alive[keep], done[keep], nxt[keep], full_mask[keep], next_pos[keep]
                select_cache_rows(cache, keep)
                self.slots.select_rows(keep)
            if capture is not None:
                capture.step, capture.alive = step, alive
            position = torch.tensor([prompt_len + step], device=ids.device)
            inputs = dict(input_ids=nxt[:, None], attention_mask=full_mask, position_ids=next_pos + step,
                          cache_position=position, past_key_values=cache)
            if eager:
                logits = self.model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1]
            else:
                logits = self._step(**inputs).logits[:, -1]
        if capture is not None:
            capture.step = capture.alive = None
        return torch.cat([ids, tokens[:, :n_steps]], dim=1)

    def _prefill_from_states(self, states: Any, plain: Any, ids: torch.Tensor, mask: torch.Tensor,
                             positions: torch.Tensor, rows: Sequence[Sequence[SteeringSpec]], cache: Any) -> torch.Tensor:
        """The prompt pass of a packed batch, each row from the first layer its prompt steering changes: the
        layers before it, unsteered, come from ``states`` (each prompt run once, :class:`PromptStates`), so rows
        of many sweep cells sharing a prompt do not run those layers again. Fills ``cache``; returns the last
        position's logits ``[batch, vocab]``."""
        from transformers import DynamicCache

        n_layers = len(decoder_layers(self.model))
        batch, width = ids.shape
        lengths = mask.sum(-1).tolist()
        keys = [tuple(ids[j, width - lengths[j]:].tolist()) for j in range(batch)]
        states.fill(plain, keys, STATES_BATCH)
        found = [states.get(plain, key) for key in keys]
        groups: dict[int, list[int]] = {}
        for j, row in enumerate(rows):
            first = first_changed_layer([s for s in row if s.positions in PHASES["prompt"]])
            groups.setdefault(n_layers if first is None else first, []).append(j)
        kv = [tuple(t.new_zeros(batch, t.shape[1], width, t.shape[3]) for t in found[0].kv[layer]) for layer in range(n_layers)]
        logits = None
        for first, group in sorted(groups.items()):
            for layer in range(first):
                for j in group:
                    kv[layer][0][j, :, width - lengths[j]:] = found[j].kv[layer][0][0]
                    kv[layer][1][j, :, width - lengths[j]:] = found[j].kv[layer][1][0]
            self.slots.load_rows([rows[j] for j in group], "prompt")
            at = torch.tensor(group, device=ids.device)
            run = dict(input_ids=ids[at], attention_mask=mask[at], position_ids=positions[at],
                       past_key_values=DynamicCache(config=self.model.config), use_cache=True, logits_to_keep=1)
            if first == 0:
                out = self.model(**run)
            else:
                hidden = found[0].hidden.new_zeros(len(group), width, found[0].hidden.shape[-1])
                for i, j in enumerate(group):
                    hidden[i, width - lengths[j]:] = found[j].hidden[first - 1]
                hidden = self.slots.apply("resid_post", first - 1, hidden)  # the skipped layer's own steering
                with from_layer(self.model, first, hidden):
                    out = self.model(**run)
            for layer in range(first, n_layers):
                kv[layer][0][at] = out.past_key_values.layers[layer].keys
                kv[layer][1][at] = out.past_key_values.layers[layer].values
            if logits is None:
                logits = out.logits.new_zeros(batch, out.logits.shape[-1])
            logits[at] = out.logits[:, -1]
        for layer, (k, v) in enumerate(kv):
            cache.update(k, v, layer)
        return logits

    def _step(self, **inputs: Any) -> Any:
        # a compile per batch size, length bucket and slot count: allow more than dynamo's default 8
        with torch._dynamo.config.patch(recompile_limit=64):
            try:
                result = self.step(**inputs, use_cache=True, logits_to_keep=1)
            except torch._dynamo.exc.TorchDynamoException as exc:
                raise WorkbenchError(
                    f"backend='compiled' could not compile the decoding step on this machine ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); use backend='plain'"
                ) from exc
        return result


def static_decoder_for(model: Any) -> StaticDecoder:
    """The loaded model's static decoder, built on first use."""
    from ..models.loading import model_info

    info = model_info(model)
    if info.static_decoder is None:
        info.static_decoder = StaticDecoder.build(model)
    return info.static_decoder
