"""Sweep units on Ray actors: each actor loads the model once and then decodes many packs of units.

The driver (this process) keeps the unit list, the JSONL store and resume (``run_sweep``); it
sends packs of units to actors (rows, prompts and the steering spec, whose direction is a tensor:
never a model object), records each unit of a pack as the pack's results arrive, and resubmits the
whole pack of an actor that died. An actor computes a pack with ``SweepJob.compute_pack``, the code
the local executor runs (one shared decode batch of up to ``max_batch`` rows; with packing off, one
unit a task). Actors restart (``max_restarts``) and Ray retries their in-flight tasks
(``max_task_retries``); the driver's dedupe on the unit key keeps every unit recorded exactly once.

Ray is an optional extra: ``pip install "instruction-steering-workbench[ray]"``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections import deque
from typing import Any, Callable, Sequence

from ..errors import WorkbenchError
from .job import Deliver, Executor, SweepJob
from .units import Unit, pack_units

INSTALL_HINT = 'pip install "instruction-steering-workbench[ray]"  (from a checkout: pip install -e ".[ray]")'


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise WorkbenchError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def model_ref(model: Any) -> str:
    """The name a worker passes to ``load_model`` to get the same model: a built-in name, else its path."""
    from ..models import BUILTIN_MODELS, model_info

    info = model_info(model)
    return info.name if info.name in BUILTIN_MODELS else info.path


def balanced_packs(units: Sequence[Unit], max_batch: int | None, workers: int) -> list[list[Unit]]:
    """Packs for ``workers`` actors: as few rounds as ``pack_units(units, max_batch)`` needs, packs as small as
    those rounds allow, so few packs are split to feed every actor and the last round is not one big pack.

    One worker (or packing off, ``max_batch=None``) gets exactly the local executor's packs.
    Example: 14 units of 2 prompts, ``max_batch=80``, 2 workers: 2 packs of 7 units instead of 1 of 14.
    """
    if max_batch is None:
        return [[u] for u in units]
    packs = pack_units(units, max_batch)
    if workers <= 1 or not packs:
        return packs
    budget = workers * math.ceil(len(packs) / workers)  # packs that fit in the same number of rounds
    lo, hi = 1, max_batch  # the smallest pack size whose packs fit in the budget (pack count falls as size grows)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(pack_units(units, mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return pack_units(units, lo)


class UnitWorker:
    """A Ray actor (wrapped with ``ray.remote`` at run time): one model and one ``GenerationMemo``, many packs."""

    def __init__(self, model: str, reference: str | None, device: str, threads: int, expect: tuple[str, str],
                 batch_size: int, max_new_tokens: int, seed: int, max_batch: int | None = None) -> None:
        import torch

        from ..models import load_model, model_info
        from .conditions import GenerationMemo

        if device.startswith("cpu"):
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = load_model(model, device=device)
        self.reference = self.model if reference is None else load_model(reference, device=device)
        got = (model_info(self.model).name, model_info(self.reference).name)
        if got != tuple(expect):
            raise WorkbenchError(f"this Ray worker loaded {got}, the driver has {tuple(expect)}: install the same models on every node")
        memo = GenerationMemo(self.model, max_new_tokens, batch_size, seed, max_batch=max_batch, pack=max_batch is not None)
        self.job = SweepJob(model=self.model, reference=self.reference, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, seed=seed, memo=memo, max_batch=max_batch)

    def info(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname()}

    def run_pack(self, pack: list[Unit]) -> tuple[list[dict[str, Any]], float, int]:
        """One result per unit of ``pack`` (decoded together, as the local executor does), seconds, pid."""
        t0 = time.perf_counter()
        results = self.job.compute_pack(pack)
        return results, time.perf_counter() - t0, os.getpid()


class RayExecutor(Executor):
    """Units on ``workers`` Ray actors; ``address=None`` starts a local Ray cluster for the run.

    ``model``/``reference``: names the actors load (default: the driver's model's built-in name or
    path). ``device``: ``cpu`` or ``cuda`` (then each actor asks Ray for ``gpus_per_worker`` GPUs).
    ``cpus_per_worker``: the CPUs Ray reserves per actor (default: ``threads`` on CPU, 1 with a GPU).
    ``in_flight``: packs queued per actor, so an actor never waits for the driver between packs.
    Packs hold up to the job's ``max_batch`` rows each (per actor), see :func:`balanced_packs`.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, model: str | None = None,
                 reference: str | None = None, device: str | None = None, threads: int | None = None,
                 cpus_per_worker: float | None = None, gpus_per_worker: float = 1.0, max_restarts: int = 2,
                 max_task_retries: int = 2, max_unit_attempts: int = 4, in_flight: int = 2, progress_every_s: float = 30.0,
                 init_options: dict[str, Any] | None = None) -> None:
        import_ray()  # without Ray: a one-line error saying how to install it, before any work
        if workers is not None and workers < 1:
            raise WorkbenchError(f"--workers must be >= 1, got {workers}")
        self.address, self.workers, self.model, self.reference = address, workers, model, reference
        self.device, self.threads = device, threads
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self.max_restarts, self.max_task_retries, self.max_unit_attempts = max_restarts, max_task_retries, max_unit_attempts
        self.in_flight, self.progress_every_s = max(1, in_flight), progress_every_s
        self.init_options = dict(init_options or {})
        self.actors: list[Any] = []  # the live actor handles while run() is going (tests kill one)
        self.on_result: Callable[[Unit, int], None] | None = None  # test hook: called after each delivered unit
        self._temp_dir: str | None = None

    def describe(self) -> str:
        return f"ray ({self.address or 'local cluster'}, {self.workers or 'auto'} workers)"

    # --- cluster ------------------------------------------------------------------------------
    def _connect(self, ray: Any, cpus_needed: float) -> bool:
        """Join ``address`` or start a local cluster; True when this call started Ray (and must shut it down)."""
        self._temp_dir = None
        if ray.is_initialized():
            return False
        opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
        if self.address:
            opts["address"] = self.address
        else:
            # a short, fresh temp dir: Ray's unix socket paths must stay under ~107 characters
            self._temp_dir = opts["_temp_dir"] = tempfile.mkdtemp(prefix="wbray", dir="/tmp" if os.path.isdir("/tmp") else None)
            opts["num_cpus"] = max(os.cpu_count() or 1, math.ceil(cpus_needed))  # --workers N always fits
        opts.update(self.init_options)
        from ray.exceptions import AuthenticationError

        try:
            ray.init(**opts)
        except (ConnectionError, AuthenticationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WorkbenchError(f"cannot join the Ray cluster at {self.address}: {first} (with token authentication, "
                                 f"Ray's default, set RAY_AUTH_MODE=token and the cluster's token: docs/ray.md)") from None
        return True

    def _n_workers(self, ray: Any, cuda: bool, cpus: float, n_units: int) -> int:
        """``--workers`` (at most one per unit) or as many as fit; actors that could never be placed are an error, not a hang."""
        res = ray.cluster_resources()
        gpus, total_cpus = res.get("GPU", 0.0), res.get("CPU", 0.0)
        if cuda and gpus < self.gpus_per_worker:
            raise WorkbenchError(f"--device cuda: the Ray cluster has {gpus:g} GPUs, each worker needs {self.gpus_per_worker:g}")
        fit = int(gpus // self.gpus_per_worker) if cuda else int(total_cpus // max(cpus, 1e-9))
        if fit < 1:
            raise WorkbenchError(f"the Ray cluster has {total_cpus:g} CPUs, a worker needs {cpus:g} (lower --threads)")
        if self.workers is None:
            return min(fit, n_units)
        if self.workers > fit:
            raise WorkbenchError(f"--workers {self.workers} do not fit in the Ray cluster ({total_cpus:g} CPUs, {gpus:g} GPUs; "
                                 f"{cpus:g} CPUs{f' and {self.gpus_per_worker:g} GPU' if cuda else ''} per worker): at most {fit}")
        return min(self.workers, n_units)

    # --- the driver loop ----------------------------------------------------------------------
    def run(self, job: SweepJob, units: Sequence[Unit], deliver: Deliver, say: Callable[[str], None]) -> None:
        ray = import_ray()
        from ray.exceptions import RayActorError

        from ..models import model_info
        from .config import cpu_threads

        device = str(self.device or job.model.cfg.device)
        cuda = device.startswith("cuda")
        threads = cpu_threads(self.threads, device)
        cpus = self.cpus_per_worker if self.cpus_per_worker is not None else (1.0 if cuda else float(threads))
        expect = (model_info(job.model).name, model_info(job.reference).name)
        model = self.model or model_ref(job.model)
        reference = None if job.reference is job.model else (self.reference or model_ref(job.reference))
        t_start = time.perf_counter()
        started = self._connect(ray, (self.workers or 0) * cpus)
        try:
            n = self._n_workers(ray, cuda, cpus, len(units))
            options: dict[str, Any] = {"num_cpus": cpus, "max_restarts": self.max_restarts, "max_task_retries": self.max_task_retries}
            if cuda:
                options["num_gpus"] = self.gpus_per_worker
            cls = ray.remote(UnitWorker).options(**options)
            args = (model, reference, device, threads, expect, job.batch_size, job.max_new_tokens, job.seed, job.max_batch)
            self.actors = [cls.remote(*args) for _ in range(n)]
            try:  # wait for every model to load: a worker that cannot load it is a clear error now, not later
                infos = ray.get([a.info.remote() for a in self.actors])
            except RayActorError as exc:
                why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise WorkbenchError(f"a Ray worker could not load {model}: {why}") from None
            job.stats["startup_s"] = time.perf_counter() - t_start
            packs = balanced_packs(units, job.max_batch, n)
            packing = ("one unit a task" if job.max_batch is None else
                       f"{len(packs)} pack(s) of up to {max(sum(len(u.prompts) for u in p) for p in packs)} rows "
                       f"(--max-batch {job.max_batch} per worker)")
            say(f"  ray: {n} worker(s) with {model} on {device} ({cpus:g} CPU{'' if cuda else f', {threads} thread(s)'}"
                f"{f', {self.gpus_per_worker:g} GPU' if cuda else ''} each) ready in {job.stats['startup_s']:.1f} s on "
                f"{', '.join(sorted({i['host'] for i in infos}))}; {len(units)} unit(s) to run, {packing}")
            self._drive(ray, job, packs, deliver, say, {i: info["pid"] for i, info in enumerate(infos)})
        finally:
            for actor in self.actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001  (already dead)
                    pass
            self.actors = []
            if started:
                ray.shutdown()
                if self._temp_dir:
                    shutil.rmtree(self._temp_dir, ignore_errors=True)

    def _drive(self, ray: Any, job: SweepJob, packs: Sequence[list[Unit]], deliver: Deliver, say: Callable[[str], None],
               pids: dict[int, int]) -> None:
        """Keep ``in_flight`` packs queued on every live actor; deliver each unit of a finished pack; resubmit the
        whole pack of a lost actor.

        Packs go to the live actor with the fewest queued (round-robin), so a short run does not queue two packs
        on one actor while another waits. An actor whose task fails with an actor error is probed (``info``)
        before it gets more work: a probe that answers (the actor restarted) brings it back, one that fails marks
        it dead.
        """
        from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

        n = len(self.actors)
        queue: deque[int] = deque(range(len(packs)))  # pack indices
        inflight: dict[Any, tuple[int, int]] = {}  # task ref -> (pack index, worker)
        probes: dict[Any, int] = {}
        state = ["up"] * n  # up, checking (lost a pack, being probed), dead
        probe_tries = [0] * n
        load = [0] * n
        failures = [0] * n
        attempts: dict[int, int] = {}
        unit_s: list[float] = []
        driver_s: list[float] = []
        task_units: list[int] = []  # units per finished task (all 1 with packing off)

        def workers_line() -> str:
            states = [f"w{i} {state[i]}" + (f" (pid {pids[i]})" if i in pids else "") for i in range(n)]
            return f"workers alive {sum(st != 'dead' for st in state)}/{n}: " + ", ".join(states)

        def describe(pack: list[Unit]) -> str:
            return pack[0].describe() if len(pack) == 1 else f"{len(pack)} units, from {pack[0].describe()}"

        def fill() -> None:
            while queue:
                free = [i for i in range(n) if state[i] == "up" and load[i] < self.in_flight]
                if not free:
                    return
                i = min(free, key=lambda j: (load[j], j))
                p = queue.popleft()
                inflight[self.actors[i].run_pack.remote(packs[p])] = (p, i)
                load[i] += 1

        def probe(i: int) -> None:
            state[i] = "checking"
            probe_tries[i] += 1
            probes[self.actors[i].info.remote()] = i

        fill()
        while inflight or probes:
            ready, _ = ray.wait([*inflight, *probes], num_returns=1, timeout=self.progress_every_s)
            if not ready:
                say(f"  sweep [{job.done}/{job.total}] running; {workers_line()}")
                continue
            ref = ready[0]
            if ref in probes:
                i = probes.pop(ref)
                try:
                    pids[i] = ray.get(ref)["pid"]
                    state[i], probe_tries[i] = "up", 0
                except RayActorError as exc:
                    if isinstance(exc, ActorDiedError) or probe_tries[i] > self.max_restarts:
                        state[i] = "dead"
                    else:  # still restarting
                        probe(i)
                say(f"  sweep: worker w{i} is {state[i]}; {workers_line()}")
            else:
                p, i = inflight.pop(ref)
                pack = packs[p]
                load[i] -= 1
                t0 = time.perf_counter()
                try:
                    results, worker_s, pid = ray.get(ref)
                except RayTaskError as exc:  # a unit itself failed (a bug or bad input): no retry
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, WorkbenchError):
                        raise cause from None
                    raise
                except RayActorError as exc:  # ActorDiedError, ActorUnavailableError: the worker, not the pack
                    failures[i] += 1
                    attempts[p] = attempts.get(p, 0) + 1
                    if attempts[p] >= self.max_unit_attempts:
                        what = f"unit {pack[0].key}" if len(pack) == 1 else f"a pack of {len(pack)} units ({pack[0].key}, ...)"
                        raise WorkbenchError(f"{what} was lost with {attempts[p]} workers "
                                             f"(last: {type(exc).__name__}); rerun to resume") from None
                    queue.appendleft(p)  # the whole pack, resubmitted; dedupe in deliver() keeps each unit recorded once
                    if state[i] == "up":
                        probe(i)
                    say(f"  sweep: worker w{i} lost {describe(pack)} ({type(exc).__name__}), resubmitted; {workers_line()}")
                else:
                    if len(results) != len(pack):
                        raise WorkbenchError(f"Ray worker w{i} returned {len(results)} results for a pack of {len(pack)} units")
                    pids[i] = pid
                    task_units.append(len(pack))
                    dropped = 0
                    for unit, result in zip(pack, results):
                        if not deliver(unit, result):
                            dropped += 1
                        if self.on_result is not None:
                            self.on_result(unit, i)
                    unit_s.extend([worker_s / len(pack)] * len(pack))
                    driver_s.extend([(time.perf_counter() - t0) / len(pack)] * len(pack))
                    say(f"  sweep [{job.done}/{job.total}] {describe(pack)} on w{i} ({worker_s:.1f} s)"
                        f"{f' ({dropped} duplicate(s), dropped)' if dropped else ''}; {workers_line()}")
            if all(st == "dead" for st in state) and (queue or inflight):
                left = sum(len(packs[p]) for p in queue) + sum(len(packs[p]) for p, _ in inflight.values())
                raise WorkbenchError(f"all {n} Ray workers died; {left} unit(s) not run, rerun to resume")
            fill()
        job.stats.update({"executor": "ray", "workers": n, "unit_s": unit_s, "driver_s": driver_s,
                          "worker_failures": failures, "address": self.address or "local", "max_batch": job.max_batch,
                          "packs": len(packs), "task_units": task_units})
