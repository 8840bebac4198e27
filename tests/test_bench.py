"""The benchmark runs end to end (on the tiny model, tiny sizes) and reports every row and ratio."""

from __future__ import annotations

import json

import torch

from workbench.bench import markdown, memory_bandwidth_gbs, run_bench, weight_bytes


def test_bench_report(tmp_path, tiny):
    out = tmp_path / "bench.json"
    report = run_bench("tiny-random-llama", device="cpu", batches=(1, 2), lengths=(4,), n_extract=6, out=out, say=lambda s: None)
    saved = json.loads(out.read_text())
    assert saved["rows"] == report["rows"]
    variants = {(r["variant"], r["batch"]) for r in report["rows"] if r["task"] == "generate"}
    assert len([v for v in variants if v[0].startswith("workbench")]) == 6  # three variants at two batch sizes
    assert report["compiled_first_call_seconds"].keys() == {"b1 x4", "b2 x4"}
    assert any(v[0].startswith("reference") for v in variants)
    assert len([r for r in report["rows"] if r["task"] == "extract"]) == 3
    assert all(r["throughput"] > 0 and r["seconds"] > 0 for r in report["rows"])
    measured = [p for p, e in report["peers"].items() if e["tokens_equal_workbench"] is not None]  # peers with rows
    assert all(report["peers"][p]["tokens_equal_workbench"] for p in measured)
    assert len(report["ratios"]) == 7 + 3 * len(measured) and all(v > 0 for v in report["ratios"].values())
    assert "| ratio | value |" in markdown(report)


def test_weight_bytes_and_bandwidth(tiny):
    n = sum(p.numel() for p in tiny.original_model.parameters())
    assert weight_bytes(tiny) == 4 * n  # float32, nothing tied in the tiny model
    assert memory_bandwidth_gbs("cpu", n_bytes=8 * 2**20, repeats=2) > 0.1
    assert torch.get_num_threads() >= 1
