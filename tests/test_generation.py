"""Generation: KV-cached and reference loops agree token for token, batched or not, under steering."""

from __future__ import annotations

import itertools

import pytest

import workbench as wb

PROMPTS = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern at night."]


def run(model, prompts, use_cache, batch_size=3, n=10, backend="auto"):
    return wb.generate(model, prompts, max_new_tokens=n, batch_size=batch_size, use_cache=use_cache,
                       return_tokens=True, backend=backend)


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
        bridge = run(tiny, PROMPTS, True, backend="bridge")
        reference = run(tiny, PROMPTS, False)
        single = [run(tiny, [p], True, 1)[0] for p in PROMPTS]
        single_ref = [run(tiny, [p], False, 1)[0] for p in PROMPTS]
    assert cached == bridge == reference == single == single_ref
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


def test_min_new_tokens(tiny):
    eos_id = tiny.tokenizer.eos_token_id
    w_u = tiny.original_model.lm_head.weight[eos_id].detach()
    with wb.steer(tiny, w_u, layer=3, coeff=500.0):  # EOS would come first
        kw = dict(max_new_tokens=6, min_new_tokens=4, return_tokens=True)
        cached = wb.generate(tiny, PROMPTS, **kw)
        assert cached == wb.generate(tiny, PROMPTS, use_cache=False, **kw)
        assert cached == wb.generate(tiny, PROMPTS, backend="bridge", **kw)
    assert all(len(r) == 4 for r in cached)


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


def test_backends(tiny, random_unit):
    plain = run(tiny, PROMPTS, True, backend="plain")
    assert plain == run(tiny, PROMPTS, True, backend="bridge")
    # composition of specs at two layers, and resid_pre, on both backends
    specs = [wb.SteeringSpec(unit=random_unit, layer=1, coeff=5.0), wb.SteeringSpec(unit=-random_unit, layer=3, coeff=4.0, hook="resid_pre")]
    with wb.steer(tiny, *specs):
        steered = run(tiny, PROMPTS, True, backend="plain")
        assert steered == run(tiny, PROMPTS, True, backend="bridge") == run(tiny, PROMPTS, False)
    assert steered != plain
    # resid_mid steering and hand-added hooks only run on the bridge
    with wb.steer(tiny, random_unit, layer=2, coeff=5.0, hook="resid_mid"):
        with pytest.raises(wb.WorkbenchError, match="backend='bridge'"):
            run(tiny, PROMPTS, True, backend="plain")
        assert run(tiny, PROMPTS, True) == run(tiny, PROMPTS, False)
    handle = tiny.hook_dict["blocks.1.hook_resid_post"].register_forward_hook(lambda m, i, o: o + 3.0)
    try:
        assert run(tiny, PROMPTS, True) == run(tiny, PROMPTS, False) != plain
    finally:
        handle.remove()
    with pytest.raises(wb.WorkbenchError, match="unknown backend"):
        run(tiny, PROMPTS, True, backend="vllm")


def test_compiled_backend_matches_plain(tiny, random_unit):
    """The compiled static-cache step gives the plain path's greedy tokens under every kind of steering."""
    from torch._dynamo.utils import counters

    def both(**kw):
        plain = wb.generate(tiny, PROMPTS, max_new_tokens=10, batch_size=3, return_tokens=True, backend="plain", **kw)
        compiled = wb.generate(tiny, PROMPTS, max_new_tokens=10, batch_size=3, return_tokens=True, backend="compiled", **kw)
        assert compiled == plain
        return compiled

    baseline = both()
    acts = wb.collect_activations(tiny, PROMPTS, layers=[1], progress=False)[:, 0]
    vec = acts.mean(0)
    graphs = None
    for mode, positions in itertools.product(["add", "project", "ablate"], ["all", "prompt", "generated"]):
        with wb.steer(tiny, vec, layer=1, coeff=6.0, mode=mode, positions=positions, target=-float(vec.norm())):
            assert both() != baseline or positions == "prompt"
        # one direction at one layer compiles once: other modes, strengths and positions reuse the step
        graphs = counters["stats"]["unique_graphs"] if graphs is None else graphs
        assert counters["stats"]["unique_graphs"] == graphs
    with wb.steer(tiny, random_unit, layer=3, coeff=-5.0):  # another layer: still no new compile
        both()
    assert counters["stats"]["unique_graphs"] == graphs
    # two directions at one layer, and resid_pre beside resid_post
    with wb.steer(tiny, wb.SteeringSpec(unit=random_unit, layer=2, coeff=5.0), wb.SteeringSpec(unit=vec / vec.norm(), layer=2, mode="ablate")):
        both()
    with wb.steer(tiny, wb.SteeringSpec(unit=random_unit, layer=1, coeff=5.0), wb.SteeringSpec(unit=-random_unit, layer=3, coeff=4.0, hook="resid_pre")):
        assert both() == run(tiny, PROMPTS, False)
    # EOS handling and min_new_tokens
    w_u = tiny.original_model.lm_head.weight[tiny.tokenizer.eos_token_id].detach()
    with wb.steer(tiny, w_u, layer=3, coeff=500.0):
        assert both() == [[], [], []]
        assert [len(r) for r in both(min_new_tokens=4)] == [4, 4, 4]
    with wb.steer(tiny, random_unit, layer=2, coeff=5.0, hook="resid_mid"):
        with pytest.raises(wb.WorkbenchError, match="backend='compiled' cannot"):
            run(tiny, PROMPTS, True, backend="compiled")
