"""Packed sweeps: units sharing decode batches record what one unit at a time records, resume after a kill."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from records import assert_same_records
import torch

import workbench as wb
from workbench.errors import ShapeError, WorkbenchError
from workbench.experiments import SweepSettings, SweepTarget, run_sweep
from workbench.experiments.conditions import GenerationMemo
from workbench.experiments.sweep import plan_units
from workbench.experiments.units import pack_units

SETTINGS = SweepSettings(layers=[1, 2, 3], strengths=[2.0, 6.0], max_new_tokens=6, batch_size=4, unit_size=2,
                         max_ppl_ratio=None)


@pytest.fixture(scope="module")
def targets(tiny):
    """Two targets with different prompts and modes."""
    out = []
    for iid, mode in (("detectable_format:title", "add"), ("change_case:english_lowercase", "project")):
        train = wb.load_pairs("format", iid, split="train").head(4)
        val = wb.load_pairs("format", iid, split="validation").head(4)
        out.append(SweepTarget(iid, val, wb.compute_direction(tiny, train, progress=False), mode))
    return out


def _records(path):
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_packed_sweep_records_what_one_unit_at_a_time_records(tiny, targets, tmp_path, one_thread):
    one = run_sweep(tiny, targets, replace(SETTINGS, pack=False), tmp_path / "one.jsonl")
    packed = run_sweep(tiny, targets, replace(SETTINGS, max_batch=9), tmp_path / "packed.jsonl")  # packs of 4 units
    a, b = _records(tmp_path / "one.jsonl"), _records(tmp_path / "packed.jsonl")
    assert a.keys() == b.keys() and len(a) == 2 * (1 + 3 * 2) * 2
    assert_same_records(a, b)  # a packed response's perplexity starts at its steered layer: float noise only
    assert_same_records([packed.records, packed.selection, packed.baselines], [one.records, one.selection, one.baselines])
    assert len({tuple(r["responses"]) for r in a.values()}) > 8, "cells should decode differently"
    assert packed.stats["max_batch"] == 9 and one.stats["max_batch"] is None
    assert packed.stats["packs"] == 7 and one.stats["packs"] == 28  # 28 units: packs of 4, or one a pack


def test_killed_packed_sweep_loses_one_pack_and_resumes_to_the_same_tables(tiny, targets, tmp_path, monkeypatch, one_thread):
    settings = replace(SETTINGS, max_batch=8)
    full = run_sweep(tiny, targets, settings, tmp_path / "full.jsonl")
    real = GenerationMemo.generate_many
    calls = []

    def dies_on_the_third_pack(self, requests, max_new_tokens=None):
        calls.append(len(requests))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third pack decodes
        return real(self, requests, max_new_tokens)

    monkeypatch.setattr(GenerationMemo, "generate_many", dies_on_the_third_pack)
    path = tmp_path / "killed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny, targets, settings, path)
    assert len(_records(path)) == calls[0] + calls[1] == 8  # the first two packs were recorded, the third lost
    monkeypatch.setattr(GenerationMemo, "generate_many", real)
    resumed = run_sweep(tiny, targets, settings, path)
    assert resumed.units_skipped == 8 and resumed.units_run == 20
    assert_same_records([resumed.records, resumed.selection], [full.records, full.selection])


def test_pack_units_keeps_units_whole_and_units_of_one_prompt_batch_together(tiny, targets):
    units = plan_units(tiny, targets, SETTINGS)
    packs = pack_units(units, 5)
    assert sorted(u.key for p in packs for u in p) == sorted(u.key for u in units)
    assert all(sum(len(u.prompts) for u in p) <= 5 for p in packs)
    assert all(len({u.prompts for u in p}) == 1 for p in packs)  # 2 units of 2 prompts per pack, same prompts
    assert len(pack_units(units, 1)) == len(units)  # a unit larger than the pack size goes alone


def test_bad_sweep_settings_fail_before_any_work(tiny, targets, tmp_path):
    for kw, match in ((dict(max_batch=0), "max_batch must be a positive integer"), (dict(layers=[]), "no layers"),
                      (dict(strengths=[]), "no strengths"), (dict(search="quick"), "unknown search"),
                      (dict(search_keep=0), "search_keep")):
        with pytest.raises(WorkbenchError, match=match):
            replace(SETTINGS, **kw)
    d = targets[0].direction
    other = replace(targets[0], direction=replace(d, vectors=torch.randn(len(d.layers), 7), d_model=7))
    with pytest.raises((ShapeError, WorkbenchError), match="d_model"):
        run_sweep(tiny, [other], SETTINGS, tmp_path / "s.jsonl")
    assert not (tmp_path / "s.jsonl").exists() or not (tmp_path / "s.jsonl").read_text()
    # the memo decodes, so its packing must be the settings' (one switch, not two that may disagree)
    memo = GenerationMemo(tiny, SETTINGS.max_new_tokens, SETTINGS.batch_size, pack=False)
    with pytest.raises(WorkbenchError, match=r"memo packs with \(pack=False"):
        run_sweep(tiny, targets, SETTINGS, tmp_path / "m.jsonl", memo=memo)
    assert memo.calls == 0


def test_fast_search_decodes_only_the_shortlisted_layers(tiny, targets, tmp_path, one_thread):
    settings = replace(SETTINGS, search="fast", search_keep=1, max_batch=16)
    result = run_sweep(tiny, targets, settings, tmp_path / "fast.jsonl")
    assert len(result.search) == 2 * 3 * 2  # every cell of both targets scored
    for t in targets:
        decoded = {r["layer"] for r in result.search if r["instruction_id"] == t.name and r["decoded"]}
        best = max((r for r in result.search if r["instruction_id"] == t.name), key=lambda r: (r["score"], -r["layer"]))
        assert decoded == {best["layer"]}
        assert {r["layer"] for r in result.records if r["instruction_id"] == t.name} == decoded
        assert result.selection[t.name] is None or result.selection[t.name]["layer"] == best["layer"]
    assert result.units_run == 2 * (1 + 1 * 2) * 2  # baseline + one layer x two strengths, two batches each
