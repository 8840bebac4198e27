"""Atomic file writing, safe tensor-file loading and the JSONL reader shared by every module that saves results."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DatasetError, VectorFileError, WorkbenchError


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any work starts, an output file path that is a folder or lies under a file.

    >>> check_output_file("title.safetensors")
    PosixPath('title.safetensors')
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise WorkbenchError(f"{flag}: give a file name")
    if path.is_dir():
        raise WorkbenchError(f"{flag} {path}: is a directory; give a file path such as {path / 'out.safetensors'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise WorkbenchError(f"{flag} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise WorkbenchError(f"{flag} {path}: cannot write in {parent}")
            break
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any work starts, an output folder path that is an existing file or lies under one."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == path else f"lies under {candidate}, which is a file"
                raise WorkbenchError(f"{flag} {path}: {what}; give a folder")
            if not os.access(candidate, os.W_OK):
                raise WorkbenchError(f"{flag} {path}: cannot write in {candidate}")
            break
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    An interruption leaves either the old file or the new one, never a half-written file. The
    file gets the permissions of an ordinary write (``0666`` less the umask), not ``mkstemp``'s 0600.
    """
    path = check_output_file(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(value: Any) -> Any:
    """A copy strict JSON can hold: NaN and infinities become ``None`` (jq and ``JSON.parse`` reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def strict_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)``: never writes ``NaN`` or ``Infinity``."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (non-finite numbers as null) to ``path`` atomically."""
    write_text_atomic(path, strict_dumps(obj, indent=2, sort_keys=False) + "\n")


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symlink at ``path`` (a planted link must not send a write outside the run folder)."""
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), mode)
    except OSError as exc:
        if os.path.islink(path):
            raise WorkbenchError(f"{path}: is a symbolic link; the workbench does not write through links "
                                 "(remove it)") from None
        raise WorkbenchError(f"{path}: cannot open ({exc.strerror})") from None


def refuse_symlink(path: str | os.PathLike) -> Path:
    """``path``, after refusing it in one line if it is a symbolic link (before a write to a fixed name)."""
    path = Path(path)
    if path.is_symlink():
        raise WorkbenchError(f"{path}: is a symbolic link; the workbench does not write through links (remove it)")
    return path


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Save tensors to a safetensors file atomically, with JSON-encoded metadata under one key."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"workbench": strict_dumps(metadata)})


FOREIGN_SUFFIXES = (".gguf", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz", ".pkl")


def _foreign_magic(path: Path) -> bool:
    """Whether a file starts like a GGUF, a torch zip archive or a pickle (other tools' vector files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    pickle = len(head) >= 3 and head[0] == 0x80 and head[1] in (2, 3, 4, 5) and head[2] != 0  # not a safetensors length
    return head.startswith((b"GGUF", b"PK\x03\x04")) or pickle


def _no_constant(name: str) -> Any:
    """``parse_constant`` for strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` are refused."""
    raise ValueError(name)


def load_tensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors`; ``kind`` must match ``metadata['kind']``.

    Any problem (missing, truncated, not safetensors, another kind of file) is a ``VectorFileError``.
    """
    path = Path(path)
    if path.is_dir():
        raise VectorFileError(f"{path}: is a directory, expected a {kind} file (.safetensors)")
    if not path.is_file():
        raise VectorFileError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        if path.suffix.lower() in FOREIGN_SUFFIXES or _foreign_magic(path):
            raise VectorFileError(
                f"{path}: a {path.suffix} file is not a workbench {kind} file; convert it first with "
                f"`workbench directions import {path} --out {path.with_suffix('.safetensors').name}`"
            ) from None
        raise VectorFileError(f"{path}: not a readable safetensors file ({exc})") from None
    if "workbench" not in raw_meta:
        raise VectorFileError(
            f"{path}: safetensors file has no workbench metadata (not written by workbench; "
            "`workbench directions import` converts other tools' vectors)"
        )
    try:
        metadata = json.loads(raw_meta["workbench"], parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise VectorFileError(f"{path}: corrupt workbench metadata ({exc})") from None
    except ValueError as exc:  # NaN, Infinity: not numbers a direction file may hold
        raise VectorFileError(f"{path}: workbench metadata holds {exc}, not a finite number (strict JSON)") from None
    if not isinstance(metadata, dict):
        raise VectorFileError(f"{path}: workbench metadata is a JSON {type(metadata).__name__}, expected an object")
    if metadata.get("kind") != kind:
        raise VectorFileError(f"{path}: holds {metadata.get('kind')!r}, expected {kind!r}")
    return tensors, metadata


@dataclass(frozen=True)
class JsonlLines:
    """What :func:`read_jsonl` read: the objects with their line numbers, and how the file ended."""

    records: list[tuple[int, dict[str, Any]]]  # (1-based line number, object) of every non-blank line kept
    data: bytes  # the file's bytes as read
    cut: int  # data[:cut] is the file's whole lines (each ends in a newline)
    unterminated: bool  # the last line holds more than whitespace but no newline (kept as the last record, or torn)
    torn: bool  # that last line did not parse and was dropped (``tolerate_torn_tail`` only)


def _jsonl_object(path: Path, lineno: int, raw: bytes) -> dict[str, Any]:
    """One line's JSON object; a ``DatasetError`` naming the file and line otherwise."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}:{lineno}: not UTF-8 (byte {exc.start} of the line)") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{lineno}: not JSON (line {lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}:{lineno}: a JSON {type(obj).__name__}, expected an object")
    return obj


def read_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> JsonlLines:
    """Read a JSONL file of objects; a bad line is a one-line ``DatasetError`` naming the file and line number.

    Lines are split at ``\\n`` only (a raw U+2028 inside a string stays in its record); blank lines are
    skipped. ``tolerate_torn_tail``: a last line without its newline that is not a JSON object (cut short
    by a killed writer) is dropped and reported as ``torn`` instead of raising; whole lines must still parse.

    >>> read_jsonl("results/smollm2/format/sweep.jsonl", tolerate_torn_tail=True).records[0]
    (1, {'key': '...', ...})
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a JSONL file")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file ({exc})") from None
    cut = data.rfind(b"\n") + 1  # everything before `cut` is whole lines
    records = [(n, _jsonl_object(path, n, raw)) for n, raw in enumerate(data[:cut].split(b"\n")[:-1], start=1) if raw.strip()]
    tail, torn = data[cut:], False
    if tail.strip():
        lineno = data[:cut].count(b"\n") + 1
        try:
            records.append((lineno, _jsonl_object(path, lineno, tail)))
        except DatasetError:
            if not tolerate_torn_tail:
                raise
            torn = True
    return JsonlLines(records, data, cut, bool(tail.strip()), torn)
