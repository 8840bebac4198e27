"""Options of ``workbench bench``, ``bench-sweep`` and ``gpu-check`` for any hardware, each checked before any model loads.

``--batches 1,16,64`` (the batch sizes measured), ``--dtype`` (refused where a tiny op in that dtype fails on the
device) and ``--twin NAME`` (a random-weight model at a real model's shape, :mod:`workbench.models.twins`).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from .cli_types import positive_int
from .errors import WorkbenchError
from .models.twins import DTYPES, SHAPES, check_shape, describe_twin, twin_folder

MAX_BATCH = 4096  # past this a batch size is a typo (and its KV cache would not fit any device)
FORCED_LENGTH = "forced to full length (min_new_tokens = max_new_tokens): every row decodes all its new tokens"


def batch_list(text: str) -> list[int]:
    """argparse type: ``"1,16,64"`` -> ``[1, 16, 64]``; empty, non-integer, < 1 or repeated sizes are refused."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(parts):
        raise argparse.ArgumentTypeError(f"expected batch sizes such as 1,16,64, got {text!r}")
    sizes = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an integer (use e.g. 1,16,64)") from None
        if not 1 <= value <= MAX_BATCH:
            raise argparse.ArgumentTypeError(f"a batch size must be 1..{MAX_BATCH}, got {value}")
        if value in sizes:
            raise argparse.ArgumentTypeError(f"batch size {value} is given twice")
        sizes.append(value)
    return sizes


def check_dtype(dtype: str | None, device: str | None) -> str:
    """``dtype`` (default float32) if ``device`` runs the bench's kinds of op in it, else a one-line error naming why.

    Decided by trying them on a tiny tensor (a linear layer, an RMS norm, causal attention, softmax, argmax,
    an embedding lookup): no table of what each device supports can be trusted across builds.
    """
    from .models.loading import check_device

    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise WorkbenchError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    device = check_device(device)
    dt = getattr(torch, dtype)
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(8, 8, generator=gen).to(device=device, dtype=dt)
        x = torch.nn.functional.embedding(torch.tensor([[0, 1, 2, 3]], device=device), w)
        h = torch.nn.functional.linear(x, w)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        q = h.view(1, 1, 4, 8)
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        torch.softmax(a.float(), -1).to(dt).argmax(-1).tolist()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise WorkbenchError(f"--dtype {dtype}: device {device} cannot run it ({first}); use --dtype float32") from None
    return dtype


def resolve_bench_model(model: str, twin: str | None, twin_layers: int | None, dtype: str | None, device: str | None,
                        say: Callable[[str], None] = print) -> tuple[str, dict[str, Any] | None]:
    """The model a bench loads: ``model`` itself, or the cached folder of ``twin`` (built once) and what to report of it.

    Call :func:`check_bench_options` first.
    """
    if twin is None:
        return model, None
    from .models.loading import check_device

    folder = twin_folder(twin, twin_layers, dtype or "float32", device=check_device(device), say=say)
    return str(folder), describe_twin(twin, twin_layers)


def check_bench_options(twin: str | None, twin_layers: int | None, dtype: str | None, device: str | None,
                        given: set[str] | None = None) -> None:
    """Everything about the options that can fail, checked before any model loads (one-line ``WorkbenchError``).

    ``given``: the flags given by hand (``args.given`` of :class:`workbench.arguments.RecordGiven`): ``--model`` and
    ``--twin`` together are refused.
    """
    if twin is not None and "model" in (given or ()):
        raise WorkbenchError("--twin builds the model to measure; --model names one: pass one of them")
    if twin is not None:
        check_shape(twin, twin_layers)
    elif twin_layers is not None:
        raise WorkbenchError("--twin-layers shortens a --twin; pass --twin NAME too")
    check_dtype(dtype, device)


def add_bench_options(p: argparse.ArgumentParser, batches: bool = True, defaults: str = "float32") -> None:
    """``--twin``, ``--twin-layers``, ``--dtype`` (and ``--batches``) on a bench subcommand's parser.

    ``defaults``: the help's words for the defaults of ``--dtype`` (and ``--twin``) when the command fills them in.
    """
    p.add_argument("--twin", choices=list(SHAPES), help="a random-weight model at this real model's shape instead of "
                   "--model (speed only): " + ", ".join(f"{k} ({v.real.split('/')[-1]})" for k, v in SHAPES.items()))
    p.add_argument("--twin-layers", type=positive_int, help="build the --twin with fewer layers (a quick check)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help=f"weights and activations (default {defaults}); refused "
                   "where the device cannot run it")
    if batches:
        p.add_argument("--batches", type=batch_list, default=[1, 16], help="batch sizes of the generation rows "
                       "(default 1,16)")
