"""``workbench gpu-check`` (issue 29, part 5) end to end on the CPU with ``--quick``, and how it reports failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.gpu_check import STEPS, check_settings
from workbench.pins import check_pins, read_pins


def test_gpu_check_quick_on_cpu_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "check"
    rc = main(["gpu-check", "--device", "cpu", "--twin", "smollm2", "--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads((out / "gpu-check.json").read_text())
    assert rc == 0 and report["ok"], {k: v.get("error") for k, v in report["steps"].items()}
    assert list(report["steps"]) == list(STEPS) and "all steps passed" in printed
    bench = report["steps"]["bench"]["report"]
    assert bench["weights"] == "random" and bench["dtype"] == "bfloat16" and bench["twin"]["config"]["num_hidden_layers"] == 2
    assert {r["batch"] for r in bench["rows"] if r["task"] == "generate"} == {1, 2}
    sweep = report["steps"]["bench-sweep"]["report"]
    assert sweep["weights"] == "random" and [r["units"] for r in sweep["rows"]][0] >= 2
    run = Path(report["steps"]["reproduce"]["run"])
    assert run.is_relative_to(out / "reproduce") and (run / "results.md").is_file() and (run / "config.json").is_file()
    assert "results.md" in report["steps"]["reproduce"]["tables"]
    pins = {p["package"]: p for p in report["steps"]["versions"]["pins"]}
    assert pins["transformers"]["pin"] == "==5.9.0" and pins["transformers"]["imports"]
    page = (out / "gpu-check.md").read_text()
    for step in STEPS:
        assert f"| {step} | pass |" in page
    assert "**Random weights**" in page and "## Pinned packages" in page and "## Sweep benchmark" in page


def test_a_failed_step_is_recorded_and_the_rest_run(tmp_path, monkeypatch, capsys):
    import workbench.gpu_check as gc

    ran = []
    monkeypatch.setattr(gc, "_bench", lambda s, say: (_ for _ in ()).throw(RuntimeError("CUDA out of memory\ndetails")))
    monkeypatch.setattr(gc, "_sweep", lambda s, say: ran.append("sweep") or {"report": None})
    monkeypatch.setattr(gc, "_versions", lambda: {"pins": [{"package": "transformers", "pin": "==5.9.0", "installed": "5.24.0",
                                                            "satisfies_pin": False, "imports": True, "error": None}]})
    out = tmp_path / "check"
    rc = main(["gpu-check", "--device", "cpu", "--quick", "--steps", "versions,bench,bench-sweep", "--out", str(out)])
    report = json.loads((out / "gpu-check.json").read_text())
    assert rc == 1 and not report["ok"] and ran == ["sweep"]
    assert report["steps"]["bench"] == {**report["steps"]["bench"], "ok": False, "error": "RuntimeError: CUDA out of memory"}
    assert not report["steps"]["versions"]["ok"] and report["steps"]["bench-sweep"]["ok"]
    assert "reproduce" not in report["steps"]
    page = (out / "gpu-check.md").read_text()
    assert page.startswith("# gpu-check: FAILED") and "| bench | **FAIL** |" in page and "transformers" in page
    assert "outside their pin or not importing: transformers" in page
    assert "FAILED: versions, bench" in capsys.readouterr().out


def test_settings_gpu_defaults_and_quick():
    gpu = check_settings("cpu")
    assert (gpu.twin, gpu.dtype, gpu.batches, gpu.twin_layers, gpu.compiled) == ("llama3-3b", "bfloat16", (1, 16, 64), None, True)
    assert gpu.grid() == [9, 14, 18]
    quick = check_settings("cpu", quick=True)
    assert (quick.twin, quick.twin_layers, quick.compiled, quick.peers) == ("smollm2", 2, False, False)
    assert check_settings("cpu", twin="gemma2-2b", twin_layers=3, quick=True).grid() == [2]


def test_pins_report_versions_outside_their_pin():
    assert "transformers==5.9.0" in read_pins()
    rows = {r["package"]: r for r in check_pins(["torch>=2.6", "transformers==0.0.1", "no-such-package-xyz==1.0",
                                                 "scikit-learn>=1"])}
    assert rows["torch"]["satisfies_pin"] and rows["torch"]["imports"] and rows["torch"]["module"] == "torch"
    assert not rows["transformers"]["satisfies_pin"] and rows["transformers"]["imports"]
    assert rows["no-such-package-xyz"] == {**rows["no-such-package-xyz"], "installed": None, "error": "not installed"}
    assert rows["scikit-learn"]["module"] == "sklearn" and rows["scikit-learn"]["imports"]


@pytest.mark.parametrize("argv,fragment", [
    (["--steps", ""], "unknown step ''"),
    (["--twin-layers", "40", "--twin", "smollm2"], "layers must be 1..30"),
])
def test_gpu_check_bad_input(tmp_path, capsys, argv, fragment):
    rc = main(["gpu-check", "--device", "cpu", "--quick", "--out", str(tmp_path / "gc"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "gc").exists()
