"""Response scoring on cached prompt states equals scoring each prompt plus response in one forward pass."""

from __future__ import annotations

import math

import pytest
import torch

import workbench.evaluation.quality as quality
from workbench.decoding.prompt_states import MIN_SHARED_PREFIX, PromptStates, fits, length_batches, response_logprobs_cached
from workbench.models.loading import model_info
from workbench.models.plain import plain_model_for

PROMPTS = ["Hi.", "Explain why the sky is blue.", "Hi.", "Write a story about a fox who finds a lantern at night."]
RESPONSES = ["Hello there, friend.", "Because of Rayleigh scattering, mostly.", "Yo", ""]


def _uncached(tiny, monkeypatch, prompts, responses, batch_size):
    with monkeypatch.context() as m:
        m.setattr(quality, "fits", lambda *a: False)  # the right-padded full forward pass
        return quality.response_nlls(tiny, prompts, responses, batch_size)


def test_cached_scoring_equals_full_forward(tiny, monkeypatch):
    states = PromptStates()
    for batch_size in (1, 4):
        cached = quality.response_nlls(tiny, PROMPTS, RESPONSES, batch_size, states=states)
        full = _uncached(tiny, monkeypatch, PROMPTS, RESPONSES, batch_size)
        assert [len(r) for r in cached] == [len(r) for r in full] and cached[3] == []
        for a, b in zip(cached, full):
            assert a == pytest.approx(b, abs=1e-4)
    assert states.runs == 2  # two distinct prompts with a response, each run once across both calls
    assert math.isnan(quality.response_perplexities(tiny, ["Hi."], [""], states=states)[0])


def test_cached_scoring_is_independent_of_the_other_rows(tiny):
    """A response's log-probabilities do not depend on which prompts were cached first or what it is batched with."""
    plain = plain_model_for(tiny)
    pairs = quality._encode_pairs(tiny, PROMPTS, RESPONSES, False)
    together = response_logprobs_cached(plain, pairs, PromptStates(), batch_size=4)
    for i, pair in enumerate(pairs):
        alone = response_logprobs_cached(plain, [pair], PromptStates(), batch_size=1)[0]
        assert alone == pytest.approx(together[i], abs=1e-5)


@pytest.mark.parametrize("keep_hidden", [False, True])
def test_a_shared_prefix_runs_once_and_each_prompt_keeps_its_own_state(tiny, keep_hidden):
    """States run on the chat template's prefix (run once) are those of each prompt run whole, within float noise;
    a prompt that does not start with the prefix runs whole."""
    plain = plain_model_for(tiny)
    formatter = model_info(tiny).formatter
    prefix = formatter.template_prefix()
    ids = [tuple(formatter.token_ids(p)) for p in dict.fromkeys(PROMPTS)] + [tuple(range(5, 30))]
    assert len(prefix) >= MIN_SHARED_PREFIX and all(k[: len(prefix)] == prefix for k in ids[:-1])
    whole, shared = PromptStates(keep_hidden=keep_hidden), PromptStates(keep_hidden=keep_hidden, prefix=prefix)
    whole.fill(plain, ids, 4)
    shared.fill(plain, ids, 2)  # a ragged chunk and a lone prompt off the prefix
    assert (whole.shared, shared.shared, shared.runs) == (0, len(ids) - 1, len(ids))
    for key in ids:
        a, b = whole.entries[key], shared.entries[key]
        assert a.length == b.length == len(key)
        for (ka, va), (kb, vb) in zip(a.kv, b.kv):
            torch.testing.assert_close(kb, ka, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(vb, va, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.next_logprobs, a.next_logprobs, atol=1e-5, rtol=1e-5)
        if keep_hidden:
            assert b.hidden.shape == a.hidden.shape
            torch.testing.assert_close(b.hidden, a.hidden, atol=1e-5, rtol=1e-5)
    # and the default store of response_nlls runs on the prefix: the same scores as the whole prompts
    pairs = quality._encode_pairs(tiny, PROMPTS, RESPONSES, False)
    assert response_logprobs_cached(plain, pairs, PromptStates(prefix=prefix), 4) == [
        pytest.approx(r, abs=1e-5) for r in response_logprobs_cached(plain, pairs, PromptStates(), 4)]


def test_a_prefix_given_as_a_list_is_shared_and_a_bad_one_is_a_one_line_error(tiny):
    from workbench.errors import WorkbenchError

    prefix = model_info(tiny).formatter.template_prefix()
    states = PromptStates(prefix=list(prefix))
    states.fill(plain_model_for(tiny), [tuple(model_info(tiny).formatter.token_ids("Hi."))], 1)
    assert states.prefix == prefix and states.shared == 1
    for bad in ("<|im_start|>", [1, "2"], [1.5], [True]):
        with pytest.raises(WorkbenchError, match="prefix must be token ids"):
            PromptStates(prefix=bad)


def test_prompt_states_stay_within_their_byte_budget(tiny):
    plain = plain_model_for(tiny)
    ids = [quality._encode_pairs(tiny, [p], ["x"], False)[0][0] for p in PROMPTS[:2]]
    one = PromptStates().get(plain, ids[0]).nbytes
    states = PromptStates(max_bytes=one + 1)
    states.get(plain, ids[0])
    states.get(plain, ids[1])
    assert len(states.entries) == 1 and states.nbytes <= max(one + 1, states.nbytes) and states.runs == 2
    states.get(plain, ids[0])  # evicted, so it runs again
    assert states.runs == 3


def test_length_batches():
    lengths = [128, 5, 128, 60, 126, 30, 31, 128, 64]
    batches = length_batches(lengths, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or width * len(b) - sum(lengths[i] for i in b) <= 0.2 * sum(lengths[i] for i in b)
    assert length_batches([], 4) == [] and length_batches([7], 4) == [[0]]


def test_sliding_window_longer_than_the_text_falls_back(tiny):
    plain = plain_model_for(tiny)
    pairs = [(list(range(5)), list(range(4)))]
    assert fits(plain, pairs)
    config = plain.config
    try:
        config.sliding_window = 8
        assert fits(plain, pairs) is False  # the window's cache would drop the prompt's first tokens
        config.sliding_window = 64
        assert fits(plain, pairs)
    finally:
        config.sliding_window = None
