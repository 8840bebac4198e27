"""Where the instruction sits: a token-level diff of a with-instruction prompt against its instruction-free twin."""

from __future__ import annotations

import difflib
from typing import Sequence

from ..errors import DatasetError


def instruction_span(with_ids: Sequence[int], without_ids: Sequence[int], where: str = "pair") -> tuple[int, int]:
    """``(start, end)`` of the tokens of ``with_ids`` that its twin lacks (the instruction), wherever it sits.

    The diff (``difflib``, no junk heuristic) keeps the longest common blocks, so the span is the
    inserted or replaced tokens; several such blocks (a phrasing split around the query) are
    covered by one span from the first to the last.

    >>> instruction_span([1, 9, 9, 2, 3], [1, 2, 3])
    (1, 3)
    """
    with_ids, without_ids = list(with_ids), list(without_ids)
    if with_ids == without_ids:
        raise DatasetError(f"{where}: the two prompts have the same tokens; nothing marks the instruction")
    ops = difflib.SequenceMatcher(None, without_ids, with_ids, autojunk=False).get_opcodes()
    added = [(j1, j2) for tag, _, _, j1, j2 in ops if tag in ("insert", "replace") and j2 > j1]
    if not added:
        raise DatasetError(f"{where}: the with-instruction prompt adds no tokens to its twin (only removes some)")
    return min(j1 for j1, _ in added), max(j2 for _, j2 in added)


def common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` end with in common (the chat template's suffix, at least)."""
    n = 0
    for x, y in zip(reversed(list(a)), reversed(list(b))):
        if x != y:
            break
        n += 1
    return n
