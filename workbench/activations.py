"""Batched last-token residual-stream activations, caching only the requested hooks and positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .errors import DatasetError, ShapeError, WorkbenchError
from .hooks import check_layers, forward_hooks, hook_name
from .io import load_tensors, save_tensors
from .models.loading import model_info


class _Done(Exception):
    """Raised by the hook of the deepest requested layer to end the forward pass early."""


@torch.no_grad()
def collect_activations(
    model: Any,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    last_k: int | None = None,
    batch_size: int = 16,
    formatted: bool = False,
    progress: bool = True,
) -> Float[torch.Tensor, "n_prompts n_layers *k d_model"]:
    """Run ``prompts`` (formatted with the model's prompt style) and keep the last token's activations.

    Returns ``[n_prompts, n_layers, d_model]``, or ``[n_prompts, n_layers, last_k, d_model]``
    when ``last_k`` is given. Batches are right-padded, so each prompt's real tokens see exactly
    what they would see alone.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise DatasetError("collect_activations: no prompts given")
    layers = check_layers(model, layers)
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    k = 1 if last_k is None else int(last_k)
    formatter = model_info(model).formatter
    d_model = int(model.cfg.d_model)
    out = torch.empty(len(prompts), len(layers), k, d_model, dtype=torch.float32)
    names = [hook_name(layer, hook) for layer in layers]
    last_name = hook_name(max(layers), hook)
    device = model.cfg.device
    # Tokenise once and batch prompts of similar length together (less padding); results go
    # back to the caller's order.
    all_ids, all_mask = formatter.encode(prompts, padding_side="right", formatted=formatted)
    all_lengths = all_mask.sum(1)
    if k > int(all_lengths.min()):
        raise ShapeError(f"last_k={k} is longer than the shortest prompt ({int(all_lengths.min())} tokens)")
    order = torch.argsort(all_lengths, stable=True)
    bar = tqdm(total=len(prompts), desc=f"activations ({hook})", disable=not progress, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        idx = order[start : start + batch_size]
        lengths = all_lengths[idx]
        width = int(lengths.max())
        ids, mask = all_ids[idx, :width], all_mask[idx, :width]
        # positions [batch, k]: the last k real tokens of each row
        pos = lengths[:, None] - k + torch.arange(k)[None, :]
        rows = torch.arange(len(idx))[:, None]
        grabbed: dict[int, torch.Tensor] = {}

        def grab(slot: int, name: str):
            def fn(x: torch.Tensor) -> None:
                grabbed[slot] = x[rows, pos.to(x.device)].float().cpu()
                if name == last_name:
                    raise _Done  # later blocks and the unembedding are not needed

            return fn

        try:
            with forward_hooks(model, [(n, grab(j, n)) for j, n in enumerate(names)]):
                model(ids.to(device), attention_mask=mask.to(device), return_type=None)
        except _Done:
            pass
        if len(grabbed) != len(layers):
            raise WorkbenchError(f"collect_activations: hooks {names} did not all run")
        for j in range(len(layers)):
            out[idx, j] = grabbed[j]
        bar.update(len(idx))
    bar.close()
    return out[:, :, 0] if last_k is None else out


def save_activations(path: str | Path, activations: torch.Tensor, **metadata: Any) -> None:
    """Save an activation tensor (atomically) with JSON-serialisable metadata."""
    save_tensors(path, {"activations": activations}, {"kind": "activations", **metadata})


def load_activations(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load activations saved by :func:`save_activations`: ``(tensor, metadata)``."""
    tensors, meta = load_tensors(path, "activations")
    if "activations" not in tensors:
        raise ShapeError(f"{path}: no 'activations' tensor")
    return tensors["activations"], meta
