"""Steering through TransformerLens hooks on the bridge: the ``steer(...)`` context manager."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..directions import Direction, LayerDirection
from ..hooks import forward_hooks, hook_name
from .rows import RowSteering
from .spec import SteeringSpec, resolve_specs


@contextlib.contextmanager
def steer(
    model: Any,
    *directions: Direction | LayerDirection | torch.Tensor | SteeringSpec,
    layer: int | None = None,
    coeff: float = 1.0,
    mode: str = "add",
    positions: str = "all",
    target: float | None = None,
    hook: str = "resid_post",
) -> Iterator[list[SteeringSpec]]:
    """Steer ``model`` inside the block; hooks are removed on exit, also on exceptions.

    Each positional argument is a direction (combined with the keyword arguments) or a ready
    :class:`SteeringSpec`; several compose (applied in order at their layers).
    """
    specs = resolve_specs(directions, int(model.cfg.n_layers), int(model.cfg.d_model), layer, coeff, mode, positions, target, hook,
                          dtype=getattr(model.cfg, "dtype", None))
    info = getattr(model, "workbench", None)

    def hook_fn(spec: SteeringSpec):
        def fn(x: torch.Tensor) -> torch.Tensor:
            state = getattr(info, "generation_state", None) if info is not None else None
            return spec.apply(x, state)

        return fn

    # generate() re-applies the active specs on a plain copy of the model for speed
    active = info.active_specs if info is not None else []
    active.extend(specs)
    try:
        with forward_hooks(model, [(hook_name(s.layer, s.hook), hook_fn(s)) for s in specs]):
            yield specs
    finally:
        for spec in specs:
            for i, other in enumerate(active):
                if other is spec:
                    del active[i]
                    break


@contextlib.contextmanager
def steer_rows(model: Any, rows: RowSteering) -> Iterator[RowSteering]:
    """Per-row steering through bridge hooks inside the block (batch row ``i`` gets ``rows.specs[i]``)."""
    info = getattr(model, "workbench", None)

    def hook_fn(hook: str, layer: int):
        def fn(x: torch.Tensor) -> torch.Tensor:
            state = getattr(info, "generation_state", None) if info is not None else None
            in_prompt = None if state is None else state.prompt_mask(x.shape[1], x.device)
            return rows.apply(hook, layer, x, in_prompt)

        return fn

    with forward_hooks(model, [(hook_name(layer, hook), hook_fn(hook, layer)) for hook, layer in rows.sites()]):
        yield rows
