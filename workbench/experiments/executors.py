"""Where sweep units run: in this process (``local``, the default) or on Ray actors (``ray``).

:func:`workbench.experiments.sweep.run_sweep` owns the unit list, the JSONL store, resume and the
"recorded exactly once" rule; an executor only computes the pending units it is given and hands
each result to ``deliver`` (which appends it to the store unless that key is already there). The interface
every executor implements is :mod:`.job`; this module chooses one.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..errors import WorkbenchError
from .job import Deliver, Executor, SweepJob
from .units import Unit

__all__ = ["EXECUTORS", "Deliver", "Executor", "LocalExecutor", "SweepJob", "make_executor", "sweep_stats"]

EXECUTORS: tuple[str, ...] = ("local", "ray")


class LocalExecutor(Executor):
    """Units in this process, on the already loaded model: packed into shared decode batches (``job.max_batch``
    rows), or one after the other; each pack's units are recorded as soon as the pack is done."""

    name = "local"

    def run(self, job: SweepJob, units: Sequence[Unit], deliver: Deliver, say: Callable[[str], None]) -> None:
        unit_s: list[float] = []
        driver_s: list[float] = []
        packs = job.packs(units)
        for pack in packs:
            first = pack[0].describe() if len(pack) == 1 else f"{len(pack)} units, from {pack[0].describe()}"
            say(f"  sweep [{job.done + 1}/{job.total}] {first}")
            t0 = time.perf_counter()
            results = job.compute_pack(pack)
            t1 = time.perf_counter()
            for unit, result in zip(pack, results):
                deliver(unit, result)
            unit_s.extend([(t1 - t0) / len(pack)] * len(pack))
            driver_s.extend([(time.perf_counter() - t1) / len(pack)] * len(pack))
        job.stats.update({"executor": "local", "workers": 1, "unit_s": unit_s, "driver_s": driver_s,
                          "max_batch": job.max_batch, "packs": len(packs)})


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
        "max_batch": st.get("max_batch"),  # rows per packed decode batch, per Ray actor too (None: one unit at a time)
        "packs": st.get("packs"),  # decode batches the units ran in (one per unit when packing is off)
    }
