"""A plain ``transformers`` model that shares the bridge's weights, for fast KV-cached generation.

TransformerLens wraps every submodule of the Hugging Face model it loads; generating through
those wrappers costs time per token. This rebuilds the original module tree on the meta device
and points its parameters and buffers at the bridge's tensors, so no weight is copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import WorkbenchError

WRAPPER = "._original_component"
_LAYER_PATHS = ("model.layers", "layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def decoder_layers(hf_model: Any) -> torch.nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM (``model.layers`` for Llama-style models)."""
    for dotted in _LAYER_PATHS:
        obj = hf_model
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    raise WorkbenchError(
        f"cannot find the decoder layers of a {type(hf_model).__name__} (looked for {', '.join(_LAYER_PATHS)})"
    )


def layer_output(output: Any) -> torch.Tensor:
    """The hidden states a decoder layer returns (a tensor, or the first item of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise WorkbenchError(f"unexpected decoder-layer output of type {type(output).__name__}")


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states passed to a decoder layer (first positional argument or ``hidden_states=``)."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    raise WorkbenchError("cannot find the hidden states passed to the decoder layer")


def with_layer_output(output: Any, new: torch.Tensor) -> Any:
    """A decoder layer's output with its hidden states replaced by ``new`` (for forward hooks)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (new,) + tuple(output[1:])
    raise WorkbenchError(f"unexpected decoder-layer output of type {type(output).__name__}")


def with_layer_input(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    """A decoder layer's ``(args, kwargs)`` with the hidden states of :func:`layer_input` replaced (for pre-hooks)."""
    if args and isinstance(args[0], torch.Tensor):
        return (new,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _hf_name(name: str) -> str:
    return name.replace(WRAPPER, "")


def _set_tensor(root: torch.nn.Module, dotted: str, value: torch.Tensor, buffer: bool) -> None:
    owner_path, _, leaf = dotted.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    if buffer:
        persistent = leaf not in getattr(owner, "_non_persistent_buffers_set", set())
        owner.register_buffer(leaf, value, persistent=persistent)
    else:
        setattr(owner, leaf, value if isinstance(value, torch.nn.Parameter) else torch.nn.Parameter(value, requires_grad=False))


def needs_eager_attention(config: Any) -> bool:
    """Whether ``config`` uses something SDPA kernels cannot compute (attention-logit soft-capping)."""
    configs = [config, getattr(config, "text_config", None)]
    return any(getattr(c, "attn_logit_softcapping", None) is not None for c in configs if c is not None)


def build_plain_model(bridge: Any) -> torch.nn.Module:
    """The bridge's Hugging Face model as plain ``transformers`` modules over the same tensors."""
    original = bridge.original_model
    config = copy.deepcopy(original.config)
    # The bridge loads with eager attention (to expose attention patterns); generation needs no
    # pattern hooks, and SDPA decodes about 10% faster on SmolLM2 (CPU) with the same greedy tokens.
    # SDPA has no attention-logit soft-capping: a model with it (Gemma-2) stays on eager attention,
    # or plain generation and extraction would silently differ from the bridge.
    if getattr(type(original), "_supports_sdpa", False) and not needs_eager_attention(config):
        config._attn_implementation = "sdpa"
    with torch.device("meta"):
        plain = type(original)(config)
    wanted = {name for name, _ in plain.named_parameters(remove_duplicate=False)}
    shared = {_hf_name(n): p for n, p in original.named_parameters(remove_duplicate=False)}
    missing = wanted - set(shared)
    if missing:
        raise WorkbenchError(f"cannot rebuild a plain {type(original).__name__}: bridge lacks {sorted(missing)[:3]}")
    for name in wanted:
        _set_tensor(plain, name, shared[name], buffer=False)
    for name, buf in original.named_buffers(remove_duplicate=False):
        hf = _hf_name(name)
        try:
            plain.get_buffer(hf)
        except AttributeError:
            continue  # a buffer the bridge added (not part of the HF model)
        _set_tensor(plain, hf, buf, buffer=True)
    still_meta = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
    if still_meta:
        raise WorkbenchError(f"cannot rebuild a plain {type(original).__name__}: {still_meta[:3]} not shared")
    plain.generation_config = original.generation_config
    return plain.eval()


def plain_model_for(model: Any) -> torch.nn.Module | None:
    """The bridge's weight-sharing plain model when it can reproduce every hook now active, else None.

    Steering opened with :func:`workbench.steer` on ``resid_post``/``resid_pre`` can be re-applied
    to the decoder layers; any other hook (``resid_mid`` steering, hooks added by hand) only runs
    on the bridge. The plain model is built once per loaded model.
    """
    from .loading import bridge_hook_count, model_info

    info = model_info(model)
    specs = info.active_specs
    if any(spec.hook not in ("resid_post", "resid_pre") for spec in specs):
        return None
    if bridge_hook_count(model) != info.baseline_hooks + len(specs) + len(info.conditional):  # + one guard per block
        return None  # hooks we did not add: only the bridge path runs them
    if info.plain is None:
        plain = build_plain_model(model)
        if next(plain.parameters()).device.type == "cpu":  # grouped KV heads unrepeated (models/attention.py), CPU-measured
            from .attention import use_sdpa_gqa

            use_sdpa_gqa(plain)
        info.plain = plain
    return info.plain
