"""Steer a plain ``transformers`` causal LM (no TransformerLens) with a saved direction.

The hooks sit on the decoder layers: ``resid_post`` of block L is the output of
``model.layers[L]`` (the same tensor TransformerLens calls ``blocks.L.hook_resid_post``), and
``resid_pre`` of block L is that layer's input. The arithmetic is :meth:`SteeringSpec.apply`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..directions import Direction, LayerDirection
from ..errors import SteeringError, WorkbenchError
from ..models.plain import decoder_layers, layer_input, layer_output, with_layer_input, with_layer_output
from .rows import RowSteering
from .spec import GenerationState, SteeringSpec, resolve_specs

def hidden_size(hf_model: Any) -> int:
    """Width of the residual stream from the model's config."""
    config = getattr(hf_model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    if size is None:
        raise WorkbenchError(f"cannot read hidden_size from the config of a {type(hf_model).__name__}")
    return int(size)


class _Positions:
    """Tells prompt from generated tokens inside one ``hf_steer`` block.

    The start of each forward pass comes from the KV cache length; the prompt length is given,
    or else taken from the first forward pass in the block (the prompt of a ``generate`` call).
    """

    def __init__(self, prompt_len: int | None) -> None:
        self.prompt_len = prompt_len

    def state(self, n_tokens: int, cache: Any, layer_idx: int, after_update: bool) -> GenerationState:
        start = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            cached = int(cache.get_seq_length(layer_idx))
            start = max(cached - n_tokens, 0) if after_update else cached
        if self.prompt_len is None:
            self.prompt_len = start + n_tokens
        return GenerationState(prompt_len=self.prompt_len, use_cache=True, start=start)


@contextlib.contextmanager
def hf_steer(
    hf_model: Any,
    *directions: Direction | LayerDirection | torch.Tensor | SteeringSpec,
    layer: int | None = None,
    coeff: float = 1.0,
    mode: str = "add",
    positions: str = "all",
    target: float | None = None,
    hook: str = "resid_post",
    prompt_len: int | None = None,
) -> Iterator[list[SteeringSpec]]:
    """Steer a plain ``transformers`` model inside the block, like :func:`workbench.steer`; hooks are removed on exit.

    ``positions="prompt"/"generated"`` splits at ``prompt_len`` (default: the length of the first
    forward pass in the block, i.e. the padded prompt of one ``generate`` call).
    """
    blocks = decoder_layers(hf_model)
    dtype = next((q.dtype for q in hf_model.parameters() if q.is_floating_point()), None)
    specs = resolve_specs(directions, len(blocks), hidden_size(hf_model), layer, coeff, mode, positions, target, hook, dtype=dtype)
    for spec in specs:
        if spec.hook not in ("resid_post", "resid_pre"):
            raise SteeringError(f"{spec.name}: hf_steer supports hook resid_post or resid_pre, not {spec.hook!r}")
    tracker = _Positions(prompt_len)

    def post_hook(spec: SteeringSpec):
        def fn(module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> Any:
            x = layer_output(output)
            state = None
            if spec.positions != "all":
                state = tracker.state(x.shape[1], kwargs.get("past_key_values"), spec.layer, after_update=True)
            return with_layer_output(output, spec.apply(x, state))

        return fn

    def pre_hook(spec: SteeringSpec):
        def fn(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            x = layer_input(args, kwargs)
            state = None
            if spec.positions != "all":
                state = tracker.state(x.shape[1], kwargs.get("past_key_values"), spec.layer, after_update=False)
            return with_layer_input(args, kwargs, spec.apply(x, state))

        return fn

    handles = []
    try:
        for spec in specs:
            block = blocks[spec.layer]
            if spec.hook == "resid_post":
                handles.append(block.register_forward_hook(post_hook(spec), with_kwargs=True))
            else:
                handles.append(block.register_forward_pre_hook(pre_hook(spec), with_kwargs=True))
        yield specs
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def hf_steer_rows(hf_model: Any, rows: RowSteering, prompt_len: int | None = None) -> Iterator[RowSteering]:
    """Per-row steering of a plain ``transformers`` model inside the block (batch row ``i`` gets ``rows.specs[i]``).

    The batch must have ``len(rows)`` rows; prompt and generated positions split as in :func:`hf_steer`.
    """
    blocks = decoder_layers(hf_model)
    tracker = _Positions(prompt_len)

    def in_prompt(n_tokens: int, kwargs: dict, layer: int, after_update: bool, device: torch.device) -> torch.Tensor:
        state = tracker.state(n_tokens, kwargs.get("past_key_values"), layer, after_update)
        return state.prompt_mask(n_tokens, device)

    def post_hook(layer: int):
        def fn(module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> Any:
            x = layer_output(output)
            return with_layer_output(output, rows.apply("resid_post", layer, x, in_prompt(x.shape[1], kwargs, layer, True, x.device)))

        return fn

    def pre_hook(layer: int):
        def fn(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            x = layer_input(args, kwargs)
            return with_layer_input(args, kwargs, rows.apply("resid_pre", layer, x, in_prompt(x.shape[1], kwargs, layer, False, x.device)))

        return fn

    handles = []
    try:
        for hook, layer in rows.sites():
            if hook not in ("resid_post", "resid_pre"):
                raise SteeringError(f"per-row steering supports hook resid_post or resid_pre, not {hook!r}")
            if hook == "resid_post":
                handles.append(blocks[layer].register_forward_hook(post_hook(layer), with_kwargs=True))
            else:
                handles.append(blocks[layer].register_forward_pre_hook(pre_hook(layer), with_kwargs=True))
        yield rows
    finally:
        for handle in handles:
            handle.remove()
