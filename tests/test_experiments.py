"""Sweep resume, selection with the quality rule, split hygiene, transfer checks, and an end-to-end --quick run."""

from __future__ import annotations

import argparse
import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

import workbench as wb
from workbench.errors import DatasetError, LayerError, ShapeError
from workbench.experiments import SweepSettings, SweepTarget, UnitStore, default_layers, heatmap_records, run_sweep, select
from workbench.experiments.sweep import describe_selection, summarize
from workbench.experiments.cli import register
from workbench.experiments.hygiene import SplitLeakError, check_split_hygiene
from workbench.experiments.reproduce import (
    ReproduceConfig,
    Run,
    check_transferable,
    length_scale,
    quick_layers,
    run_reproduce,
)
from workbench.models.loading import ModelInfo
from workbench.models.prompts import PromptFormatter

TITLE = "detectable_format:title"


# --- the JSONL store ------------------------------------------------------------------------
def test_store_tolerates_truncated_last_line(tmp_path):
    path = tmp_path / "units.jsonl"
    store = UnitStore(path)
    store.append({"key": "a", "v": 1})
    store.append({"key": "b", "v": float("nan")})
    with open(path, "a") as f:
        f.write('{"key": "c", "v"')  # the run died while writing this line
    store = UnitStore(path)
    assert set(store.load()) == {"a", "b"} and store.get("b")["v"] is None
    store.append({"key": "c", "v": 3})  # the partial line was trimmed, so this lands on its own line
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    with open(path, "a") as f:
        f.write('{"key": "d"}')  # complete record, newline missing: kept
    assert set(UnitStore(path).load()) == {"a", "b", "c", "d"}


def test_store_refuses_corrupt_middle_line(tmp_path):
    path = tmp_path / "units.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(DatasetError, match="line 2"):
        UnitStore(path).load()


# --- sweep -----------------------------------------------------------------------------------
def test_default_and_quick_layers():
    assert default_layers(30) == list(range(6, 30, 2))
    assert default_layers(30, stride=3) == list(range(6, 30, 3))
    assert quick_layers(default_layers(30), 30) == [18, 22, 26]
    assert quick_layers(default_layers(4), 4) == [2]
    assert length_scale(1) == 1.0 and length_scale(5) == pytest.approx(0.2)


def _targets(tiny):
    train = wb.load_pairs("format", TITLE, split="train").head(4)
    val = wb.load_pairs("format", TITLE, split="validation").head(4)
    d = wb.compute_direction(tiny, train, progress=False)
    return [SweepTarget(TITLE, val, d, "add")]


SETTINGS = SweepSettings(layers=[1, 3], strengths=[4.0], max_new_tokens=2, batch_size=4, unit_size=2, max_ppl_ratio=None)


def test_sweep_resume_matches_uninterrupted_run(tiny, tmp_path, one_thread):
    targets = _targets(tiny)
    full = run_sweep(tiny, targets, SETTINGS, tmp_path / "full.jsonl")
    assert full.units_run == 6 and full.units_skipped == 0  # (1 baseline + 2 layers x 1 strength) x 2 batches

    class Interrupt(Exception):
        pass

    seen = []

    def stop_after_two(record):
        seen.append(record["key"])
        if len(seen) == 2:
            raise Interrupt

    path = tmp_path / "resumed.jsonl"
    with pytest.raises(Interrupt):
        run_sweep(tiny, targets, SETTINGS, path, on_unit=stop_after_two)
    with open(path, "a") as f:
        f.write('{"key": "' + seen[-1][:-1])  # a torn last line, as after a crash mid-write
    resumed = run_sweep(tiny, targets, SETTINGS, path)
    assert resumed.units_skipped == 2 and resumed.units_run == 4
    assert resumed.records == full.records and resumed.selection == full.selection
    assert resumed.baselines == full.baselines
    again = run_sweep(tiny, targets, SETTINGS, path)
    assert again.units_run == 0 and again.records == full.records
    for rec in heatmap_records(full):
        assert set(rec) == {"instruction_id", "layer", "coeff", "accuracy", "perplexity"}
    assert len(heatmap_records(full)) == 2


def test_select_applies_the_quality_rule():
    base = {"t": {"perplexity": 10.0, "accuracy": 0.0}}
    recs = [
        {"instruction_id": "t", "layer": 2, "coeff": 1.0, "mode": "add", "accuracy": 0.9, "perplexity": 50.0},
        {"instruction_id": "t", "layer": 4, "coeff": 1.0, "mode": "add", "accuracy": 0.5, "perplexity": 15.0},
        {"instruction_id": "t", "layer": 6, "coeff": 1.0, "mode": "add", "accuracy": 0.5, "perplexity": 12.0},
    ]
    sel, _ = select(recs, base, max_ppl_ratio=2.0)
    assert sel["t"]["layer"] == 6  # layer 2 is more accurate but fails the rule; 6 wins the tie on perplexity
    sel, _ = select(recs, base, max_ppl_ratio=None)
    assert sel["t"]["layer"] == 2
    sel, notes = select(recs, base, max_ppl_ratio=1.1)
    assert sel["t"] is None and "quality rule" in notes[0]
    for r, deg in zip(recs, (0.1, 0.9, 0.2)):
        r["degeneration"] = deg
    sel, _ = select(recs, base, max_ppl_ratio=None, max_degeneration=0.5)
    assert sel["t"]["layer"] == 2
    sel, _ = select(recs, base, max_ppl_ratio=2.0, max_degeneration=0.3, max_degeneration_gain=None)
    assert sel["t"]["layer"] == 6 and sel["t"]["rule"] == "perplexity <= 2 x unsteered, degeneration <= 0.3, accuracy > unsteered"
    assert sel["t"]["excluded_by_rule"] == ["layer 2, strength 1", "layer 4, strength 1"]
    assert sel["t"]["most_accurate_without_rule"]["layer"] == 2
    sel, _ = select(recs, base, max_ppl_ratio=2.0, max_degeneration=0.15)
    assert sel["t"] is None
    sel, _ = select(recs, base, max_ppl_ratio=None, max_perplexity=13.0)
    assert sel["t"]["layer"] == 6
    assert math.isfinite(sel["t"]["perplexity_limit"])
    sel, _ = select(recs, base, max_ppl_ratio=None, max_degeneration_gain=None)
    assert sel["t"]["perplexity_limit"] is None and sel["t"]["degeneration_limit"] is None  # strict JSON: no Infinity


def test_select_limits_repetition_relative_to_unsteered():
    """The repetition limit moves with the unsteered responses' own repetition (longer responses repeat more)."""
    recs = [{"instruction_id": "t", "layer": 2, "coeff": 1.0, "mode": "add", "accuracy": 0.6, "perplexity": 3.0, "degeneration": 0.35},
            {"instruction_id": "t", "layer": 4, "coeff": 1.0, "mode": "add", "accuracy": 0.3, "perplexity": 3.0, "degeneration": 0.2}]
    short = {"t": {"perplexity": 2.0, "accuracy": 0.0, "degeneration": 0.02, "n": 10}}
    long = {"t": {"perplexity": 2.0, "accuracy": 0.0, "degeneration": 0.2, "n": 10}}
    assert select(recs, short, max_degeneration_gain=0.2)[0]["t"]["layer"] == 4  # 0.35 > 0.02 + 0.2
    sel = select(recs, long, max_degeneration_gain=0.2)[0]["t"]
    assert sel["layer"] == 2 and sel["degeneration_limit"] == pytest.approx(0.4)
    assert select(recs, short, max_degeneration_gain=None)[0]["t"]["layer"] == 2


def test_select_never_selects_a_cell_that_adds_nothing():
    """A cell is selectable only if it beats the unsteered validation accuracy; otherwise none, and the note says why."""
    base = {"t": {"perplexity": 2.0, "accuracy": 0.3, "degeneration": 0.02, "n": 10}}
    recs = [{"instruction_id": "t", "layer": L, "coeff": 1.0, "mode": "project", "accuracy": a, "perplexity": 2.5,
             "degeneration": 0.05, "n": 10} for L, a in ((8, 0.3), (10, 0.1))]
    sel, notes = select(recs, base)
    assert sel["t"] is None and "beat the unsteered validation accuracy (30% of 10" in notes[0] and "layer 8" in notes[0]
    paper, _ = select(recs, base, max_degeneration_gain=None, beat_unsteered=False)
    assert paper["t"]["layer"] == 8  # the paper's rule reports a cell that does no better than no steering
    recs[1]["accuracy"] = 0.4
    sel, _ = select(recs, base)
    assert sel["t"]["layer"] == 10
    assert describe_selection(sel["t"]) == "layer 10, strength 1 (validation 4/10, unsteered 3/10)"
    assert describe_selection(None) == "none"


def test_summarize_keeps_the_paper_rules_selection_beside():
    recs = [{"instruction_id": "t", "layer": L, "coeff": 1.0, "mode": "add", "strict": s, "loose": s, "perplexity": [2.0] * 4,
             "degeneration": [d] * 4} for L, s, d in ((None, [False] * 4, 0.0), (3, [True] * 4, 0.6), (5, [True, False, False, False], 0.1))]
    result = summarize(recs, SweepSettings(layers=[3, 5]))
    assert result.selection["t"]["layer"] == 5 and result.paper_selection["t"]["layer"] == 3


# --- split hygiene ---------------------------------------------------------------------------
def test_builtin_splits_share_no_base_query():
    ids = {s: set(wb.load_pairs("format", TITLE, split=s).base_ids()) for s in ("train", "validation", "test")}
    assert not ids["train"] & ids["test"] and not ids["validation"] & ids["test"] and not ids["train"] & ids["validation"]
    used = [*wb.load_pairs("format", TITLE, split="train"), *wb.load_pairs("format", TITLE, split="validation")]
    check_split_hygiene(used, wb.load_pairs("format", TITLE, split="test"))


def test_split_hygiene_catches_leaks(tiny, tmp_path):
    test = wb.load_pairs("format", TITLE, split="test")
    with pytest.raises(SplitLeakError, match="split hygiene"):
        check_split_hygiene([test[0]], test)
    # same query text under another id (e.g. an --eval-data file) is a leak too
    other = wb.PairRow(prompt=test[1].prompt, prompt_without_instruction=test[1].prompt_without_instruction,
                       instruction_id=TITLE, kwargs={}, base_id="x1", eval_instruction_ids=(TITLE,), eval_kwargs=({},),
                       split="external")
    with pytest.raises(SplitLeakError):
        check_split_hygiene(list(test), [other])
    cfg = ReproduceConfig("format", model="tiny-random-llama", n_eval=5)
    run = Run(config=cfg, model=tiny, reference=tiny, out_dir=tmp_path, memo=None, say=lambda s: None)
    run.used_rows.extend(test.head(2))  # pretend a test query had been used for selection
    with pytest.raises(SplitLeakError):
        run.eval_rows("format", TITLE)


# --- transfer --------------------------------------------------------------------------------
def _fake_model(name: str, d_model: int, n_layers: int):
    info = ModelInfo(name=name, path=name, prompt_style="raw", formatter=PromptFormatter(None, "raw"))
    return SimpleNamespace(cfg=SimpleNamespace(d_model=d_model, n_layers=n_layers), workbench=info)


def test_transfer_needs_matching_shapes():
    check_transferable(_fake_model("a", 64, 4), _fake_model("b", 64, 4))
    with pytest.raises(ShapeError, match="d_model"):
        check_transferable(_fake_model("a", 64, 4), _fake_model("b", 576, 4))
    with pytest.raises(LayerError, match="layer count"):
        check_transferable(_fake_model("a", 64, 4), _fake_model("b", 64, 30))


# --- end to end ------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workbench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


SMALL = ["--n-train", "4", "--n-val", "4", "--n-eval", "4", "--max-new-tokens", "4", "--instruction", TITLE]


def test_reproduce_format_quick_end_to_end(tiny, tmp_path, capsys, one_thread):
    out = tmp_path / "results"
    assert _cli(["reproduce", "format", "--model", "tiny-random-llama", "--quick", "--device", "cpu", "--out", str(out), *SMALL]) == 0
    run_dir = out / "tiny-random-llama" / "format"
    for name in ("config.json", "generations.jsonl", "results.csv", "results.md", "sweep.jsonl", "sweep.csv", "sweep.md",
                 "selection.json", "heatmap.json", "directions/detectable_format_title.safetensors"):
        assert (run_dir / name).is_file(), name
    assert "| instruction_id | condition |" in capsys.readouterr().out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["quick"] is True and config["config"]["layers"] == [2] and config["elapsed_s"] > 0
    gens = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert {g["condition"] for g in gens} == {"no_instruction", "no_instruction_steered", "instruction", "instruction_steered"}
    assert {g["split"] for g in gens} == {"test"}
    selection = json.loads((run_dir / "selection.json").read_text())
    d = wb.Direction.load(run_dir / "directions" / "detectable_format_title.safetensors")
    # random weights never write a title: the workbench's rule selects nothing, the paper's rule still picks layer 2,
    # and the table shows the paper rule's steered rows (marked) and no steered row as if it were a selection
    assert selection[TITLE] is None and d.extra["selection"] is None
    assert d.extra["paper_selection"] == config["paper_selection"][TITLE] and config["paper_selection"][TITLE]["layer"] == 2
    with open(run_dir / "results.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["instruction_id"] == TITLE]
    assert {(r["condition"], r["rule"]) for r in rows} == {("no_instruction", ""), ("instruction", ""),
                                                           ("no_instruction_steered", "paper"), ("instruction_steered", "paper")}
    assert all(r["accuracy_p"] for r in rows if r["rule"] == "paper")  # McNemar against the same prompts unsteered
    md = (run_dir / "results.md").read_text()
    assert f"{TITLE}: none selected (no cell that passed the quality rule beat the unsteered validation accuracy" in md
    assert "the paper's rule: layer 2, strength" in md and "(validation 0/4, unsteered 0/4)" in md
    csv_before = (run_dir / "results.csv").read_text()
    # rerun on the already loaded model: the sweep resumes entirely and the tables come out the same
    lines_before = (run_dir / "sweep.jsonl").read_text()
    cfg = ReproduceConfig("format", model="tiny-random-llama", quick=True, out=str(out), n_train=4, n_val=4, n_eval=4,
                          max_new_tokens=4, instructions=[TITLE])
    run_reproduce(cfg, say=lambda s: None, model=tiny)
    assert (run_dir / "sweep.jsonl").read_text() == lines_before
    assert (run_dir / "results.csv").read_text() == csv_before


def test_eval_data_file_is_checked_for_leaks(tiny, tmp_path):
    test_rows, train_rows = wb.load_pairs("format", TITLE, split="test").head(3), wb.load_pairs("format", TITLE).head(3)
    clean, leaky = tmp_path / "clean.jsonl", tmp_path / "leaky.jsonl"
    test_rows.to_jsonl(clean)
    wb.PairDataset([*test_rows, *train_rows]).to_jsonl(leaky)
    cfg = ReproduceConfig("format", model="tiny-random-llama", n_eval=10, eval_data=str(clean))
    run = Run(config=cfg, model=tiny, reference=tiny, out_dir=tmp_path, memo=None, say=lambda s: None)
    run.used_rows.extend(train_rows)
    rows = run.eval_rows("format", TITLE)
    assert len(rows) == 3 and {r.split for r in rows} == {"external"} and rows[0].eval_instruction_ids == (TITLE,)
    run.config = ReproduceConfig("format", model="tiny-random-llama", n_eval=10, eval_data=str(leaky))
    with pytest.raises(SplitLeakError):
        run.eval_rows("format", TITLE)


def test_sweep_command_writes_selection_beside_direction(tiny, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "tiny-random-llama", "--instruction", TITLE, "--layers", "1,3", "--strengths", "1,2",
            "--mode", "add", "--n-train", "4", "--n-val", "2", "--max-new-tokens", "2", "--max-ppl-ratio", "none",
            "--threads", "1", "--rule", "paper", "--out", str(out)]
    assert _cli(argv) == 0
    selection = json.loads((out / "selection.json").read_text())[TITLE]
    assert selection is not None and wb.Direction.load(out / "direction.safetensors").extra["selection"] == selection
    assert len(json.loads((out / "heatmap.json").read_text())) == 4
    assert f"selected: layer {selection['layer']}, strength" in capsys.readouterr().out
    assert _cli(argv) == 0 and "0 units run, 5 resumed" in capsys.readouterr().out


@pytest.mark.parametrize("cfg", [
    ReproduceConfig("estimators", model="tiny-random-llama", quick=True, instructions=[TITLE, "detectable_format:number_highlighted_sections"],
                    methods=["mean", "probe"], sizes=[8, 16]),
    ReproduceConfig("keywords", model="tiny-random-llama", words=["New York", "ocean"], max_ppl_ratio=None, pack=False,
                    strengths=[1.0, 2.5], threads=1, include_only=True, max_degeneration_gain=0.3, rule="paper"),
    ReproduceConfig("length", model="tiny-random-llama", targets=[1, 3], n_train=12, layers=[1, 2], seed=3, search="fast"),
])
def test_published_command_line_reproduces_the_run_config(cfg, monkeypatch, tmp_path):
    """The command a published page names parses back into the same run configuration."""
    import shlex

    import workbench.experiments.reproduce as reproduce_module
    from workbench.cli import main
    from workbench.experiments.reproduce import command_line

    seen = []
    monkeypatch.setattr(reproduce_module, "run_reproduce", lambda c, **k: seen.append(c) or tmp_path)
    (tmp_path / "results.md").write_text("table\n")
    argv = shlex.split(command_line(cfg))[1:] + ["--out", cfg.out]
    assert main(argv) == 0
    assert seen[0] == cfg
