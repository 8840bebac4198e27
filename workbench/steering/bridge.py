"""Steering through TransformerLens hooks on the bridge: the ``steer(...)`` context manager."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..directions import Direction, LayerDirection
from ..hooks import forward_hooks, hook_name
from .condition import Condition, ConditionalSteering, ConditionError, guard
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
    condition: Condition | None = None,
) -> Iterator[Any]:
    """Steer ``model`` inside the block; hooks are removed on exit, also on exceptions. Yields the specs.

    Each positional argument is a direction (combined with the keyword arguments) or a ready
    :class:`SteeringSpec`; several compose (applied in order at their layers).

    ``condition``: a :class:`~.condition.Condition`; ``generate`` then steers a row only if its own prompt satisfies it
    (decided once per row from its prompt, :mod:`.condition`), after the block's unconditional steering, and the block
    yields a :class:`~.condition.ConditionalSteering` whose ``last`` holds the decisions. Other forward passes inside
    such a block are refused.

    >>> with wb.steer(model, title, layer=26, mode="project"):
    ...     wb.generate(model, ["Write a poem."])
    """
    specs = resolve_specs(directions, int(model.cfg.n_layers), int(model.cfg.d_model), layer, coeff, mode, positions, target, hook,
                          dtype=getattr(model.cfg, "dtype", None))
    info = getattr(model, "workbench", None)
    if condition is not None:
        with _conditional(model, specs, condition) as block:
            yield block
        return

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


@contextlib.contextmanager
def _conditional(model: Any, specs: list[SteeringSpec], condition: Condition) -> Iterator[ConditionalSteering]:
    """Register a conditional block: ``generate`` applies it per row; a guard refuses every other forward pass."""
    if not isinstance(condition, Condition):
        raise ConditionError(f"condition must be a wb.Condition, got {type(condition).__name__}")
    condition.check(model)
    info = getattr(model, "workbench", None)
    if info is None:
        raise ConditionError("conditional steering needs a model loaded with wb.load_model")
    block = ConditionalSteering(list(specs), condition)
    info.conditional.append(block)
    try:
        with forward_hooks(model, [("hook_embed", guard(model))]):
            yield block
    finally:
        info.conditional[:] = [b for b in info.conditional if b is not block]
