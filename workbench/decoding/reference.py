"""The reference loop: re-run the whole sequence through the TransformerLens bridge for every new token (the paper
code's approach; slow but simple, and the yardstick every other engine's greedy tokens are tested against)."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int

from ..steering.bridge import steer_rows
from .bridge import generation_state
from .capture import Capture
from .engine import Batch, StepEngine


class ReferenceEngine(StepEngine):
    """No KV cache: ``prefill`` and every ``step`` run the full (growing) sequence, steered by the bridge's hooks."""

    name: ClassVar[str] = "reference"

    def __init__(self, model: Any) -> None:
        self.model = model

    def decode(self, batch: Batch, capture: Capture | None = None) -> Int[torch.Tensor, "batch total"]:
        with generation_state(self.model, batch.prompt_len, use_cache=False), (
            steer_rows(self.model, batch.rows) if batch.rows is not None else contextlib.nullcontext()
        ):
            return super().decode(batch, capture)

    def prefill(self, batch: Batch) -> Float[torch.Tensor, "batch vocab"]:
        self.ids, self.mask = batch.ids, batch.mask
        return self._last_logits()

    def step(self, tokens: Int[torch.Tensor, "batch"], step: int) -> Float[torch.Tensor, "batch vocab"]:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self._last_logits()

    def _last_logits(self) -> Float[torch.Tensor, "batch vocab"]:
        position_ids = (self.mask.cumsum(-1) - 1).clamp_min(0)
        return self.model(self.ids, attention_mask=self.mask, position_ids=position_ids, return_type="logits")[:, -1]
