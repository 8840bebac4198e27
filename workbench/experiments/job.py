"""What every executor implements and what it is given: :class:`Executor` (runs pending units, delivers each
result) and :class:`SweepJob` (what every unit of one sweep shares). :mod:`.executors` chooses an executor
(``local`` or ``ray``); :mod:`.ray_executor` implements one on Ray actors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .conditions import GenerationMemo
from .units import Unit, compute_pack, compute_unit, pack_units

# deliver(unit, result) -> True when recorded, False when the key was already recorded (a duplicate)
Deliver = Callable[[Unit, dict[str, Any]], bool]


@dataclass
class SweepJob:
    """What every unit of one sweep shares: models, generation settings, progress counters."""

    model: Any
    reference: Any
    batch_size: int
    max_new_tokens: int
    seed: int
    memo: GenerationMemo
    max_batch: int | None = None  # rows per packed decode batch; None: one unit at a time
    total: int = 0  # all units of the sweep, resumed ones included
    done: int = 0  # units recorded so far, resumed ones included
    stats: dict[str, Any] = field(default_factory=dict)

    def compute(self, unit: Unit) -> dict[str, Any]:
        return compute_unit(self.reference, unit, self.batch_size, self.max_new_tokens, self.memo)

    def packs(self, units: Sequence[Unit]) -> list[list[Unit]]:
        """The units in the packs they decode in (one unit a pack when packing is off)."""
        return [[u] for u in units] if self.max_batch is None else pack_units(units, self.max_batch)

    def compute_pack(self, pack: Sequence[Unit]) -> list[dict[str, Any]]:
        if self.max_batch is None:
            return [self.compute(u) for u in pack]
        return compute_pack(self.reference, pack, self.batch_size, self.max_new_tokens, self.memo)


class Executor:
    """Runs pending units and delivers each result to the driver's store."""

    name = "executor"

    def run(self, job: SweepJob, units: Sequence[Unit], deliver: Deliver, say: Callable[[str], None]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name
