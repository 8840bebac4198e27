"""Steering hooks: exact arithmetic of each mode, composition, positions, hook hygiene, bad input."""

from __future__ import annotations

import pytest
import torch

import workbench as wb

PROMPTS = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern."]


def resid(model, layer, prompts=PROMPTS):
    return wb.collect_activations(model, prompts, layers=[layer], last_k=2, progress=False)[:, 0]


def test_add_mode_adds_coeff_times_unit(tiny, random_unit):
    before = resid(tiny, 2)
    with wb.steer(tiny, random_unit * 5.0, layer=2, coeff=3.0):  # the tensor is normalised
        after = resid(tiny, 2)
    assert torch.allclose(after - before, 3.0 * random_unit.expand_as(before), atol=1e-5)
    assert torch.equal(resid(tiny, 2), before)  # hooks gone after the block


def test_project_and_ablate(tiny, random_unit):
    with wb.steer(tiny, random_unit, layer=1, mode="project", target=7.5):
        x = resid(tiny, 1)
    assert torch.allclose(x @ random_unit, torch.full(x.shape[:-1], 7.5), atol=1e-4)
    with wb.steer(tiny, random_unit, layer=1, mode="ablate"):
        y = resid(tiny, 1)
    assert torch.allclose(y @ random_unit, torch.zeros(y.shape[:-1]), atol=1e-4)


def test_project_default_target_is_instructed_mean(tiny, tiny_pairs):
    d = wb.compute_direction(tiny, tiny_pairs.filter(instruction="detectable_format:title"), progress=False)
    with wb.steer(tiny, d, layer=3, mode="project") as specs:
        x = resid(tiny, 3)
    assert specs[0].target == pytest.approx(float(d.proj_with[3]))
    assert torch.allclose(x @ d.at(3).unit, torch.full(x.shape[:-1], float(d.proj_with[3])), atol=1e-4)


def test_composition_of_specs(tiny, random_unit):
    other = torch.roll(random_unit, 1)
    before1, before3 = resid(tiny, 1), resid(tiny, 3)
    specs = [wb.SteeringSpec(unit=random_unit, layer=1, coeff=2.0), wb.SteeringSpec(unit=other, layer=3, coeff=-1.0)]
    with wb.steer(tiny, *specs):
        after1, after3 = resid(tiny, 1), resid(tiny, 3)
    assert torch.allclose(after1 - before1, 2.0 * random_unit.expand_as(before1), atol=1e-5)
    assert not torch.allclose(after3, before3)  # layer 3 sees both interventions
    with wb.steer(tiny, random_unit, layer=3, coeff=2.0), wb.steer(tiny, other, layer=3, coeff=1.0):
        both = resid(tiny, 3)
    assert torch.allclose(both - before3, (2.0 * random_unit + other).expand_as(both), atol=1e-5)


def test_hooks_removed_on_exception_and_user_hooks_kept(tiny, random_unit):
    point = tiny.hook_dict["blocks.2.hook_resid_post"]
    calls = []
    handle = point.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        n_hooks = len(point._forward_hooks)
        with pytest.raises(RuntimeError, match="boom"):
            with wb.steer(tiny, random_unit, layer=2, coeff=1.0):
                assert len(point._forward_hooks) == n_hooks + 1
                raise RuntimeError("boom")
        assert len(point._forward_hooks) == n_hooks
        resid(tiny, 2)
        assert calls, "the user's hook must still fire"
    finally:
        handle.remove()


def test_bad_steering_input(tiny, random_unit):
    with pytest.raises(wb.SteeringError, match="unknown steering mode"):
        with wb.steer(tiny, random_unit, layer=1, mode="rotate"):
            pass
    with pytest.raises(wb.SteeringError, match="unknown positions"):
        with wb.steer(tiny, random_unit, layer=1, positions="middle"):
            pass
    with pytest.raises(wb.SteeringError, match="NaN"):
        with wb.steer(tiny, torch.full((64,), float("nan")), layer=1):
            pass
    with pytest.raises(wb.SteeringError, match="zero"):
        with wb.steer(tiny, torch.zeros(64), layer=1):
            pass
    with pytest.raises(wb.ShapeError, match="d_model=576.*d_model=64"):
        with wb.steer(tiny, torch.ones(576), layer=1):
            pass
    with pytest.raises(wb.LayerError, match="layer 7 is out of range"):
        with wb.steer(tiny, random_unit, layer=7):
            pass
    with pytest.raises(wb.LayerError, match="needs layer="):
        with wb.steer(tiny, random_unit):
            pass
    with pytest.raises(wb.SteeringError, match="needs a target"):
        with wb.steer(tiny, random_unit, layer=1, mode="project"):
            pass
    with pytest.raises(wb.ShapeError, match=r"\[d_model\] vector"):
        with wb.steer(tiny, torch.ones(2, 64), layer=1):
            pass
