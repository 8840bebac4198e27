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
