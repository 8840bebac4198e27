"""Shared fixtures: the tiny random Llama for unit tests, the embedded SmolLM2 for integration tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import workbench as wb


@pytest.fixture(scope="session")
def tiny():
    """The 4-layer random Llama (d_model 64) with its byte-level tokenizer."""
    return wb.load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="session")
def smol():
    """The embedded default model, SmolLM2-135M-Instruct."""
    return wb.load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture
def tiny_pairs() -> wb.PairDataset:
    """A small pair dataset of two instructions, with prompts of different lengths."""
    rows = []
    queries = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern."]
    for iid, phrase in (("detectable_format:title", "Add a title in <<brackets>>."), ("change_case:english_lowercase", "Use only lowercase.")):
        for i, q in enumerate(queries):
            rows.append(
                wb.PairRow(
                    prompt=f"{q} {phrase}", prompt_without_instruction=q, instruction_id=iid, kwargs={},
                    base_id=f"q{i}", eval_instruction_ids=(iid,), eval_kwargs=({},), split="train",
                )
            )
    return wb.PairDataset(rows, name="tiny-pairs")


@pytest.fixture
def random_unit() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(64, generator=g)
    return v / v.norm()


@pytest.fixture
def one_thread():
    """One torch thread (much faster on a CPU shared with other jobs); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
