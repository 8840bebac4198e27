"""The compiled static step: ``generate(..., backend="compiled")``.

Batch-1 decoding of a small model on a CPU spends a third of each token in Python and in small tensor ops; compiling
the one-token step fuses them. Steering lives in per-layer tensors read by hooks that are part of the compiled graph
(:class:`~.static.StaticModel`), so new directions or strengths reuse the compiled step. A new batch size, cache-length
bucket or number of directions at one layer compiles again (about 40 s for SmolLM2 on 2 CPU cores; later processes
reuse inductor's cache). The cache keeps a fixed length (a multiple of :data:`BUCKET`) and every row decodes to the
end, so the shapes the step sees do not change within a call.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import WorkbenchError
from .engine import Batch
from .static import StaticEngine

BUCKET = 128  # cache lengths are rounded up to a multiple of this, so prompts of similar length share a compile


class CompiledEngine(StaticEngine):
    """The static-cache loop with a ``torch.compile``d step on a reused, bucketed cache (any token choice)."""

    name: ClassVar[str] = "compiled"

    def _cache(self, batch: Batch, prompt_len: int, max_new_tokens: int) -> tuple[Any, int]:
        from transformers import StaticCache

        length = -(-(prompt_len + max_new_tokens) // BUCKET) * BUCKET
        key = (int(batch.ids.shape[0]), length)
        cache = self.static.caches.get(key)
        if cache is None:
            cache = self.static.caches[key] = StaticCache(config=self.static.model.config, max_cache_len=length)
        else:
            cache.reset()
        return cache, length

    def _forward(self, **inputs: Any) -> Any:
        if self.static.compiled is None:
            self.static.compiled = torch.compile(self.static.model.forward, dynamic=False)
        # a compile per batch size, length bucket and slot count: allow more than dynamo's default 8
        with torch._dynamo.config.patch(recompile_limit=64):
            try:
                return self.static.compiled(**inputs, use_cache=True, logits_to_keep=1)
            except torch._dynamo.exc.TorchDynamoException as exc:
                raise WorkbenchError(
                    f"backend='compiled' could not compile the decoding step on this machine ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); use backend='plain'"
                ) from exc
