"""``reproduce conditional`` on the tiny model, and the gate's threshold choice against a brute-force count."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from workbench.cli import main
from workbench.steering.condition import best_threshold, choose_gate
from workbench.experiments.reproduce import ReproduceConfig, run_reproduce

TITLE = "detectable_format:title"
SMALL = dict(model="tiny-random-llama", quick=True, n_train=8, n_val=6, n_eval=6, max_new_tokens=4, threads=1, device="cpu",
             rule="paper")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_best_threshold_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos, neg = rng.normal(1, 1, 9).round(1), rng.normal(0, 1, 11).round(1)
        got = best_threshold(pos, neg)
        best_j = max((np.mean(pos > t) - np.mean(neg > t)) if c == ">" else (np.mean(pos < t) - np.mean(neg < t))
                     for c in (">", "<") for t in np.concatenate([pos, neg, [-9.0, 9.0]]) + 0.05)
        assert got["youden_j"] == pytest.approx(best_j)
        t, c = got["threshold"], got["compare"]
        hit = np.mean(pos > t) if c == ">" else np.mean(pos < t)
        false = np.mean(neg > t) if c == ">" else np.mean(neg < t)
        assert (hit, false) == pytest.approx((got["share_hit"], got["share_false_trigger"]))
    separable = best_threshold(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert separable == {**separable, "compare": ">", "threshold": 2.5, "youden_j": 1.0}
    flipped = best_threshold(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert flipped["compare"] == "<" and flipped["youden_j"] == 1.0


def test_choose_gate_takes_the_best_layer():
    import torch

    pos = torch.tensor([[0.0, 3.0], [0.1, 4.0]])
    neg = torch.tensor([[0.05, 1.0], [0.2, 2.0]])
    rows, chosen = choose_gate("t", pos, neg, [5, 7])
    assert chosen["gate_layer"] == 7 and chosen["youden_j"] == 1.0 and [r["chosen"] for r in rows] == [False, True]


def test_conditional_run_reports_every_set_and_matches_its_decisions(tiny, tmp_path):
    cfg = ReproduceConfig("conditional", instructions=[TITLE], out=str(tmp_path / "r"), publish=str(tmp_path / "pub"), **SMALL)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    page = json.loads((out / "config.json").read_text())["files"]["published"]
    assert page.endswith("conditional.md")  # the run's notes (the composition check) are on the published page
    assert "## notes" in open(page).read() and "every conditional response equals" in open(page).read()
    table = _rows(out / "results.csv")
    cells = {(r["prompts"], r["steering"]): r for r in table}
    assert set(cells) == {(p, s) for p in ("instructed", "uninstructed") for s in ("none", "always", "conditional")}
    assert all(r["n"] == "6" for r in table)
    assert cells[("instructed", "none")]["share_gated"] == "0.0" and cells[("instructed", "always")]["share_gated"] == "1.0"
    for p in ("instructed", "uninstructed"):
        assert cells[(p, "conditional")]["accuracy_p"] != "" and cells[(p, "conditional")]["vs_always_p"] != ""
        assert cells[(p, "always")]["accuracy_p"] != ""
    gates = _rows(out / "gates.csv")
    assert len(gates) == int(tiny.cfg.n_layers) and sum(g["chosen"] == "True" for g in gates) == 1
    chosen = next(g for g in gates if g["chosen"] == "True")
    assert float(chosen["youden_j"]) == max(float(g["youden_j"]) for g in gates)
    config = json.loads((out / "config.json").read_text())
    assert any("every conditional response equals" in n for n in config["notes"]), config["notes"]
    assert (out / "figures" / "gate_detectable_format_title.html").is_file()
    assert (out / "figures" / "conditions.html").is_file() and not any("not written" in n for n in config["notes"])
    # the gated share on instructed prompts is the gate's hit rate: the share of rows it steered
    gen = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    cond = [g for g in gen if g.get("condition") == "instruction_conditional"]
    assert len(cond) == 6


def test_conditional_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    assert main(["reproduce", "conditional", "--model", "tiny-random-llama", "--quick", "--methods", "mean",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--methods is for the estimators experiment" in err[0]


def test_a_keyword_run_publishes_beside_the_format_run():
    from workbench.experiments.reproduce import published_name

    assert published_name(ReproduceConfig("conditional")) == "conditional.md"
    assert published_name(ReproduceConfig("conditional", words=["New York", "ocean"])) == "conditional-new-york-ocean.md"
    assert published_name(ReproduceConfig("estimators", words=["music"])) == "estimators-music.md"
    assert published_name(ReproduceConfig("keywords", words=["music"])) == "keywords.md"
    # a word of any length or script names a page of its own: bounded, never the format run's name
    long = published_name(ReproduceConfig("conditional", words=["ocean" + "x" * 295]))
    assert long.startswith("conditional-oceanxx") and len(long.encode()) <= 96 + len(".md")
    assert published_name(ReproduceConfig("conditional", words=["Café"])) == "conditional-café.md"
    assert published_name(ReproduceConfig("conditional", words=["!!"])) == "conditional-_.md"


def test_a_word_rows_note_names_the_mode_they_steer_in(tiny, tmp_path):
    """``--word`` rows steer in add mode while the run's mode is project: the table note says add."""
    cfg = ReproduceConfig("conditional", words=["ocean"], out=str(tmp_path / "w"), **SMALL)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    text = (out / "results.md").read_text()
    assert {r["mode"] for r in _rows(out / "results.csv") if r["mode"]} == {"add"}
    assert "(add mode)" in text and "(project mode)" not in text
