"""Where converted model weights are cached, and atomic creation of a cached model folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

CACHE_ENV = "WORKBENCH_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$WORKBENCH_CACHE``, else ``$XDG_CACHE_HOME/instruction-steering-workbench``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "instruction-steering-workbench"


def model_cache_dir(name: str, version: str) -> Path:
    """Folder holding the converted weights of one built-in model at one conversion version."""
    return cache_root() / "models" / f"{name}-{version}"


def is_complete(folder: Path) -> bool:
    """A cached model folder is complete once its marker file exists (written last)."""
    return (folder / "COMPLETE").is_file()


@contextlib.contextmanager
def building(folder: Path) -> Iterator[Path]:
    """Yield a scratch folder; on success it replaces ``folder`` whole, so no half-written cache is left."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        (tmp / "COMPLETE").write_text("ok\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
