"""Append-only JSONL store of finished work units: one line per unit, fsynced, resumable.

A run that is interrupted leaves every finished unit on disk; at most the line being written is
cut short. Loading drops such a partial last line (and trims it from the file before the next
append), so a rerun skips the finished units and redoes only the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import DatasetError
from ..io import json_safe as _clean, open_nofollow, read_jsonl, refuse_symlink


# Fields every line of a sweep's ``sweep.jsonl`` holds (``Unit.record`` plus ``compute_unit``).
SWEEP_UNIT_FIELDS = ("key", "target", "instruction_id", "layer", "coeff", "mode", "strict", "loose", "perplexity",
                     "degeneration")


class UnitStore:
    """Records keyed by ``record["key"]`` in a JSONL file; a key met again on read is dropped (the later line wins).

    ``required``: fields each record must have, checked when the file is read (before any unit
    runs), so a hand-edited line fails at once naming its line, not with a ``KeyError`` after
    the sweep. Default: :data:`SWEEP_UNIT_FIELDS` for a file called ``sweep.jsonl``, else none.

    >>> store = UnitStore("results/smollm2/format/sweep.jsonl")
    >>> done = store.load()  # {key: record}
    """

    def __init__(self, path: str | os.PathLike[str], required: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        if required is None:
            required = SWEEP_UNIT_FIELDS if self.path.name == "sweep.jsonl" else ("key",)
        self.required = tuple(required)
        self.duplicates = 0  # lines whose key an earlier line already had (found on the last read)
        self._records: dict[str, dict[str, Any]] | None = None

    def load(self) -> dict[str, dict[str, Any]]:
        """All complete records; a truncated last line is ignored and trimmed from the file."""
        if self._records is not None:
            return self._records
        records: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        if self.path.is_dir():
            raise DatasetError(f"{self.path}: is a directory, expected a JSONL file")
        refuse_symlink(self.path)  # the store is read, trimmed and appended in place: never through a link
        if self.path.is_file():
            lines = read_jsonl(self.path, tolerate_torn_tail=True)  # a bad whole line raises, naming its number
            kept = lines.records
            torn = lines.torn
            if lines.unterminated and not torn and "key" not in kept[-1][1]:
                kept, torn = kept[:-1], True  # a key-less last line without its newline is dropped like a torn one
            for lineno, obj in kept:
                self._check(obj, lineno)
                if obj["key"] in records:
                    self.duplicates += 1
                    del records[obj["key"]]  # the later line wins, at its own place in the order
                records[obj["key"]] = obj
            if lines.unterminated:  # the line being written when the run stopped
                self._repair(lines.data[: lines.cut] if torn else lines.data + b"\n")  # drop it, or end it
        self._records = records
        return records

    def _check(self, obj: dict[str, Any], lineno: int) -> None:
        missing = [f for f in self.required if f not in obj]
        if missing:
            raise DatasetError(
                f"{self.path} line {lineno}: record {str(obj.get('key'))[:60]!r} lacks {', '.join(missing)} "
                "(not a unit record of this workbench; remove the line or the file to rerun it)"
            )
        if not isinstance(obj["key"], str):
            raise DatasetError(f"{self.path} line {lineno}: 'key' must be a string, got {type(obj['key']).__name__}")

    def _repair(self, good: bytes) -> None:
        """Rewrite the file as ``good`` (its complete lines)."""
        with os.fdopen(open_nofollow(self.path, os.O_RDWR), "r+b") as f:
            f.seek(0)
            f.write(good)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())

    def __contains__(self, key: str) -> bool:
        return key in self.load()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.load().get(key)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line, flushed and fsynced before returning."""
        if "key" not in record:
            raise DatasetError("a unit record needs a 'key'")
        self.load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_clean(record), ensure_ascii=False, allow_nan=False)
        with os.fdopen(open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        assert self._records is not None
        self._records[record["key"]] = json.loads(line)
