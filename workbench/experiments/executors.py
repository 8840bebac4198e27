"""Where sweep units run: in this process (``local``, the default) or on Ray actors (``ray``).

:func:`workbench.experiments.sweep.run_sweep` owns the unit list, the JSONL store, resume and the
"recorded exactly once" rule; an executor only computes the pending units it is given and hands
each result to ``deliver`` (which appends it to the store unless that key is already there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import WorkbenchError
from .conditions import GenerationMemo
from .units import Unit, compute_unit

EXECUTORS: tuple[str, ...] = ("local", "ray")

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
    total: int = 0  # all units of the sweep, resumed ones included
    done: int = 0  # units recorded so far, resumed ones included
    stats: dict[str, Any] = field(default_factory=dict)

    def compute(self, unit: Unit) -> dict[str, Any]:
        return compute_unit(self.reference, unit, self.batch_size, self.max_new_tokens, self.memo)


class Executor:
    """Runs pending units and delivers each result to the driver's store."""

    name = "executor"

    def run(self, job: SweepJob, units: Sequence[Unit], deliver: Deliver, say: Callable[[str], None]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    """Today's path: units one after the other in this process, on the already loaded model."""

    name = "local"

    def run(self, job: SweepJob, units: Sequence[Unit], deliver: Deliver, say: Callable[[str], None]) -> None:
        unit_s: list[float] = []
        driver_s: list[float] = []
        for unit in units:
            say(f"  sweep [{job.done + 1}/{job.total}] {unit.describe()}")
            t0 = time.perf_counter()
            result = job.compute(unit)
            t1 = time.perf_counter()
            deliver(unit, result)
            unit_s.append(t1 - t0)
            driver_s.append(time.perf_counter() - t1)
        job.stats.update({"executor": "local", "workers": 1, "unit_s": unit_s, "driver_s": driver_s})


def make_executor(name: str | Executor | None = "local", address: str | None = None, workers: int | None = None,
                  **ray_options: Any) -> Executor:
    """``local`` (default) or ``ray`` (``address``: join that cluster, else start one here; ``workers``: actors)."""
    if isinstance(name, Executor):
        return name
    name = name or "local"
    if name == "local":
        if address is not None or workers is not None:
            raise WorkbenchError("--address and --workers apply to --executor ray only")
        return LocalExecutor()
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers, **ray_options)
    raise WorkbenchError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def sweep_stats(result: Any) -> dict[str, Any]:
    """Throughput summary of a sweep (for config.json and docs/ray.md): units/s, worker and driver seconds per unit."""
    st = result.stats
    units, elapsed = st.get("units", 0), st.get("elapsed_s", 0.0)
    unit_s, driver_s = st.get("unit_s", []), st.get("driver_s", [])
    return {
        "executor": st.get("executor", "local"), "workers": st.get("workers", 1), "units_run": units,
        "units_resumed": result.units_skipped, "elapsed_s": round(elapsed, 2),
        "units_per_s": round(units / elapsed, 4) if units and elapsed > 0 else None,
        "worker_s_per_unit": round(sum(unit_s) / len(unit_s), 3) if unit_s else None,
        "driver_ms_per_unit": round(1000 * sum(driver_s) / len(driver_s), 2) if driver_s else None,
        "startup_s": round(st.get("startup_s", 0.0), 2),
        "units_per_s_after_startup": (round(units / (elapsed - st.get("startup_s", 0.0)), 4)
                                      if units and elapsed - st.get("startup_s", 0.0) > 0 else None),
        "worker_failures": st.get("worker_failures", []),
    }
