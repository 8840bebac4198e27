"""Activation collection: padding-independence, positions, persistence, bad input."""

from __future__ import annotations

import pytest
import torch

import workbench as wb

PROMPTS = ["Hi.", "Explain why the sky is blue in two sentences.", "Write a story about a fox who finds a lantern."]


def test_batched_equals_one_at_a_time(tiny):
    batched = wb.collect_activations(tiny, PROMPTS, batch_size=3, progress=False)
    single = torch.cat([wb.collect_activations(tiny, [p], progress=False) for p in PROMPTS])
    assert batched.shape == (3, 4, 64)
    assert torch.allclose(batched, single, atol=1e-4)


def test_matches_run_with_cache_last_token(tiny):
    acts = wb.collect_activations(tiny, PROMPTS, progress=False)
    ids, _ = wb.model_info(tiny).formatter.encode([PROMPTS[2]])
    _, cache = tiny.run_with_cache(ids)
    for layer in range(4):
        assert torch.allclose(acts[2, layer], cache[f"blocks.{layer}.hook_resid_post"][0, -1], atol=1e-5)


def test_last_k_and_layer_subset(tiny):
    acts = wb.collect_activations(tiny, PROMPTS, layers=[1, 3], last_k=3, progress=False)
    last = wb.collect_activations(tiny, PROMPTS, layers=[1, 3], progress=False)
    assert acts.shape == (3, 2, 3, 64)
    assert torch.allclose(acts[:, :, -1], last)
    assert not torch.allclose(acts[:, :, 0], acts[:, :, -1])


def test_other_hooks(tiny):
    pre = wb.collect_activations(tiny, PROMPTS, layers=[1], hook="resid_pre", progress=False)
    post0 = wb.collect_activations(tiny, PROMPTS, layers=[0], hook="resid_post", progress=False)
    assert torch.allclose(pre[:, 0], post0[:, 0], atol=1e-5)  # resid_pre of L == resid_post of L-1


def test_save_load_round_trip(tiny, tmp_path):
    acts = wb.collect_activations(tiny, PROMPTS, progress=False)
    wb.save_activations(tmp_path / "a.safetensors", acts, model="tiny", hook="resid_post")
    loaded, meta = wb.load_activations(tmp_path / "a.safetensors")
    assert torch.equal(loaded, acts) and meta["model"] == "tiny"


def test_bad_input(tiny, tmp_path):
    with pytest.raises(wb.DatasetError, match="no prompts"):
        wb.collect_activations(tiny, [], progress=False)
    with pytest.raises(wb.LayerError, match="out of range.*0..3"):
        wb.collect_activations(tiny, PROMPTS, layers=[4], progress=False)
    with pytest.raises(wb.WorkbenchError, match="unknown hook"):
        wb.collect_activations(tiny, PROMPTS, hook="resid_sideways", progress=False)
    truncated = tmp_path / "t.safetensors"
    wb.save_activations(truncated, torch.ones(2, 3))
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(wb.VectorFileError, match="not a readable safetensors"):
        wb.load_activations(truncated)
    with pytest.raises(wb.VectorFileError, match="no such file"):
        wb.load_activations(tmp_path / "missing.safetensors")


# --- the plain-model path (decoder-layer hooks, shared prefix) against the bridge ---------------


@pytest.mark.parametrize("hook", ["resid_post", "resid_pre"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_plain_path_equals_bridge(tiny, hook, share_prefix, monkeypatch):
    monkeypatch.setattr("workbench.activations.MIN_SHARED_PREFIX", 2)  # the tiny chat template shares 6 tokens
    kw = dict(layers=[0, 2, 3], hook=hook, last_k=2, batch_size=2, progress=False)
    bridge = wb.collect_activations(tiny, PROMPTS, backend="bridge", **kw)
    plain = wb.collect_activations(tiny, PROMPTS, backend="plain", share_prefix=share_prefix, **kw)
    assert plain.shape == bridge.shape == (3, 3, 2, 64)
    assert torch.allclose(plain, bridge, atol=1e-5)


def test_shared_prefix_length():
    from workbench.activations import shared_prefix_length

    ids = torch.tensor([[1, 2, 3, 4, 5, 0], [1, 2, 3, 9, 9, 9], [1, 2, 3, 4, 0, 0]])
    lengths = torch.tensor([5, 6, 4])
    assert shared_prefix_length(ids, lengths, keep=1) == 3
    assert shared_prefix_length(ids[[0, 2]], lengths[[0, 2]], keep=1) == 3  # capped: 4 - 1 tokens left
    assert shared_prefix_length(ids[:1], lengths[:1], keep=2) == 3  # one prompt: all but the kept tokens
    assert shared_prefix_length(torch.tensor([[7, 1], [8, 1]]), torch.tensor([2, 2]), keep=1) == 0


def test_prefix_is_shared_on_the_chat_template(tiny, monkeypatch):
    import workbench.activations as acts

    seen = []
    real = acts._prefix_cache
    monkeypatch.setattr(acts, "_prefix_cache", lambda plain, prefix, *a: seen.append(prefix.shape[1]) or real(plain, prefix, *a))
    monkeypatch.setattr(acts, "MIN_SHARED_PREFIX", 2)
    wb.collect_activations(tiny, PROMPTS, progress=False)
    ids, mask = wb.model_info(tiny).formatter.encode(PROMPTS, padding_side="right")
    common = next(i for i in range(ids.shape[1]) if len(set(ids[:, i].tolist())) > 1)
    assert seen == [common]


def test_steering_and_hand_added_hooks_use_the_bridge(tiny):
    direction = torch.randn(64)
    plain_before = wb.collect_activations(tiny, PROMPTS, layers=[3], progress=False)
    with wb.steer(tiny, direction, layer=1, coeff=10.0):
        steered = wb.collect_activations(tiny, PROMPTS, layers=[3], progress=False)
        bridge = wb.collect_activations(tiny, PROMPTS, layers=[3], backend="bridge", progress=False)
        with pytest.raises(wb.WorkbenchError, match="backend='plain'"):
            wb.collect_activations(tiny, PROMPTS, backend="plain", progress=False)
    assert torch.equal(steered, bridge) and not torch.allclose(steered, plain_before, atol=1e-3)
    calls = []
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: calls.append(1))]):
        wb.collect_activations(tiny, PROMPTS, layers=[1], progress=False)
    assert calls  # a hook the user added still runs: auto took the bridge
    with pytest.raises(wb.WorkbenchError, match="unknown backend"):
        wb.collect_activations(tiny, PROMPTS, backend="fast", progress=False)
