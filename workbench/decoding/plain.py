"""KV-cached decoding on plain ``transformers`` layers: ``transformers``' ``generate`` on the model that shares the
bridge's weights (:func:`~workbench.models.plain.plain_model_for`), with the open ``steer`` blocks' specs and the batch's
per-row steering re-applied as forward hooks on its decoder layers (:func:`~workbench.steering.plain.hf_steer`).
The default path of ``generate``: the bridge's wrappers cost time per token, these layers do not."""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from jaxtyping import Int

from ..steering.plain import hf_steer, hf_steer_rows
from .capture import Capture
from .engine import Batch, Engine


class PlainEngine(Engine):
    """``transformers``' ``generate`` on the weight-sharing plain model, steered by hooks on its decoder layers."""

    name: ClassVar[str] = "plain"

    def __init__(self, plain: torch.nn.Module) -> None:
        self.plain = plain

    def decode(self, batch: Batch, capture: Capture | None = None) -> Int[torch.Tensor, "batch total"]:
        with contextlib.ExitStack() as stack:
            if batch.active:
                stack.enter_context(hf_steer(self.plain, *batch.active, prompt_len=batch.prompt_len))
            if batch.rows is not None:
                stack.enter_context(hf_steer_rows(self.plain, batch.rows, prompt_len=batch.prompt_len))
            return self.plain.generate(**batch.generate_kwargs())
