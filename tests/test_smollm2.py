"""Integration tests on the embedded SmolLM2-135M-Instruct: real steering effects and exactness."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.evaluation import follow_rate

pytestmark = pytest.mark.integration

TITLE = "detectable_format:title"


@pytest.fixture(scope="module")
def title_direction(smol):
    train = wb.load_pairs("format", TITLE, split="train")
    return wb.compute_direction(smol, train, progress=False)


def test_title_direction_raises_title_rate(smol, title_direction):
    """Project-mode steering at layer 26 makes responses without the instruction carry a <<title>>."""
    evals = wb.load_pairs("format", TITLE, split="validation").head(20)
    assert len(evals) == 20
    prompts = evals.prompts_without_instruction()
    unsteered = wb.generate(smol, prompts, max_new_tokens=48, batch_size=10)
    with wb.steer(smol, title_direction, layer=26, mode="project"):
        steered = wb.generate(smol, prompts, max_new_tokens=48, batch_size=10)
    before, after = follow_rate(evals, unsteered), follow_rate(evals, steered)
    assert before <= 0.05
    assert after >= before + 0.2, (before, after, steered[:3])


def test_title_direction_statistics(title_direction, smol):
    assert title_direction.n_pairs == 120 and title_direction.layers == tuple(range(30))
    gap = title_direction.proj_with - title_direction.proj_without
    assert torch.allclose(gap, title_direction.norms, rtol=1e-3)
    assert int(title_direction.norms.argmax()) >= 20  # the instruction is written late in the network


def test_cached_equals_reference_under_steering(smol, title_direction):
    prompts = ["Describe a sunrise.", "Give me advice on learning to cook well."]
    for kw in (dict(layer=20, coeff=60.0, mode="add", positions="all"), dict(layer=26, mode="project", positions="generated")):
        baseline = wb.generate(smol, prompts, max_new_tokens=12, return_tokens=True)
        with wb.steer(smol, title_direction, **kw):
            cached = wb.generate(smol, prompts, max_new_tokens=12, return_tokens=True)
            reference = wb.generate(smol, prompts, max_new_tokens=12, use_cache=False, return_tokens=True)
            compiled = wb.generate(smol, prompts, max_new_tokens=12, return_tokens=True, backend="compiled")
        assert cached == reference == compiled
        assert cached != baseline


def test_batched_activations_match_single(smol):
    prompts = ["Hi.", "Explain why the sky is blue in two sentences.", "Write a story about a fox who finds a lantern."]
    batched = wb.collect_activations(smol, prompts, batch_size=3, progress=False)
    single = torch.cat([wb.collect_activations(smol, [p], progress=False) for p in prompts])
    rel = (batched - single).abs().max() / single.abs().max()
    assert rel < 1e-4
    bridge = wb.collect_activations(smol, prompts, backend="bridge", progress=False)  # no shared prefix, eager attention
    assert (batched - bridge).abs().max() / bridge.abs().max() < 1e-4


def test_demo_runs_end_to_end(tmp_path, smol):
    from workbench.demo import DEMO_INSTRUCTIONS, run_demo

    lines: list[str] = []
    results = run_demo(n_eval=2, n_train=4, out_dir=tmp_path / "figures", results_dir=tmp_path / "results",
                       instructions=DEMO_INSTRUCTIONS[:2], say=lines.append)
    assert len(results) == 2 and all(r.n_eval == 2 for r in results)
    assert list((tmp_path / "figures").glob("*.html"))
    assert (tmp_path / "results" / "summary.json").is_file()
    assert any("| instruction |" in line for line in lines)
