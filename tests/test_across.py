"""``reproduce --model all``: several models in turn and the comparison table (on the tiny model)."""

from __future__ import annotations

import argparse
import csv
import json
import shutil

import pytest

import workbench as wb
from workbench.experiments import across
from workbench.experiments.across import comparison_tables, run_across_models
from workbench.experiments.cli import register
from workbench.experiments.reproduce import ReproduceConfig, run_reproduce
from workbench.models.registry import BUILTIN_MODELS, BuiltinModel

TITLE = "detectable_format:title"
SMALL = dict(quick=True, n_train=4, n_val=4, n_eval=4, max_new_tokens=4, instructions=[TITLE], device="cpu")



@pytest.fixture
def absent_model(monkeypatch):
    spec = BuiltinModel(name="wbtest-absent", description="", source="gguf-parts", prompt_style="chat",
                        install='pip install "instruction-steering-workbench[absent]"', parts=("wbtest_absent_pkg",),
                        part_files=("data/part01.bin",))
    monkeypatch.setitem(BUILTIN_MODELS, spec.name, spec)
    return spec.name


def test_model_all_runs_each_model_and_compares(tmp_path, absent_model, one_thread):
    lines: list[str] = []
    cfg = ReproduceConfig("format", out=str(tmp_path / "results"), publish=str(tmp_path / "pub"), **SMALL)
    out = run_across_models(cfg, models=["tiny-random-llama", absent_model], say=lines.append)
    # the missing model is named in one line before anything runs, and the others still run
    assert lines[0] == ("skipping wbtest-absent: model 'wbtest-absent' is not installed: "
                        "run `pip install \"instruction-steering-workbench[absent]\"`")
    assert out == tmp_path / "results" / "all" / "format"
    run_dir = tmp_path / "results" / "tiny-random-llama" / "format"
    assert (run_dir / "results.csv").is_file()
    with open(run_dir / "results.csv", newline="") as fh:
        own = list(csv.DictReader(fh))
    with open(out / "comparison.csv", newline="") as fh:
        comp = list(csv.DictReader(fh))
    assert [r["model"] for r in comp] == ["tiny-random-llama"] * len(own)
    for a, b in zip(own, comp):  # the comparison copies the measured cells, nothing else
        assert (a["instruction_id"], a["condition"], a["accuracy"], a["perplexity"]) == (
            b["instruction_id"], b["condition"], b["accuracy"], b["perplexity"])
        assert b["n_layers"] == "4" and b["d_model"] == "64"
    md = (out / "comparison.md").read_text()
    assert "| instruction_id | condition | rule | tiny-random-llama accuracy | tiny-random-llama perplexity |" in md
    assert "wbtest-absent" in md and "not run" in md
    assert (out / "models.csv").is_file()
    page = (tmp_path / "pub" / "all" / "format.md").read_text()
    assert page.startswith("<!-- written by `workbench reproduce format --model all --quick ")
    assert "--n-train 4 --n-val 4 --n-eval 4 --max-new-tokens 4" in page.splitlines()[0]  # every flag the run was given
    assert "Wall time:" in page and "## format: models compared" in page
    assert (tmp_path / "pub" / "tiny-random-llama" / "format.md").is_file()
    assert (tmp_path / "pub" / "all" / "format.csv").read_text() == (out / "comparison.csv").read_text()


def test_comparison_puts_models_side_by_side(tmp_path, one_thread):
    cfg = ReproduceConfig("format", model="tiny-random-llama", out=str(tmp_path), **SMALL)
    first = run_reproduce(cfg, say=lambda s: None)
    second = tmp_path / "copy" / "format"
    shutil.copytree(first, second)
    res = comparison_tables("format", {"tiny-random-llama": first, "copy": second}, out_dir=tmp_path / "all" / "format")
    rows, cols, headers = res["wide"]
    assert cols[:2] == ["instruction_id", "condition"] and headers["m1_acc"] == "copy accuracy"
    assert all(r["m0_acc"] == r["m1_acc"] and r["m0_ppl"] == r["m1_ppl"] for r in rows)
    assert {r["condition"] for r in rows} >= {"no_instruction", "instruction"}


def test_model_all_on_the_command_line(tmp_path, absent_model, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(across, "REAL_MODELS", ("tiny-random-llama", absent_model))
    parser = argparse.ArgumentParser(prog="workbench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["reproduce", "format", "--model", "all", "--quick", "--device", "cpu", "--out", str(tmp_path),
                              "--n-train", "4", "--n-val", "4", "--n-eval", "4", "--max-new-tokens", "4", "--instruction", TITLE])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("skipping wbtest-absent:")
    assert "## format: models compared" in printed
    assert (tmp_path / "all" / "format" / "comparison.csv").is_file()


def test_model_all_with_nothing_installed_is_a_clear_error(tmp_path, absent_model):
    cfg = ReproduceConfig("format", out=str(tmp_path), **SMALL)
    with pytest.raises(wb.WorkbenchError, match="none of the models is installed"):
        run_across_models(cfg, models=[absent_model], say=lambda s: None)


def test_transfer_model_all_checks_shapes_before_running(monkeypatch, tmp_path):
    shapes = {"wbtest-src": ("30", "576"), "wbtest-same": ("30", "576"), "wbtest-wide": ("18", "640")}
    monkeypatch.setattr(across, "_shape", shapes.get)
    across.check_transfer_shapes("wbtest-src", ["wbtest-same", "wbtest-unknown"])  # unknown shapes are not refused
    cfg = ReproduceConfig("transfer", out=str(tmp_path), source_model="wbtest-src", map="identity", **SMALL)
    ran: list[str] = []
    monkeypatch.setattr(across, "installed_models", lambda models, say: (list(models), {}))
    with pytest.raises(wb.WorkbenchError, match=r"wbtest-wide \(18 layers, d_model 640\)"):
        run_across_models(cfg, models=["wbtest-same", "wbtest-wide"], say=ran.append)
    assert ran == []  # refused before the first model ran


def test_comparison_lines_up_each_rule_across_models(tmp_path):
    """A model whose two rules chose the same cell ('both') lines up with another model's separate workbench and paper
    rows: one comparison row per (instruction, condition, rule)."""
    from workbench.experiments.across import comparison_tables

    runs = {}
    tables = {"a": [("no_instruction", "", 0.0), ("no_instruction_steered", "both", 0.5)],
              "b": [("no_instruction", "", 0.1), ("no_instruction_steered", "workbench", 0.3),
                    ("no_instruction_steered", "paper", 0.6)]}
    for model, rows in tables.items():
        run_dir = tmp_path / model
        run_dir.mkdir()
        lines = ["instruction_id,condition,rule,n,accuracy,perplexity"]
        lines += [f"t,{c},{r},10,{a},2.0" for c, r, a in rows]
        (run_dir / "results.csv").write_text("\n".join(lines) + "\n")
        (run_dir / "config.json").write_text(json.dumps({"model": {"n_layers": 4, "d_model": 64}, "selection": {}}))
        runs[model] = run_dir
    wide, cols, _ = comparison_tables("format", runs)["wide"]
    by = {(r["condition"], r["rule"]): (r.get("m0_acc"), r.get("m1_acc")) for r in wide}
    assert by == {("no_instruction", None): (0.0, 0.1), ("no_instruction_steered", "workbench"): (0.5, 0.3),
                  ("no_instruction_steered", "paper"): (0.5, 0.6)}
