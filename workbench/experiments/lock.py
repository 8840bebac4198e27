"""One writer per run folder: an exclusive, non-blocking lock on ``<folder>/.workbench.lock``.

Two ``reproduce`` or ``sweep`` processes on one ``--out`` folder would each run every unit and
append every key twice; the second one now fails at once and names the holder's pid. The lock
is an ``fcntl.flock``, so the kernel drops it when its holder exits, even on ``kill -9``: a
stale lock file never blocks a later run. Within one process the lock is re-entrant (counted),
so nested or repeated runs of the same process on one folder do not lock themselves out.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

from ..errors import RunFolderBusy

LOCK_NAME = ".workbench.lock"

_held: dict[str, list[int]] = {}  # real folder path -> [fd, hold count] for this process
_guard = threading.Lock()


def _acquire(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(folder)
    with _guard:
        if real in _held:
            _held[real][1] += 1
            return real
        try:
            import fcntl
        except ImportError:  # no fcntl (Windows): run unlocked rather than not at all
            _held[real] = [-1, 1]
            return real
        from ..io import open_nofollow

        fd = open_nofollow(os.path.join(real, LOCK_NAME), os.O_RDWR | os.O_CREAT)  # a planted link is refused
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(
                f"{folder} is in use by another workbench run (pid {holder}); wait for it to end or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        _held[real] = [fd, 1]
        return real


def _release(real: str) -> None:
    with _guard:
        entry = _held.get(real)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[real]
        if entry[0] >= 0:
            os.ftruncate(entry[0], 0)
            os.close(entry[0])  # closing the only descriptor releases the flock


class RunFolderLock:
    """The lock on one run folder, held until :meth:`release` (or garbage collection, or exit)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._real: str | None = _acquire(self.folder)

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._real is not None:
            real, self._real = self._real, None
            _release(real)

    def __enter__(self) -> "RunFolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a holder that goes out of scope gives the lock up
        try:
            self.release()
        except Exception:  # noqa: BLE001  (never raise from a finalizer)
            pass


def hold_run_folder(folder: str | os.PathLike[str]) -> RunFolderLock:
    """Lock ``folder`` for this process until the returned object is released or dropped.

    Keep it in a local variable for the length of the run: ``_lock = hold_run_folder(out_dir)``.
    A second process gets ``RunFolderBusy`` (a ``WorkbenchError``) at once.
    """
    return RunFolderLock(folder)


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike[str]) -> Iterator[RunFolderLock]:
    """``with run_folder_lock(out):`` hold the lock on ``out`` inside the block.

    >>> with run_folder_lock("results/smollm2/format"):
    ...     pass  # run the units
    """
    lock = RunFolderLock(folder)
    try:
        yield lock
    finally:
        lock.release()
