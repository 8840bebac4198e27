"""Split hygiene: no query used to compute directions or select layers may be evaluated on."""

from __future__ import annotations

from typing import Iterable

from ..data import PairRow
from ..errors import DatasetError


class SplitLeakError(DatasetError):
    """An evaluation row shares a base query (id or text) with the rows used for directions or selection."""


def _query(row: PairRow) -> str:
    return " ".join((row.prompt_without_instruction or row.prompt).split()).lower()


def check_split_hygiene(used: Iterable[PairRow], evaluated: Iterable[PairRow], what: str = "evaluation") -> None:
    """Raise :class:`SplitLeakError` if any evaluated row's base_id or base query text was used."""
    used = list(used)
    used_ids = {r.base_id for r in used if r.split != "external"}
    used_texts = {_query(r) for r in used}
    leaks = [r for r in evaluated if (r.split != "external" and r.base_id in used_ids) or _query(r) in used_texts]
    if leaks:
        ids = sorted({r.base_id for r in leaks})
        raise SplitLeakError(
            f"split hygiene: {len(leaks)} {what} rows reuse base queries used for directions or selection "
            f"(base_ids {', '.join(ids[:5])}{'...' if len(ids) > 5 else ''})"
        )
