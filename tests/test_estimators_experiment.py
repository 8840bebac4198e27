"""``reproduce estimators`` on the tiny model: one activation pass, every method selected and evaluated alike."""

from __future__ import annotations

import csv
import json

import pytest

import workbench.experiments.run as run_module
from workbench.cli import main
from workbench.experiments.reproduce import ReproduceConfig, run_reproduce

TITLE = "detectable_format:title"
SMALL = dict(model="tiny-random-llama", quick=True, n_train=8, n_val=4, n_eval=4, max_new_tokens=4, threads=1, device="cpu")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_estimators_run_compares_every_method_on_one_activation_pass(tiny, tmp_path, monkeypatch):
    calls: list[int] = []
    real = run_module.collect_activations
    monkeypatch.setattr(run_module, "collect_activations", lambda model, prompts, **k: calls.append(len(prompts)) or real(model, prompts, **k))
    methods = ["mean", "pca", "probe", "whitened", "random"]
    cfg = ReproduceConfig("estimators", instructions=[TITLE], methods=methods, sizes=[4, 8], rule="paper",
                          out=str(tmp_path / "r"), **SMALL)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    assert calls == [8, 8]  # the with and without prompts once: every method and every curve point reuse them
    table = _rows(out / "results.csv")
    unsteered = [r for r in table if not r["method"]]
    assert sorted(r["condition"] for r in unsteered) == ["instruction", "no_instruction"]  # once, not per method
    steered = {(r["method"], r["condition"]): r for r in table if r["method"]}
    assert set(steered) == {(m, c) for m in methods for c in ("no_instruction_steered", "instruction_steered")}
    for (m, c), r in steered.items():
        assert r["accuracy_p"] != ""  # against no steering
        assert (r["vs_mean_p"] != "") == (m != "mean")  # against the mean method's same condition
        assert (r["vs_prompt_p"] != "") == (c == "no_instruction_steered")  # against the instruction in the prompt
    curve = _rows(out / "sample_efficiency.csv")
    assert {(r["method"], r["n_pairs"]) for r in curve} == {(m, n) for m in methods for n in ("4", "8")}
    assert all(r["accuracy_lo"] != "" for r in curve)
    cosine = _rows(out / "method_cosine.csv")
    assert {r["method"] for r in cosine} == set(methods) - {"mean"} and len(cosine) == 4 * 4
    config = json.loads((out / "config.json").read_text())
    assert set(config["selection"]) == {f"{TITLE}@{m}" for m in methods}
    assert (out / "figures" / "sample_efficiency_detectable_format_title.html").is_file()
    assert (out / "figures" / "method_cosine_detectable_format_title.html").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "mean,lda"], "unknown direction method 'lda'"),
    (["--methods", "mean,probe", "--n-train", "3"], "direction method 'probe' needs at least 4 pairs, got 3"),
    (["--methods", "mean,,pca"], "--methods: an empty name"),
])
def test_estimators_bad_input_is_one_line_before_any_work(tmp_path, capsys, args, message):
    assert main(["reproduce", "estimators", "--model", "tiny-random-llama", "--quick", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: error:") and message in err[0]
    assert not (tmp_path / "o").exists()
    assert main(["reproduce", "format", "--methods", "mean", "--model", "tiny-random-llama", "--out", str(tmp_path / "o")]) == 2
    assert "--methods is for the estimators experiment" in capsys.readouterr().err


def test_estimators_word_alone_compares_that_word_only(tiny, tmp_path):
    """``--word W`` without ``--instruction`` runs W's estimators only (not the preset's title beside it), and the
    published command parses back into the same run."""
    from workbench.experiments.coverage import evaluation_sets
    from workbench.experiments.reproduce import command_line

    cfg = ReproduceConfig("estimators", words=["music"], mode="add", methods=["mean", "random"], sizes=[8], strengths=[1.0],
                          out=str(tmp_path / "r"), **SMALL)
    assert not cfg.resolved(4).instructions and [s.name for s in evaluation_sets(cfg)] == ["include:music"]
    both = ReproduceConfig("estimators", quick=True, words=["music"], instructions=[TITLE])
    assert [s.name for s in evaluation_sets(both)] == [TITLE, "include:music"] and both.resolved(4).instructions == [TITLE]
    assert ReproduceConfig("estimators", quick=True).resolved(4).instructions == [TITLE]  # the preset without --word
    assert "--instruction" not in command_line(cfg) and "--word music" in command_line(cfg)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    assert {r["instruction_id"] for r in _rows(out / "results.csv")} == {"include:music"}
    assert set(json.loads((out / "config.json").read_text())["selection"]) <= {"include:music@mean", "include:music@random"}
