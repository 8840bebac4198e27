"""Token rows of different lengths padded into one batch: the workbench's one token-padding helper.

Scoring pads on the right (each row's real tokens keep positions ``0..n-1``); decoding and kept prompt
states pad on the left (every row ends at the last position). Example::

    ids, mask = pad_tokens([[5, 6, 7], [8]], pad_id=0, side="left")   # ids [[5, 6, 7], [0, 0, 8]]
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Int

from ..errors import WorkbenchError

SIDES = ("right", "left")


def pad_tokens(
    rows: Sequence[Sequence[int]], pad_id: int, side: str = "right", device: torch.device | str | None = None,
) -> tuple[Int[torch.Tensor, "batch width"], Int[torch.Tensor, "batch width"]]:
    """``(ids, attention_mask)`` of ``rows`` padded with ``pad_id`` to the longest row, on ``side``.

    >>> pad_tokens([[5, 6, 7], [8]], 0)[0].tolist()
    [[5, 6, 7], [8, 0, 0]]
    """
    if side not in SIDES:
        raise WorkbenchError(f"pad_tokens: side must be one of {SIDES}, got {side!r}")
    if not rows:
        raise WorkbenchError("pad_tokens: no rows given")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        at = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[j, at] = torch.tensor(list(row), dtype=torch.long)
        mask[j, at] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))
