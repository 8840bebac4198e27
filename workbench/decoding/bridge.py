"""KV-cached decoding through the TransformerLens bridge: ``transformers``' ``generate`` on the bridge's model, so
every hook on the bridge runs (``resid_mid`` steering, hooks added by hand); ``generate(..., backend="bridge")``.

:func:`generation_state` tells the bridge's steering hooks which positions are prompt and which generated
(:class:`~workbench.steering.spec.GenerationState`); the reference loop (:mod:`.reference`) uses it too."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator

import torch
from jaxtyping import Int

from ..hooks import forward_hooks
from ..models.loading import model_info
from ..steering.bridge import steer_rows
from ..steering.spec import GenerationState
from .capture import Capture
from .engine import Batch, Engine


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


class BridgeEngine(Engine):
    """``transformers``' ``generate`` with a KV cache on the bridge, its per-row steering on bridge hooks."""

    name: ClassVar[str] = "bridge"

    def __init__(self, model: Any) -> None:
        self.model = model

    def decode(self, batch: Batch, capture: Capture | None = None) -> Int[torch.Tensor, "batch total"]:
        with generation_state(self.model, batch.prompt_len, use_cache=True), (
            steer_rows(self.model, batch.rows) if batch.rows is not None else contextlib.nullcontext()
        ):
            return self.model.original_model.generate(**batch.generate_kwargs())
