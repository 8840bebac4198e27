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


def _batches(n: int, batch_size: int) -> list[range]:
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


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
    k = 1 if last_k is None else int(last_k)
    formatter = model_info(model).formatter
    d_model = int(model.cfg.d_model)
    out = torch.empty(len(prompts), len(layers), k, d_model, dtype=torch.float32)
    names = [hook_name(layer, hook) for layer in layers]
    device = model.cfg.device
    bar = tqdm(total=len(prompts), desc=f"activations ({hook})", disable=not progress, unit="prompt")
    for idx in _batches(len(prompts), batch_size):
        ids, mask = formatter.encode([prompts[i] for i in idx], padding_side="right", formatted=formatted)
        lengths = mask.sum(1)
        if k > int(lengths.min()):
            raise ShapeError(f"last_k={k} is longer than the shortest prompt ({int(lengths.min())} tokens)")
        # positions [batch, k]: the last k real tokens of each row
        pos = lengths[:, None] - k + torch.arange(k)[None, :]
        rows = torch.arange(len(idx))[:, None]
        grabbed: dict[int, torch.Tensor] = {}

        def grab(slot: int):
            def fn(x: torch.Tensor) -> None:
                grabbed[slot] = x[rows, pos.to(x.device)].float().cpu()

            return fn

        with forward_hooks(model, [(n, grab(j)) for j, n in enumerate(names)]):
            model(ids.to(device), attention_mask=mask.to(device), return_type=None)
        for j in range(len(layers)):
            out[idx.start : idx.stop, j] = grabbed[j]
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
