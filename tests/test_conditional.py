"""Conditional steering: each row is steered only if its own prompt passes the gate, on every decoding path."""

from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from workbench.steering import ConditionError, SteeringSpec

PROMPTS = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern at night.",
           "List three colours."]
N = 8
PATHS = [dict(backend="plain"), dict(backend="bridge"), dict(use_cache=False), dict(backend="compiled")]


def _unit(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.fixture(scope="module")
def setup(tiny):
    """A steering spec at layer 1 and a gate read at layer 3 (after it) whose threshold lets exactly one row through."""
    d = int(tiny.cfg.d_model)
    spec = SteeringSpec(unit=_unit(d, 1), layer=1, coeff=8.0)
    probe = wb.Condition(_unit(d, 2), layer=3, threshold=0.0)
    scores = probe.scores(tiny, PROMPTS)
    top = int(scores.argmax())
    second = float(scores.sort(descending=True).values[1])
    gate = wb.Condition(_unit(d, 2), layer=3, threshold=(second + float(scores.max())) / 2)
    return spec, gate, top, scores


def _gen(model, prompts, **kw):
    return wb.generate(model, prompts, max_new_tokens=N, batch_size=len(prompts), return_tokens=True, **kw)


@pytest.mark.parametrize("kw", PATHS, ids=["plain", "bridge", "reference", "compiled"])
def test_only_the_row_that_passes_is_steered(tiny, setup, kw):
    spec, gate, top, _ = setup
    unsteered = _gen(tiny, PROMPTS, **kw)
    with wb.steer(tiny, spec):
        steered = _gen(tiny, PROMPTS, **kw)
    with wb.steer(tiny, spec, condition=gate) as block:
        got = _gen(tiny, PROMPTS, **kw)
    assert block.last.steered.tolist() == [i == top for i in range(len(PROMPTS))]
    assert steered[top] != unsteered[top], "the spec should change the passing row"
    assert got == [steered[i] if i == top else unsteered[i] for i in range(len(PROMPTS))]


def test_packed_rows_and_open_blocks_compose(tiny, setup):
    """Conditional specs come after the unconditional block's and before the call's own row steering; the gate reads
    the prompt with the unconditional block applied (it steers layer 2, before the gate's layer 3)."""
    spec, gate, _, scores = setup
    d = int(tiny.cfg.d_model)
    outer = SteeringSpec(unit=gate.unit, layer=2, coeff=0.5)  # lifts the gate's reading: one more row passes
    extra = SteeringSpec(unit=_unit(d, 6), layer=0, coeff=4.0)
    rows = [[extra] if i % 2 else [] for i in range(len(PROMPTS))]
    with wb.steer(tiny, outer):
        passes = gate.holds(gate.scores(tiny, PROMPTS)).tolist()
    assert passes != gate.holds(scores).tolist() and any(passes), "the outer block should move the gate's reading"
    expected = [[outer] + ([spec] if passes[i] else []) + rows[i] for i in range(len(PROMPTS))]
    want = _gen(tiny, PROMPTS, row_steering=expected)
    with wb.steer(tiny, outer), wb.steer(tiny, spec, condition=gate) as block:
        got = _gen(tiny, PROMPTS, row_steering=rows)
    assert block.last.steered.tolist() == passes
    assert got == want


def test_decision_ignores_position_and_batch(tiny, setup):
    spec, gate, top, scores = setup
    order = [3, 1, 0, 2]
    prompts = [PROMPTS[i] for i in order] + ["Name a planet.", "Describe rain."]
    with wb.steer(tiny, spec, condition=gate) as block:
        alone = _gen(tiny, [PROMPTS[top]])
        assert block.last.steered.tolist() == [True]
        mixed = _gen(tiny, prompts, )
    decisions = block.last.steered.tolist()
    assert decisions[: len(order)] == [i == top for i in order]
    assert torch.allclose(block.last.projections[: len(order)], scores[order], atol=1e-5)
    assert mixed[order.index(top)] == alone[0]
    assert len(block.calls) == 2 and block.last.rows()[0]["prompt"] == prompts[0]


def test_gate_reads_the_prompt_without_conditional_steering(tiny, setup):
    """Steering at layer 1 happens before the gate's layer 3, yet the decision reads the unsteered prompt."""
    spec, gate, _, scores = setup
    with wb.steer(tiny, spec, condition=gate) as block:
        _gen(tiny, PROMPTS)
    assert torch.allclose(block.last.projections, scores, atol=1e-5)


def test_mean_reads_every_prompt_token(tiny):
    u = _unit(int(tiny.cfg.d_model), 4)
    gate = wb.Condition(u, layer=2, on="mean")
    got = gate.scores(tiny, PROMPTS[:2])
    for i, prompt in enumerate(PROMPTS[:2]):
        ids = torch.tensor([wb.model_info(tiny).formatter.token_rows([prompt])[0]])
        _, cache = tiny.run_with_cache(ids, names_filter="blocks.2.hook_resid_post")
        want = float(cache["blocks.2.hook_resid_post"][0].float().mean(0) @ u)
        assert math.isclose(float(got[i]), want, rel_tol=1e-4, abs_tol=1e-5)


def test_bad_conditions_fail_in_one_line(tiny):
    u = _unit(int(tiny.cfg.d_model), 2)
    with pytest.raises(ConditionError, match="threshold is nan"):
        wb.Condition(u, layer=1, threshold=float("nan"))
    with pytest.raises(ConditionError, match="threshold is inf"):
        wb.Condition(u, layer=1, threshold=float("inf"))
    with pytest.raises(ConditionError, match="unknown comparison '>='"):
        wb.Condition(u, layer=1, compare=">=")
    with pytest.raises(ConditionError, match="unknown on='first'"):
        wb.Condition(u, layer=1, on="first")
    spec = SteeringSpec(unit=u, layer=1)
    with pytest.raises(ConditionError, match="condition layer 9 is out of range"):
        with wb.steer(tiny, spec, condition=wb.Condition(u, layer=9)):
            pass
    with pytest.raises(ConditionError, match="d_model=7.*another model"):
        with wb.steer(tiny, spec, condition=wb.Condition(torch.ones(7), layer=1)):
            pass
    assert not wb.model_info(tiny).conditional, "a refused block leaves nothing registered"


def test_other_forward_passes_are_refused_inside_a_block(tiny, setup):
    spec, gate, _, _ = setup
    ids = torch.tensor([wb.model_info(tiny).formatter.token_rows(["Hi."])[0]])
    with wb.steer(tiny, spec, condition=gate):
        with pytest.raises(ConditionError, match="decided per prompt by wb.generate"):
            tiny(ids)
        with pytest.raises(wb.WorkbenchError, match="conditional steer block"):
            wb.collect_activations(tiny, ["Hi."], layers=[1], progress=False)
    tiny(ids)  # the guard left with the block
    assert not wb.model_info(tiny).conditional


def test_fit_condition_reports_what_its_condition_does(tiny):
    """The chosen gate, applied through Condition.scores (the path generate uses), has the hit and false-trigger rates
    fit_condition reported for its layer."""
    pairs = wb.load_pairs("format", "detectable_format:title", split="train").head(12)
    title = wb.compute_direction(tiny, pairs, progress=False)
    fit = wb.fit_condition(tiny, title, pairs.prompts(), pairs.prompts_without_instruction(), layers=[1, 2, 3])
    chosen = next(r for r in fit.layers if r["chosen"])
    assert fit.condition.layer == chosen["gate_layer"] and len(fit.layers) == 3
    assert chosen["youden_j"] == max(r["youden_j"] for r in fit.layers)
    hit = fit.condition.holds(fit.condition.scores(tiny, pairs.prompts())).float().mean()
    false = fit.condition.holds(fit.condition.scores(tiny, pairs.prompts_without_instruction())).float().mean()
    assert (float(hit), float(false)) == pytest.approx((chosen["share_hit"], chosen["share_false_trigger"]))
    assert fit.figure() is not None
    with pytest.raises(ConditionError, match="no vector at layer"):
        wb.fit_condition(tiny, _only_layer(title, 1), pairs.prompts(), pairs.prompts_without_instruction(), layers=[2])
    with pytest.raises(ConditionError, match="non-empty list"):
        wb.fit_condition(tiny, title, [], pairs.prompts())


def _only_layer(d, layer):
    from dataclasses import replace

    i = list(d.layers).index(layer)
    return replace(d, vectors=d.vectors[i:i + 1], layers=(layer,), proj_with=None, proj_without=None)
