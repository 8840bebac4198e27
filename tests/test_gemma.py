"""Integration tests on Gemma-3-270M base (extra `gemma`); skipped when its chunk packages are absent."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.models.registry import BUILTIN_MODELS

SPEC = BUILTIN_MODELS["gemma-3-270m"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SPEC.is_installed(), reason=SPEC.not_installed_message()),
]

PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)


@pytest.fixture(scope="module")
def gemma():
    return wb.load_model(SPEC.name, device="cpu")


def test_gemma_tokenizer_uses_merges_and_bos(gemma):
    tok = wb.model_info(gemma).formatter.tokenizer
    assert tok.tokenize("The Eiffel Tower") == ["The", "▁Eiffel", "▁Tower"]
    ids, _ = wb.model_info(gemma).formatter.encode(["Hi"])
    assert int(ids[0, 0]) == tok.bos_token_id


def test_gemma_is_a_language_model_not_noise(gemma):
    # Character-level tokenisation (transformers' GGUF Gemma tokenizer) gave perplexity 4305 here.
    ids = wb.model_info(gemma).formatter.tokenizer(PARAGRAPH, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = gemma(ids)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    assert float(nll.exp()) < 30


def test_gemma_answers_sensibly(gemma):
    out = wb.generate(gemma, ["What is the capital of France?"], max_new_tokens=10)
    assert "Paris" in out[0], out
