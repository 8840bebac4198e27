"""Decoding on a static KV cache in the workbench's own loop: the weight-sharing model it runs (:class:`StaticModel`)
and the eager engine that packed sweep batches decode with (``generate(..., row_steering=...)``, greedy).

:class:`StaticModel` is a plain ``transformers`` model sharing the bridge's weights, with steering hooks that read
per-layer slot tensors (:class:`~workbench.steering.compiled.SteeringSlots`) permanently attached, so new directions
or strengths need no new hooks (and no new compile for :mod:`.compiled`). It is built once per loaded model.

:class:`EagerEngine` runs its step uncompiled: a cache sized to the call whose attention reads only the positions
written so far, ended rows dropped from the batch (``compacts``), each row's prompt pass started from kept unsteered
states at the first layer its steering changes (:class:`~.prompt_states.PromptStates`), and each row's unsteered
residual stream at that layer recorded for scoring its perplexity from there (``records``, :class:`~.capture.Capture`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from jaxtyping import Float, Int

from ..models.attention import use_sdpa_gqa
from ..models.plain import build_plain_model, decoder_layers, layer_input, layer_output, with_layer_input, with_layer_output
from ..steering.compiled import SteeringSlots
from ..steering.rows import PHASES
from ..steering.spec import SteeringSpec
from .capture import Capture, capturing
from .engine import Batch, StepEngine
from .from_layer import first_changed_layer, from_layer
from .prompt_states import PromptStates, window_fits

STATES_BATCH = 32  # prompts run at a time to fill kept prompt states (each keeps every layer's output)


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


@dataclass
class StaticModel:
    """A weight-sharing plain model with permanent steering hooks reading :attr:`slots`; the compiled step and its
    static caches (one per batch size and length bucket, reused) are kept here too (:mod:`.compiled`)."""

    model: torch.nn.Module
    slots: SteeringSlots
    compiled: Callable[..., Any] | None = None  # ``torch.compile``d forward, made on first use
    caches: dict = field(default_factory=dict)

    @classmethod
    def build(cls, bridge: Any) -> "StaticModel":
        plain = build_plain_model(bridge)
        ref = next(plain.parameters())
        if ref.device.type == "cpu":  # measured on CPU only (models/attention.py)
            use_sdpa_gqa(plain)
        blocks = decoder_layers(plain)
        slots = SteeringSlots(len(blocks), int(bridge.cfg.d_model), ref.dtype, ref.device)

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
        return cls(model=plain, slots=slots)


def static_model_for(model: Any) -> StaticModel:
    """The loaded model's static model, built on first use."""
    from ..models.loading import model_info

    info = model_info(model)
    if info.static_decoder is None:
        info.static_decoder = StaticModel.build(model)
    return info.static_decoder


class StaticEngine(StepEngine):
    """Prefill and steps on a :class:`StaticModel`'s static cache; subclasses choose the cache and run the step."""

    def __init__(self, static: StaticModel) -> None:
        self.static = static

    @abstractmethod
    def _cache(self, batch: Batch, prompt_len: int, max_new_tokens: int) -> tuple[Any, int]:
        """The static cache this batch decodes into, and its length."""

    @abstractmethod
    def _forward(self, **inputs: Any) -> Any:
        """One decoding step's forward pass."""

    def _row_specs(self, batch: Batch) -> list[Sequence[SteeringSpec]]:
        """The slot rows to load: one list per row, or one list for every row (no per-row steering)."""
        return batch.row_specs() if batch.rows is not None else [list(batch.active)]

    def _prompt_pass(self, batch: Batch, rows: list[Sequence[SteeringSpec]], positions: torch.Tensor) -> torch.Tensor:
        self.static.slots.load_rows(rows, "prompt")
        return self.static.model(
            input_ids=batch.ids, attention_mask=self.full_mask, position_ids=positions,
            cache_position=torch.arange(batch.prompt_len, device=batch.ids.device), past_key_values=self.cache,
            use_cache=True, logits_to_keep=1,
        ).logits[:, -1]

    def prefill(self, batch: Batch) -> Float[torch.Tensor, "batch vocab"]:
        ids, mask = batch.ids, batch.mask
        n_rows, prompt_len = ids.shape
        self.cache, length = self._cache(batch, prompt_len, batch.max_new_tokens)
        self.length, self.prompt_len = length, prompt_len
        self.full_mask = torch.ones(n_rows, length, dtype=mask.dtype, device=mask.device)
        self.full_mask[:, :prompt_len] = mask
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        self.next_pos = positions[:, -1:] + 1
        rows = self._row_specs(batch)
        logits = self._prompt_pass(batch, rows, positions)
        self.static.slots.load_rows(rows, "generated")
        return logits

    def step(self, tokens: Int[torch.Tensor, "live"], step: int) -> Float[torch.Tensor, "live vocab"]:
        position = torch.tensor([self.prompt_len + step], device=tokens.device)
        return self._forward(input_ids=tokens[:, None], attention_mask=self.full_mask, position_ids=self.next_pos + step,
                             cache_position=position, past_key_values=self.cache).logits[:, -1]


class EagerEngine(StaticEngine):
    """The static-cache loop uncompiled, for packed per-row batches decoded greedily (see the module docstring).

    ``states``: kept prompt states with hidden states (:class:`~.prompt_states.PromptStates`, ``keep_hidden``), run on
    ``states_model`` (the unsteered plain model); each row's prompt pass then starts at the first layer its steering
    changes. Needs a token choice that treats rows alike (greedy): the rows a step computes change."""

    name: ClassVar[str] = "eager"
    compacts: ClassVar[bool] = True
    records: ClassVar[bool] = True

    def __init__(self, static: StaticModel, states: PromptStates | None = None, states_model: Any = None) -> None:
        super().__init__(static)
        self.states, self.states_model = states, states_model

    def decode(self, batch: Batch, capture: Capture | None = None) -> Int[torch.Tensor, "batch total"]:
        if capture is None:
            return super().decode(batch)
        ref = next(self.static.model.parameters())
        with capturing(decoder_layers(self.static.model), capture, batch.ids.shape[0], batch.max_new_tokens,
                       self.static.slots.d_model, ref.dtype, batch.ids.device):
            return super().decode(batch, capture)

    def _cache(self, batch: Batch, prompt_len: int, max_new_tokens: int) -> tuple[Any, int]:
        from transformers import StaticCache

        length = prompt_len + max_new_tokens
        cache = StaticCache(config=self.static.model.config, max_cache_len=length)
        attend_to_written(cache)
        return cache, length

    def _prompt_pass(self, batch: Batch, rows: list[Sequence[SteeringSpec]], positions: torch.Tensor) -> torch.Tensor:
        if self.states is not None and batch.rows is not None and window_fits(self.static.model, self.length):
            return self._prefill_from_states(batch.ids, batch.mask, positions, rows)
        return super()._prompt_pass(batch, rows, positions)

    def _forward(self, **inputs: Any) -> Any:
        return self.static.model(**inputs, use_cache=True, logits_to_keep=1)

    def keep_rows(self, keep: Int[torch.Tensor, "keep"]) -> None:
        self.full_mask, self.next_pos = self.full_mask[keep], self.next_pos[keep]
        select_cache_rows(self.cache, keep)
        self.static.slots.select_rows(keep)

    def _prefill_from_states(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                             rows: Sequence[Sequence[SteeringSpec]]) -> torch.Tensor:
        """The prompt pass of a packed batch, each row from the first layer its prompt steering changes: the
        layers before it, unsteered, come from the kept states (each prompt run once), so rows of many sweep cells
        sharing a prompt do not run those layers again. Fills the cache; returns the last position's logits."""
        from transformers import DynamicCache

        model, states, plain = self.static.model, self.states, self.states_model
        n_layers = len(decoder_layers(model))
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
            self.static.slots.load_rows([rows[j] for j in group], "prompt")
            at = torch.tensor(group, device=ids.device)
            run = dict(input_ids=ids[at], attention_mask=mask[at], position_ids=positions[at],
                       past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
            if first == 0:
                out = model(**run)
            else:
                hidden = found[0].hidden.new_zeros(len(group), width, found[0].hidden.shape[-1])
                for i, j in enumerate(group):
                    hidden[i, width - lengths[j]:] = found[j].hidden[first - 1]
                hidden = self.static.slots.apply("resid_post", first - 1, hidden)  # the skipped layer's own steering
                with from_layer(model, first, hidden):
                    out = model(**run)
            for layer in range(first, n_layers):
                kv[layer][0][at] = out.past_key_values.layers[layer].keys
                kv[layer][1][at] = out.past_key_values.layers[layer].values
            if logits is None:
                logits = out.logits.new_zeros(batch, out.logits.shape[-1])
            logits[at] = out.logits[:, -1]
        for layer, (k, v) in enumerate(kv):
            self.cache.update(k, v, layer)
        return logits
