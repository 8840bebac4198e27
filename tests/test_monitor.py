"""The compliance monitor: projections equal an independent computation, AUROC equals scikit-learn's, nulls, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.analysis.monitor import _pairwise_auc, auroc_interval, compliance_monitor, monitor, monitor_figure
from workbench.cli import main
from workbench.errors import DatasetError, ShapeError

TITLE = "detectable_format:title"


@pytest.fixture(scope="module")
def title(tiny):
    return wb.compute_direction(tiny, wb.load_pairs("format", TITLE, split="train").head(8), progress=False)


def test_projection_is_the_last_token_state_on_the_unit_direction(tiny, title):
    prompts = ["Write a poem about rain. Add a title in <<double brackets>>.", "Write a poem about rain."]
    proj = monitor(tiny, title, prompts, layers=[1, 3])
    acts = wb.collect_activations(tiny, prompts, layers=[1, 3], progress=False)  # independent: the cached states
    expected = torch.stack([acts[:, i] @ title.at(layer).unit for i, layer in enumerate([1, 3])], dim=1)
    assert proj.projections.shape == (2, 2) and torch.allclose(proj.projections, expected, atol=1e-5)
    with pytest.raises(DatasetError, match="non-empty list of prompts"):
        monitor(tiny, title, "one string")
    with pytest.raises(ShapeError, match="no vector at layer"):
        monitor(tiny, _only(title, [1]), prompts, layers=[3])


def test_generated_projections_are_each_response_token_state(tiny, title):
    """Per generated token: the residual stream at that token's position when prompt + response run as one sequence."""
    prompts = ["Write a poem about rain.", "Hi."]
    got = monitor(tiny, title, prompts, layers=[1, 3], generated=True, max_new_tokens=5)
    tokens = wb.generate(tiny, prompts, max_new_tokens=5, return_tokens=True)
    assert got.responses == wb.generate(tiny, prompts, max_new_tokens=5)
    rows = wb.model_info(tiny).formatter.token_rows(prompts)
    for i, (row, response) in enumerate(zip(rows, tokens)):
        assert got.generated[i].shape == (len(response), 2)
        _, cache = tiny.run_with_cache(torch.tensor([row + response]), names_filter=lambda n: n.endswith("resid_post"))
        for j, layer in enumerate([1, 3]):
            states = cache[f"blocks.{layer}.hook_resid_post"][0, len(row):].float()
            assert torch.allclose(got.generated[i][:, j], states @ title.at(layer).unit, atol=1e-4)
    assert torch.allclose(got.projections, monitor(tiny, title, prompts, layers=[1, 3]).projections)


def _only(d, layers):
    from dataclasses import replace

    idx = [list(d.layers).index(x) for x in layers]
    return replace(d, vectors=d.vectors[idx], layers=tuple(layers), proj_with=None, proj_without=None)


def test_auroc_matches_sklearn_and_its_interval_covers_it():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.4
    s = rng.normal(size=60) + 1.2 * y
    s[:5] = s[5]  # ties count half, as in scikit-learn
    auc, lo, hi = auroc_interval(s, y, n_boot=500)
    assert auc == pytest.approx(roc_auc_score(y, s)) and lo <= auc <= hi and 0.5 < auc
    assert float(_pairwise_auc(s[y], s[~y])) == pytest.approx(roc_auc_score(y, s))
    assert all(np.isnan(auroc_interval(s, np.ones(60, bool))))  # one class only: no AUROC
    perfect = auroc_interval([0, 1, 2, 3], [False, False, True, True])
    assert perfect == (1.0, 1.0, 1.0)


def test_compliance_monitor_scores_presence_and_compliance_per_layer(tiny, title):
    pairs = wb.load_pairs("format", TITLE, split="validation").head(6)
    res = compliance_monitor(tiny, title, pairs, max_new_tokens=4, n_boot=200)
    assert res.layers == [0, 1, 2, 3] and len(res.presence) == 4 and len(res.followed) == 6
    ys = [True] * 6 + [False] * 6
    for i in range(4):  # presence AUROC is the AUROC of the very projections kept in the result
        scores = torch.cat([res.with_proj[:, i], res.without_proj[:, i]]).numpy()
        assert res.presence[i][0] == pytest.approx(auroc_interval(scores, ys, n_boot=10)[0])
    assert not any(res.followed) and all(np.isnan(a) for a, _, _ in res.compliance)  # random weights: no titles
    rows = res.summary()
    assert rows[0]["compliance"] is None and 0 <= rows[1]["presence"] <= 1 and "presence_null_lo" in rows[1]
    assert len(monitor_figure(res).data) >= 6
    with pytest.raises(DatasetError, match="at least 2 pairs"):
        compliance_monitor(tiny, title, pairs.head(1))


def test_analyze_monitor_cli_writes_record_and_figure(tmp_path, capsys):
    out = tmp_path / "figs"
    argv = ["analyze", "monitor", "--model", "tiny-random-llama", "--n-train", "8", "--n-monitor", "4", "--max-new-tokens", "4",
            "--no-images", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "analysis_monitor_title.json").read_text())
    assert record["n_pairs"] == 4 and len(record["per_layer"]) == 4 and record["max_new_tokens"] == 4
    assert (out / "analysis_monitor_title.html").is_file()
    assert main(["analyze", "attention", "--n-monitor", "4", "--model", "tiny-random-llama", "--out", str(out)]) == 2
    assert "--n-monitor is for monitor" in capsys.readouterr().err
