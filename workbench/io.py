"""Atomic file writing and safe tensor-file loading shared by every module that saves results."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import VectorFileError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    An interruption leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Save tensors to a safetensors file atomically, with JSON-encoded metadata under one key."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"workbench": json.dumps(metadata)})


def load_tensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors`; ``kind`` must match ``metadata['kind']``.

    Any problem (missing, truncated, not safetensors, another kind of file) is a ``VectorFileError``.
    """
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise VectorFileError(f"{path}: not a readable safetensors file ({exc})") from None
    if "workbench" not in raw_meta:
        raise VectorFileError(f"{path}: safetensors file has no workbench metadata (not written by workbench)")
    try:
        metadata = json.loads(raw_meta["workbench"])
    except json.JSONDecodeError as exc:
        raise VectorFileError(f"{path}: corrupt workbench metadata ({exc})") from None
    if metadata.get("kind") != kind:
        raise VectorFileError(f"{path}: holds {metadata.get('kind')!r}, expected {kind!r}")
    return tensors, metadata
