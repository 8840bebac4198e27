"""Paired prompts (with / without an instruction): the row and dataset types.

A ``PairRow`` is one base query with and without an appended instruction, plus what the IFEval
checkers should verify on a response; a ``PairDataset`` is an immutable, hashable-by-content list of them.
External files (IFEval, paired files in either convention) are read by :mod:`workbench.data.files`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from ..errors import DatasetError
from ..io import strict_dumps, write_text_atomic

SPLITS: tuple[str, ...] = ("train", "validation", "test")
EXTERNAL_SPLIT = "external"


@dataclass(frozen=True)
class PairRow:
    """One base query with and without its instruction, and the IFEval checks for a response."""

    prompt: str
    prompt_without_instruction: str | None
    instruction_id: str
    kwargs: dict[str, Any]
    base_id: str
    eval_instruction_ids: tuple[str, ...]
    eval_kwargs: tuple[dict[str, Any], ...]
    split: str = field(default=EXTERNAL_SPLIT)

    def __post_init__(self) -> None:
        # Own copies, and tuples even when lists are passed, so a row never aliases caller data.
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "eval_instruction_ids", tuple(self.eval_instruction_ids))
        object.__setattr__(self, "eval_kwargs", tuple(dict(k) for k in self.eval_kwargs))
        if len(self.eval_instruction_ids) != len(self.eval_kwargs):
            raise DatasetError(
                f"row {self.base_id!r}: {len(self.eval_instruction_ids)} eval instruction ids "
                f"but {len(self.eval_kwargs)} eval kwargs"
            )

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-ready values (tuples become lists)."""
        return {
            "prompt": self.prompt,
            "prompt_without_instruction": self.prompt_without_instruction,
            "instruction_id": self.instruction_id,
            "kwargs": dict(self.kwargs),
            "base_id": self.base_id,
            "eval_instruction_ids": list(self.eval_instruction_ids),
            "eval_kwargs": [dict(k) for k in self.eval_kwargs],
            "split": self.split,
        }

    def to_paired_record(self) -> dict[str, Any]:
        """The row in the paired JSONL schema read back by :func:`load_paired_jsonl`."""
        return {
            "base_id": self.base_id,
            "prompt": self.prompt,
            "prompt_without_instruction": self.prompt_without_instruction,
            "instruction_id_list": self.instruction_id.split("+"),
            "instruction_id_list_for_eval": list(self.eval_instruction_ids),
            "kwargs": [dict(k) for k in self.eval_kwargs],
        }


class PairDataset(Sequence[PairRow]):
    """An immutable sequence of :class:`PairRow` with a name used in error messages."""

    def __init__(self, rows: Iterable[PairRow] = (), name: str = "pairs") -> None:
        self._rows: tuple[PairRow, ...] = tuple(rows)
        self._name = name

    @property
    def name(self) -> str:
        """Name shown in ``repr`` and in error messages."""
        return self._name

    @property
    def rows(self) -> tuple[PairRow, ...]:
        """The rows as a tuple."""
        return self._rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> PairRow: ...

    @overload
    def __getitem__(self, index: slice) -> PairDataset: ...

    def __getitem__(self, index: int | slice) -> PairRow | PairDataset:
        if isinstance(index, slice):
            return PairDataset(self._rows[index], name=self._name)
        return self._rows[index]

    def __iter__(self) -> Iterator[PairRow]:
        return iter(self._rows)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PairDataset):
            return NotImplemented
        return self._rows == other._rows and self._name == other._name

    __hash__ = None  # type: ignore[assignment]  # rows hold dicts; use .hash() for a content hash

    def __repr__(self) -> str:
        ids = self.instruction_ids()
        shown = ", ".join(ids[:4]) + (f", ... ({len(ids)} in all)" if len(ids) > 4 else "")
        splits = dict(sorted(Counter(r.split for r in self._rows).items()))
        return f"PairDataset(name={self._name!r}, size={len(self)}, instructions=[{shown}], splits={splits})"

    def prompts(self) -> list[str]:
        """Prompts with the instruction, in row order."""
        return [r.prompt for r in self._rows]

    def prompts_without_instruction(self) -> list[str]:
        """Prompts without the instruction; raises ``DatasetError`` if any row lacks one."""
        missing = [r.base_id for r in self._rows if r.prompt_without_instruction is None]
        if missing:
            raise DatasetError(
                f"dataset {self._name}: {len(missing)} of {len(self)} rows have no prompt_without_instruction "
                f"(first: base_id {missing[0]!r}); IFEval-schema files lack it (use a paired file), and a paired row whose "
                "prompt_without_instruction equals its prompt (a failed rewrite) loses it"
            )
        return [r.prompt_without_instruction for r in self._rows]  # type: ignore[misc]

    def with_twin(self) -> PairDataset:
        """The rows that have a prompt without the instruction (IFEval rows and failed rewrites have none)."""
        return PairDataset([r for r in self._rows if r.prompt_without_instruction is not None], name=self._name)

    def instruction_ids(self) -> list[str]:
        """Sorted unique instruction ids."""
        return sorted({r.instruction_id for r in self._rows})

    def base_ids(self) -> list[str]:
        """Base query ids, in row order (with repeats)."""
        return [r.base_id for r in self._rows]

    def filter(
        self,
        instruction: str | None = None,
        split: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> PairDataset:
        """Rows matching an instruction id (or one part of a ``+``-joined id), a split, and kwargs pairs."""

        def keep(r: PairRow) -> bool:
            if instruction is not None and instruction != r.instruction_id and instruction not in r.instruction_id.split("+"):
                return False
            if split is not None and r.split != split:
                return False
            if kwargs and any(k not in r.kwargs or r.kwargs[k] != v for k, v in kwargs.items()):
                return False
            return True

        parts = [f"instruction={instruction}"] if instruction is not None else []
        parts += [f"split={split}"] if split is not None else []
        parts += [f"{k}={v}" for k, v in (kwargs or {}).items()]
        name = f"{self._name}[{', '.join(parts)}]" if parts else self._name
        return PairDataset([r for r in self._rows if keep(r)], name=name)

    def head(self, n: int) -> PairDataset:
        """The first ``n`` rows."""
        return self[:n]

    def require_nonempty(self, what: str) -> PairDataset:
        """Return ``self``; raise ``DatasetError`` naming ``what`` and the dataset if it has no rows."""
        if not self._rows:
            raise DatasetError(f"{what}: dataset {self._name} is empty (no rows to use)")
        return self

    def hash(self) -> str:
        """sha256 hex digest of a canonical JSON of the rows (the name is not included)."""
        canon = json.dumps([r.to_dict() for r in self._rows], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def to_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Write the rows in the paired JSONL schema, atomically."""
        lines = [strict_dumps(r.to_paired_record(), ensure_ascii=False) for r in self._rows]  # no NaN in a kwargs value
        write_text_atomic(path, "".join(line + "\n" for line in lines))
