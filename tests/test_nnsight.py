"""nnsight: the same direction applied in an nnsight trace gives the workbench's greedy tokens on the tiny model."""

from __future__ import annotations

import pytest
import torch

import workbench as wb

nnsight = pytest.importorskip("nnsight")

from workbench.interop.nnsight_recipe import left_pad, nnsight_generate, steered  # noqa: E402

PROMPTS = ["Explain why the sky is blue.", "Hi.", "Write a story about a fox who finds a lantern."]
N_NEW = 12
LAYER = 2


@pytest.fixture(scope="module")
def lm(tiny):
    """The tiny model's saved folder loaded by nnsight (TransformersModel, text generation)."""
    return nnsight.TransformersModel(wb.model_info(tiny).path, task="text-generation", dispatch=True, dtype=torch.float32)


@pytest.fixture(scope="module")
def direction() -> wb.Direction:
    g = torch.Generator().manual_seed(5)
    return wb.Direction(
        vectors=torch.randn(4, 64, generator=g), layers=(0, 1, 2, 3), name="rand", model_name="tiny-random-llama",
        d_model=64, n_model_layers=4, proj_with=torch.full((4,), 6.0), proj_without=torch.zeros(4),
    )


def _batch(tiny):
    info = wb.model_info(tiny)
    tok = tiny.tokenizer
    lists = [tok(info.formatter.format(p), add_special_tokens=info.formatter.add_special_tokens).input_ids for p in PROMPTS]
    return left_pad(lists, tok.pad_token_id)


@pytest.mark.parametrize(
    "mode, positions, coeff",
    [("add", "all", 6.0), ("project", "all", 1.0), ("ablate", "all", 1.0), ("add", "prompt", 8.0), ("add", "generated", 8.0)],
)
def test_nnsight_greedy_tokens_equal_workbench(tiny, lm, direction, mode, positions, coeff):
    ids, mask = _batch(tiny)
    with wb.steer(tiny, direction, layer=LAYER, mode=mode, positions=positions, coeff=coeff):
        ours = wb.generate(tiny, PROMPTS, max_new_tokens=N_NEW, min_new_tokens=N_NEW, return_tokens=True, batch_size=8)
    plain = wb.generate(tiny, PROMPTS, max_new_tokens=N_NEW, min_new_tokens=N_NEW, return_tokens=True, batch_size=8)
    theirs = nnsight_generate(lm, ids, direction, layer=LAYER, mode=mode, positions=positions, coeff=coeff,
                              max_new_tokens=N_NEW, attention_mask=mask)
    assert [list(r) for r in ours] != [list(r) for r in plain]  # the steering changes the tokens
    assert theirs.tolist() == [list(r) for r in ours]


def test_recipe_arithmetic_matches_steering_spec():
    # the recipe's written-out arithmetic agrees with the workbench's SteeringSpec.apply
    from workbench.steering import SteeringSpec

    g = torch.Generator().manual_seed(0)
    h, v = torch.randn(2, 3, 64, generator=g), torch.randn(64, generator=g)
    u = v / v.norm()
    for mode, target in (("add", None), ("project", 2.5), ("ablate", None)):
        spec = SteeringSpec(unit=u, layer=0, coeff=3.0, mode=mode, target=target)
        assert torch.allclose(steered(h, u, mode, 3.0, target), spec.apply(h, None), atol=1e-5)
    assert torch.allclose(steered(h, u, "project", 1.0, 2.5) @ u, torch.full((2, 3), 2.5), atol=1e-5)
