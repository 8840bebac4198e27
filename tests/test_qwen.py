"""Integration tests on Qwen2.5-Coder-0.5B-Instruct (extra `qwen`); skipped when its part packages are absent."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.models.registry import BUILTIN_MODELS

SPEC = BUILTIN_MODELS["qwen2.5-coder-0.5b-instruct"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SPEC.is_installed(), reason=SPEC.not_installed_message()),
]


@pytest.fixture(scope="module")
def qwen():
    return wb.load_model(SPEC.name, device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_qwen_loads_as_a_bridge_with_hooks(qwen):
    assert (qwen.cfg.n_layers, qwen.cfg.d_model) == (24, 896)
    assert "blocks.23.hook_resid_post" in qwen.hook_dict
    info = wb.model_info(qwen)
    assert info.name == SPEC.name and info.prompt_style == "chat"
    assert info.formatter.format("Hi").endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_qwen_answers_sensibly(qwen, one_thread):
    out = wb.generate(qwen, ["What is the capital of France? Answer in one word."], max_new_tokens=8)
    assert "Paris" in out[0], out


def test_qwen_cached_equals_reference_under_steering(qwen, one_thread):
    pairs = wb.load_pairs("format", "detectable_format:title", split="train").head(4)
    direction = wb.compute_direction(qwen, pairs, progress=False)
    prompts = ["Describe a sunrise.", "Give me advice on learning to cook well."]
    baseline = wb.generate(qwen, prompts, max_new_tokens=8, return_tokens=True)
    with wb.steer(qwen, direction, layer=16, coeff=40.0, mode="add"):
        cached = wb.generate(qwen, prompts, max_new_tokens=8, return_tokens=True)
        reference = wb.generate(qwen, prompts, max_new_tokens=8, use_cache=False, return_tokens=True)
    assert cached == reference
    assert cached != baseline
    assert wb.generate(qwen, prompts, max_new_tokens=8, use_cache=False, return_tokens=True) == baseline
