"""Sweeps on Ray (``--executor ray``): same tables as local, worker deaths, resume, the missing-Ray error.

One local Ray cluster (2 CPUs, no dashboard) serves the whole module; actors take 1 CPU each
(one torch thread), so 2 workers fit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile

import pytest

import workbench as wb
from workbench.errors import WorkbenchError
from workbench.experiments import SweepSettings, SweepTarget, UnitStore, run_sweep
from workbench.experiments.cli import register
from workbench.experiments.executors import make_executor
from workbench.experiments.sweep import plan_units

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
    return run_sweep(tiny, targets, SETTINGS, tmp_path_factory.mktemp("local") / "sweep.jsonl")


def _keys(path) -> list[str]:
    return [json.loads(line)["key"] for line in open(path, encoding="utf-8")]


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


@needs_ray
def test_ray_reproduce_gives_the_local_csv(ray_cluster, tiny, tmp_path):
    small = ["reproduce", "format", "--model", "tiny-random-llama", "--quick", "--device", "cpu", "--n-train", "4", "--n-val", "4",
             "--n-eval", "4", "--max-new-tokens", "3", "--instruction", TITLE, "--layers", "1,2,3", "--strengths", "1,2",
             "--batch-size", "2", "--threads", "1"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert _cli([*small, "--out", str(local)]) == 0
    assert _cli([*small, "--out", str(remote), "--executor", "ray", "--workers", "2"]) == 0
    a, b = local / "tiny-random-llama" / "format", remote / "tiny-random-llama" / "format"
    for name in ("results.csv", "sweep.csv", "heatmap.json", "selection.json"):
        assert (a / name).read_text() == (b / name).read_text(), name
    assert sorted(_keys(a / "sweep.jsonl")) == sorted(_keys(b / "sweep.jsonl")) and len(_keys(b / "sweep.jsonl")) == 14
    stats = json.loads((b / "config.json").read_text())["sweep"]
    assert stats["executor"] == "ray" and stats["workers"] == 2 and stats["units_run"] == 14
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
    result = run_sweep(tiny, targets, SETTINGS, path, executor=ex, say=lines.append)
    keys = _keys(path)
    expected = [u.key for u in plan_units(tiny, targets, SETTINGS)]
    assert len(keys) == len(set(keys)) == len(expected) == 14 and set(keys) == set(expected)
    assert result.units_run == 14 and result.records == local_result.records and result.baselines == local_result.baselines
    assert result.selection == local_result.selection
    assert any("workers alive 1/2" in line for line in lines), lines[-3:]


@needs_ray
def test_interrupted_ray_run_resumes(ray_cluster, tiny, targets, local_result, tmp_path):
    from workbench.experiments.ray_executor import RayExecutor

    class Interrupt(Exception):
        pass

    def stop_after_three(record):
        if len(UnitStore(path).load()) == 3:
            raise Interrupt

    path = tmp_path / "sweep.jsonl"
    with pytest.raises(Interrupt):
        run_sweep(tiny, targets, SETTINGS, path, on_unit=stop_after_three, executor=RayExecutor(workers=2))
    assert len(_keys(path)) == 3
    resumed = run_sweep(tiny, targets, SETTINGS, path, executor=RayExecutor(workers=2))
    assert resumed.units_skipped == 3 and resumed.units_run == 11
    keys = _keys(path)
    assert len(keys) == len(set(keys)) == 14
    assert resumed.records == local_result.records and resumed.selection == local_result.selection


@needs_ray
def test_workers_that_cannot_be_placed_are_an_error(ray_cluster, tiny, targets, tmp_path):
    from workbench.experiments.ray_executor import RayExecutor

    with pytest.raises(WorkbenchError, match="do not fit"):
        run_sweep(tiny, targets, SETTINGS, tmp_path / "sweep.jsonl", executor=RayExecutor(workers=3))
    with pytest.raises(WorkbenchError, match="GPUs"):
        run_sweep(tiny, targets, SETTINGS, tmp_path / "sweep.jsonl", executor=RayExecutor(device="cuda"))
    assert not (tmp_path / "sweep.jsonl").exists()
