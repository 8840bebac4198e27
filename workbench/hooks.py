"""Hook-point lookup and forward hooks that remove exactly what they added (never the user's hooks)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch

from .errors import LayerError, WorkbenchError

RESID_HOOKS = ("resid_pre", "resid_mid", "resid_post")


def n_layers(model: Any) -> int:
    """Number of transformer blocks."""
    return int(model.cfg.n_layers)


def check_layer(model: Any, layer: int) -> int:
    """Return ``layer`` if the model has it, else raise a ``LayerError`` naming the valid range."""
    n = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, (int,)) and not (
        isinstance(layer, torch.Tensor) and layer.numel() == 1
    ):
        raise LayerError(f"layer must be an integer, got {layer!r}")
    layer = int(layer)
    if not 0 <= layer < n:
        raise LayerError(f"layer {layer} is out of range: this model has layers 0..{n - 1}")
    return layer


def check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """All layers when ``layers`` is None, else the checked list."""
    if layers is None:
        return list(range(n_layers(model)))
    layers = [check_layer(model, layer) for layer in layers]
    if not layers:
        raise LayerError("no layers given")
    return layers


def hook_name(layer: int, hook: str = "resid_post") -> str:
    """TransformerLens name of a per-block hook, e.g. ``blocks.12.hook_resid_post``."""
    if hook not in RESID_HOOKS:
        raise WorkbenchError(f"unknown hook {hook!r}; choose one of {RESID_HOOKS}")
    return f"blocks.{layer}.hook_{hook}"


def hook_point(model: Any, name: str) -> torch.nn.Module:
    """The HookPoint module called ``name``."""
    try:
        return model.hook_dict[name]
    except KeyError:
        raise WorkbenchError(f"model has no hook point {name!r}") from None


@contextlib.contextmanager
def forward_hooks(model: Any, hooks: Sequence[tuple[str, Callable[[torch.Tensor], Any]]]) -> Iterator[None]:
    """Register ``fn(output) -> new output or None`` on named hook points; remove them on exit.

    Plain torch hook handles are used, so hooks the user added before stay in place.
    """
    handles = []
    try:
        for name, fn in hooks:
            point = hook_point(model, name)

            def wrapped(module: torch.nn.Module, inputs: Any, output: Any, fn=fn) -> Any:
                return fn(output)

            handles.append(point.register_forward_hook(wrapped))
        yield
    finally:
        for handle in handles:
            handle.remove()
