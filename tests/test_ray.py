"""Sweeps on Ray (``--executor ray``): same records as local (packed and not), worker deaths, resume,
how packs are shared out, the missing-Ray error.

One local Ray cluster (2 CPUs, no dashboard) serves the whole module; actors take 1 CPU each
(one torch thread), so 2 workers fit.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace

import pytest
from records import assert_same_records

import workbench as wb
from workbench.errors import WorkbenchError
from workbench.experiments import SweepSettings, SweepTarget, UnitStore, run_sweep
from workbench.experiments.cli import register
from workbench.experiments.executors import make_executor
from workbench.experiments.sweep import plan_units
from workbench.experiments.units import pack_units

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='Ray is not installed (pip install -e ".[ray]")')
TITLE = "detectable_format:title"
SETTINGS = SweepSettings(layers=[1, 2, 3], strengths=[2.0, 4.0], max_new_tokens=2, batch_size=2, unit_size=2, max_ppl_ratio=None)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster for this module, in a short fresh temp dir (unix socket paths are length-limited)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="wbray", dir="/tmp" if os.path.isdir("/tmp") else None)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def targets(tiny):
    import torch

    torch.set_num_threads(1)
    train = wb.load_pairs("format", TITLE, split="train").head(4)
    val = wb.load_pairs("format", TITLE, split="validation").head(4)
    return [SweepTarget(TITLE, val, wb.compute_direction(tiny, train, progress=False), "add")]


@pytest.fixture(scope="module")
def local_result(tiny, targets, tmp_path_factory):
    """The local packed sweep (one pack of all 14 units: 28 rows, default max_batch 160) and its records by key."""
    path = tmp_path_factory.mktemp("local") / "sweep.jsonl"
    result = run_sweep(tiny, targets, SETTINGS, path)
    assert result.stats["max_batch"] == 160
    return result, _records(path)


def _keys(path) -> list[str]:
    return [json.loads(line)["key"] for line in open(path, encoding="utf-8")]


def _records(path) -> dict[str, dict]:
    """Every JSONL line of a sweep by its key (responses, checks, perplexities, degeneration)."""
    return {r["key"]: r for r in map(json.loads, open(path, encoding="utf-8"))}


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workbench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_without_ray_the_error_is_one_line(monkeypatch, capsys, tmp_path):
    from workbench.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["reproduce", "format", "--model", "tiny-random-llama", "--executor", "ray", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("workbench: error: --executor ray needs Ray") and 'pip install "instruction-steering-workbench[ray]"' in err
    code = main(["sweep", "--instruction", TITLE, "--model", "tiny-random-llama", "--executor", "ray", "--out", str(tmp_path)])
    assert code == 2 and "[ray]" in capsys.readouterr().err
    with pytest.raises(WorkbenchError, match="--executor ray only"):
        make_executor("local", workers=2)


def _table(path):
    """A CSV's rows (numbers as floats) or a JSON file's content."""
    if path.suffix == ".json":
        return json.loads(path.read_text())

    def value(text):
        try:
            return float(text)
        except ValueError:
            return text

    return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(path.read_text().splitlines())]


@needs_ray
def test_ray_reproduce_gives_the_local_csv(ray_cluster, tiny, tmp_path):
    small = ["reproduce", "format", "--model", "tiny-random-llama", "--quick", "--device", "cpu", "--n-train", "4", "--n-val", "4",
             "--n-eval", "4", "--max-new-tokens", "3", "--instruction", TITLE, "--layers", "1,2,3", "--strengths", "1,2",
             "--batch-size", "2", "--threads", "1"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert _cli([*small, "--out", str(local)]) == 0
    assert _cli([*small, "--out", str(remote), "--executor", "ray", "--workers", "2"]) == 0
    a, b = local / "tiny-random-llama" / "format", remote / "tiny-random-llama" / "format"
    for name in ("results.csv", "sweep.csv", "heatmap.json", "selection.json"):  # the same up to perplexities' float noise
        assert_same_records(_table(a / name), _table(b / name), where=name)
    assert sorted(_keys(a / "sweep.jsonl")) == sorted(_keys(b / "sweep.jsonl")) and len(_keys(b / "sweep.jsonl")) == 14
    assert_same_records(_records(a / "sweep.jsonl"), _records(b / "sweep.jsonl"))  # local: 1 pack of 14 units; ray: 2 packs of 7
    stats = json.loads((b / "config.json").read_text())["sweep"]
    assert stats["executor"] == "ray" and stats["workers"] == 2 and stats["units_run"] == 14 and stats["max_batch"] == 160
    assert stats["packs"] == 2 and json.loads((a / "config.json").read_text())["sweep"]["packs"] == 1
    assert json.loads((b / "config.json").read_text())["config"]["executor"] == "ray"


@needs_ray
def test_killed_workers_still_record_every_unit_once(ray_cluster, tiny, targets, local_result, tmp_path):
    from workbench.experiments.ray_executor import RayExecutor

    ex = RayExecutor(workers=2, in_flight=2)
    seen: list[str] = []
    lines: list[str] = []

    def kill(unit, worker):
        seen.append(unit.key)
        if len(seen) == 1:  # the process of worker 0 dies mid-run: Ray restarts it and retries its tasks
            pid = ray_cluster.get(ex.actors[0].info.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
        if len(seen) == 3:  # worker 1 is gone for good: the driver resubmits its units to worker 0
            ray_cluster.kill(ex.actors[1], no_restart=True)

    ex.on_result = kill
    path = tmp_path / "sweep.jsonl"
    local, local_records = local_result
    settings = replace(SETTINGS, max_batch=4)  # packs of 2 units (4 rows): 7 packs, so both workers have packs queued
    result = run_sweep(tiny, targets, settings, path, executor=ex, say=lines.append)
    keys = _keys(path)
    expected = [u.key for u in plan_units(tiny, targets, SETTINGS)]
    assert len(keys) == len(set(keys)) == len(expected) == 14 and set(keys) == set(expected)
    assert result.units_run == 14
    assert_same_records([result.records, result.baselines, result.selection], [local.records, local.baselines, local.selection])
    assert_same_records(_records(path), local_records)  # packs of 2 on Ray, one pack of 14 locally: the same lines
    assert result.stats["max_batch"] == 4 and result.stats["packs"] == 7 and set(result.stats["task_units"]) == {2}
    assert any("workers alive 1/2" in line for line in lines), lines[-3:]
    assert any("lost 2 units" in line and "resubmitted" in line for line in lines), lines  # the whole pack went back


@needs_ray
def test_interrupted_ray_run_resumes(ray_cluster, tiny, targets, local_result, tmp_path):
    from workbench.experiments.ray_executor import RayExecutor

    class Interrupt(Exception):
        pass

    def stop_after_three(record):
        if len(UnitStore(path).load()) == 3:
            raise Interrupt

    path = tmp_path / "sweep.jsonl"
    local, local_records = local_result
    with pytest.raises(Interrupt):  # packed (2 packs of 7): killed while the first pack's units are recorded
        run_sweep(tiny, targets, SETTINGS, path, on_unit=stop_after_three, executor=RayExecutor(workers=2))
    assert len(_keys(path)) == 3
    # resumed with packing off (--no-pack): the same keys, one unit a task
    resumed = run_sweep(tiny, targets, replace(SETTINGS, pack=False), path, executor=RayExecutor(workers=2))
    assert resumed.units_skipped == 3 and resumed.units_run == 11
    assert resumed.stats["max_batch"] is None and resumed.stats["task_units"] == [1] * 11 and resumed.stats["packs"] == 11
    keys = _keys(path)
    assert len(keys) == len(set(keys)) == 14
    assert_same_records([resumed.records, resumed.selection], [local.records, local.selection])
    assert_same_records(_records(path), local_records)


@needs_ray
def test_workers_that_cannot_be_placed_are_an_error(ray_cluster, tiny, targets, tmp_path):
    from workbench.experiments.ray_executor import RayExecutor

    with pytest.raises(WorkbenchError, match="do not fit"):
        run_sweep(tiny, targets, SETTINGS, tmp_path / "sweep.jsonl", executor=RayExecutor(workers=3))
    with pytest.raises(WorkbenchError, match="GPUs"):
        run_sweep(tiny, targets, SETTINGS, tmp_path / "sweep.jsonl", executor=RayExecutor(device="cuda"))
    assert not (tmp_path / "sweep.jsonl").exists()


def test_packs_are_shared_out_so_no_worker_waits(tiny, targets):
    from workbench.experiments.ray_executor import balanced_packs

    units = plan_units(tiny, targets, SETTINGS)  # 14 units of 2 prompts
    rows = lambda pack: sum(len(u.prompts) for u in pack)  # noqa: E731
    assert balanced_packs(units, None, 2) == [[u] for u in units]  # packing off: one unit a task
    for max_batch, workers in ((80, 1), (6, 1)):  # one worker: exactly the local executor's packs
        assert balanced_packs(units, max_batch, workers) == pack_units(units, max_batch)
    for max_batch, workers in ((80, 2), (80, 3), (80, 5), (6, 2), (8, 3), (10, 4), (4, 2), (1, 2)):
        local = pack_units(units, max_batch)
        packs = balanced_packs(units, max_batch, workers)
        assert sorted(u.key for p in packs for u in p) == sorted(u.key for u in units)  # every unit once
        assert all(rows(p) <= max(max_batch, 2) for p in packs)  # --max-batch holds per actor
        assert -(-len(packs) // workers) <= -(-len(local) // workers)  # never more rounds than the local packs
        assert len(packs) >= min(workers, len(units))  # every worker gets a pack
        assert max(map(rows, packs)) <= max(map(rows, local))
    two = balanced_packs(units, 80, 2)
    assert [len(p) for p in two] == [7, 7]  # one pack of 14 locally, split in two for two workers
    # 3 workers, --max-batch 8: locally 4 packs of 4, 4, 4 and 2 units (2 rounds, 8 rows); balanced: 5 packs of 6 rows
    assert [len(p) for p in pack_units(units, 8)] == [4, 4, 4, 2]
    assert [len(p) for p in balanced_packs(units, 8, 3)] == [3, 3, 3, 3, 2]
