"""File names derived from user text (an instruction id, a keyword, a model name): safe characters, bounded length."""

from __future__ import annotations

import hashlib
import re

# Well below the usual 255-byte limit of one path component, leaving room for a prefix and a suffix
# such as "sweep_" and ".safetensors".
MAX_NAME_BYTES = 96

_UNSAFE = re.compile(r"[/\\:\x00-\x1f\x7f]")


def safe_name(text: str, limit: int = MAX_NAME_BYTES) -> str:
    """``text`` as one path component: ``/`` becomes ``__``, ``:`` and control characters ``_``; a name longer
    than ``limit`` UTF-8 bytes keeps its start and ends in a hash of the whole text (distinct texts stay distinct).

    >>> safe_name("detectable_format:title")
    'detectable_format_title'
    >>> len(safe_name("w" * 300).encode())
    96
    """
    name = _UNSAFE.sub("_", text.replace("/", "__"))
    if name in ("", ".", ".."):
        name = f"_{name}"
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    head = raw[: limit - len(digest) - 1].decode("utf-8", "ignore")  # never cut a character in half
    return f"{head}-{digest}"
