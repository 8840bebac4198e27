"""``workbench bench-sweep`` on the tiny model: the three variants record the same units and report their times."""

from __future__ import annotations

import json

from workbench.experiments.bench_sweep import VARIANTS, markdown, run_sweep_bench


def test_bench_sweep_reports_identical_packed_responses(tmp_path, one_thread):
    out = tmp_path / "bench.json"
    report = run_sweep_bench("tiny-random-llama", layers=[1, 2], n_train=4, n_val=4, max_new_tokens=4, unit_size=2,
                             search_keep=1, out=out, say=lambda line: None)
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == list(VARIANTS)
    one, packed, fast = (rows[v] for v in VARIANTS)
    assert one["units"] == packed["units"] == 2 + 2 * 2  # unsteered baseline, then 2 layers x 1 strength, 2 units each
    assert fast["units"] == 2 + 2 and len(fast["decoded_layers"]) == 1  # the baseline and the one layer kept
    assert report["identical_responses"] == {"same": 4 * 3, "total": 4 * 3}  # greedy packed rows equal their units alone
    assert packed["same_selection"] and one["max_batch"] is None and packed["max_batch"] == 160
    for r in rows.values():
        # parts of the variant's wall time (seconds is rounded to 0.1, the parts to 0.01)
        assert r["decode_s"] > 0 and r["perplexity_s"] > 0 and r["decode_s"] + r["perplexity_s"] <= r["seconds"] + 0.06
    assert json.loads(out.read_text())["rows"][1]["variant"] == VARIANTS[1]
    assert "| packed (max batch 160) | 6 |" in markdown(report)
