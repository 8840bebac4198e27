"""Generation: KV-cached and reference loops agree token for token, batched or not, under steering."""

from __future__ import annotations

import itertools

import pytest
import torch

import workbench as wb

PROMPTS = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern at night."]


def run(model, prompts, use_cache, batch_size=3, n=10):
    return wb.generate(model, prompts, max_new_tokens=n, batch_size=batch_size, use_cache=use_cache, return_tokens=True)


def test_cache_matches_reference_unsteered(tiny):
    cached = run(tiny, PROMPTS, True)
    assert cached == run(tiny, PROMPTS, False)
    assert cached == [run(tiny, [p], True, 1)[0] for p in PROMPTS]
    assert all(0 < len(r) <= 10 for r in cached)


@pytest.mark.parametrize("mode,positions", list(itertools.product(["add", "project", "ablate"], ["all", "prompt", "generated"])))
def test_cache_matches_reference_under_steering(tiny, mode, positions):
    # a direction with a large component in the real residual stream, so every mode matters
    acts = wb.collect_activations(tiny, PROMPTS, layers=[1], progress=False)[:, 0]
    vec = acts.mean(0)
    kw = dict(layer=1, coeff=6.0, mode=mode, positions=positions, target=-float(vec.norm()))
    baseline = run(tiny, PROMPTS, True)
    with wb.steer(tiny, vec, **kw):
        cached = run(tiny, PROMPTS, True)
        reference = run(tiny, PROMPTS, False)
        single = [run(tiny, [p], True, 1)[0] for p in PROMPTS]
        single_ref = [run(tiny, [p], False, 1)[0] for p in PROMPTS]
    assert cached == reference == single == single_ref
    assert cached != baseline, "this steering should change the greedy output"
    if positions == "generated":  # the first new token is predicted from prompt positions only
        assert [r[0] for r in cached] == [r[0] for r in baseline]


def test_text_output_and_eos(tiny):
    texts = wb.generate(tiny, PROMPTS[:2], max_new_tokens=5)
    tokens = run(tiny, PROMPTS[:2], True, n=5)
    assert texts == [tiny.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


def test_stops_at_eos(tiny):
    eos_id = tiny.tokenizer.eos_token_id
    # push the unembedding towards EOS through a steering vector along its unembedding row
    w_u = tiny.original_model.lm_head.weight[eos_id].detach()
    with wb.steer(tiny, w_u, layer=3, coeff=500.0):
        out = run(tiny, PROMPTS, True)
        ref = run(tiny, PROMPTS, False)
    assert out == ref == [[], [], []]


def test_sampling_is_seeded(tiny):
    a = wb.generate(tiny, PROMPTS, max_new_tokens=8, do_sample=True, seed=3, return_tokens=True)
    b = wb.generate(tiny, PROMPTS, max_new_tokens=8, do_sample=True, seed=3, return_tokens=True)
    c = wb.generate(tiny, PROMPTS, max_new_tokens=8, do_sample=True, seed=4, return_tokens=True)
    assert a == b and a != c


def test_bad_generation_input(tiny):
    with pytest.raises(wb.WorkbenchError, match="no prompts"):
        wb.generate(tiny, [])
    with pytest.raises(wb.WorkbenchError, match="max_new_tokens"):
        wb.generate(tiny, PROMPTS, max_new_tokens=0)
    with pytest.raises(wb.WorkbenchError, match="temperature"):
        wb.generate(tiny, PROMPTS, do_sample=True, temperature=0)
