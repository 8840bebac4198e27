"""The execution paths, named once: where generation and activation extraction can run.

``plain``: a plain ``transformers`` model sharing the bridge's weights (steering on its decoder layers);
``compiled``: that model on a static KV cache with a ``torch.compile``d step (generation only);
``bridge``: TransformerLens hooks; ``auto``: ``plain`` unless hooks are active that only the bridge runs.
"""

from __future__ import annotations

from ..errors import WorkbenchError

GENERATION_BACKENDS: tuple[str, ...] = ("auto", "plain", "compiled", "bridge")
EXTRACTION_BACKENDS: tuple[str, ...] = ("auto", "plain", "bridge")


def check_backend(backend: str, allowed: tuple[str, ...] = GENERATION_BACKENDS) -> str:
    """``backend`` if it is one of ``allowed``, else a one-line error naming the choices."""
    if backend not in allowed:
        raise WorkbenchError(f"unknown backend {backend!r}; choose one of {', '.join(allowed)}")
    return backend
