"""Scoring from a layer: a steered decode's unsteered hidden states, and perplexity started from them."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
import workbench.evaluation.quality as quality
from workbench.errors import WorkbenchError
from workbench.decoding import decode_packed
from workbench.decoding.from_layer import LayerStart, first_changed_layer, from_layer
from workbench.decoding.prompt_states import PromptStates, response_logprobs_cached
from workbench.models.loading import model_info
from workbench.models.plain import plain_model_for
from workbench.steering import SteeringSpec

PROMPTS = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern at night."]
N = 12


def _settings(tiny) -> list[tuple[list[SteeringSpec], int | None]]:
    """Steering settings and the first layer whose input each changes (4: only the final norm's)."""
    g = torch.Generator().manual_seed(5)
    u = torch.randn(int(tiny.cfg.d_model), generator=g)
    u = u / u.norm()
    return [
        ([], None),
        ([SteeringSpec(unit=u, layer=1, coeff=6.0)], 2),
        ([SteeringSpec(unit=u, layer=2, mode="project", target=-3.0, hook="resid_pre")], 2),
        ([SteeringSpec(unit=u, layer=2, mode="ablate", positions="generated")], 3),
        ([SteeringSpec(unit=-u, layer=3, coeff=5.0, positions="prompt")], 4),
        ([SteeringSpec(unit=u, layer=2, coeff=5.0), SteeringSpec(unit=u, layer=1, coeff=-4.0, hook="resid_pre")], 1),
        ([SteeringSpec(unit=u, layer=0, coeff=5.0, hook="resid_pre")], 0),
    ]


def test_first_changed_layer():
    u = torch.ones(4) / 2
    assert first_changed_layer([]) is None
    assert first_changed_layer([SteeringSpec(unit=u, layer=3, coeff=1.0)]) == 4
    assert first_changed_layer([SteeringSpec(unit=u, layer=3, coeff=1.0, hook="resid_pre")]) == 3
    assert first_changed_layer([SteeringSpec(unit=u, layer=3, coeff=1.0, hook="resid_mid")]) is None


def test_unsteered_states_are_the_unsteered_models_residual_stream(tiny, one_thread):
    settings = _settings(tiny)
    prompts = [p for _ in settings for p in PROMPTS]
    rows = [specs for specs, _ in settings for _ in PROMPTS]
    out = decode_packed(tiny, prompts, rows, max_new_tokens=N, batch_size=len(prompts))
    tokens, states = out.tokens, out.starts
    assert len(states) == len(prompts)
    formatter = model_info(tiny).formatter
    n_layers = int(tiny.cfg.n_layers)
    checked = 0
    for i, (prompt, start) in enumerate(zip(prompts, states)):
        specs, expected = settings[i // len(PROMPTS)]
        if specs and not expected:  # steered at layer 0's input: nothing to start from
            assert start is None
            continue
        assert list(start.tokens) == tokens[i]
        ids = list(formatter.token_ids(prompt, False)) + tokens[i]
        logits, cache = tiny.run_with_cache(torch.tensor([ids]))  # the bridge, unsteered, on prompt plus response
        p_len = len(ids) - len(tokens[i])
        if not specs:  # decoded unsteered: the log-probabilities of its own tokens
            logp = torch.log_softmax(logits[0, p_len - 1 : -1].float(), -1).gather(1, torch.tensor(tokens[i])[:, None])[:, 0]
            assert start.layer == n_layers and start.hidden.shape[0] == 0
            torch.testing.assert_close(start.logprobs, logp, atol=1e-4, rtol=1e-4)
            checked += 1
            continue
        assert start.layer == expected and start.logprobs is None
        assert start.hidden.shape == (len(tokens[i]) - 1, int(tiny.cfg.d_model))
        name = f"blocks.{expected}.hook_resid_pre" if expected < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
        want = cache[name][0, p_len : p_len + len(tokens[i]) - 1]
        torch.testing.assert_close(start.hidden, want, atol=1e-4, rtol=1e-4)
        checked += 1
    assert checked == 18
    # decoding with a capture gives the same tokens as without
    assert tokens == wb.generate(tiny, prompts, max_new_tokens=N, batch_size=len(prompts), return_tokens=True,
                                 row_steering=rows)


def test_a_packed_call_of_unsteered_rows_only_decodes_eagerly_and_scores_from_its_decode(tiny, one_thread):
    """The unsteered conditions of a run with no selection are one packed call with no steered row: it still takes
    the eager loop (the same tokens as a plain call), so each response's perplexity is its own decode's."""
    from workbench.experiments.conditions import GenerationMemo

    out = decode_packed(tiny, PROMPTS, [[] for _ in PROMPTS], max_new_tokens=N, batch_size=2)
    tokens, states = out.tokens, out.starts
    assert tokens == wb.generate(tiny, PROMPTS, max_new_tokens=N, batch_size=2, return_tokens=True)
    assert all(s is not None and s.logprobs is not None and list(s.tokens) == t for s, t in zip(states, tokens))
    memo = GenerationMemo(tiny, max_new_tokens=N)
    texts = memo.generate_many([(PROMPTS, [])])[0]
    ppl = memo.perplexities(tiny, PROMPTS, texts, batch_size=4)
    usable = sum(list(s.tokens[: len(r)]) == r for s, (_, r) in zip(states, quality._encode_pairs(tiny, PROMPTS, texts, False)))
    assert usable >= 1 and memo.prompt_states[model_info(tiny).name].resumed == usable
    assert ppl == [pytest.approx(x, rel=1e-4) for x in quality.response_perplexities(tiny, PROMPTS, texts, batch_size=4)]


def test_a_packed_memo_runs_each_prompt_once_for_scoring_and_decoding(tiny, monkeypatch):
    """Scoring first and decoding after (a resumed sweep) share one prompt store that keeps hidden states."""
    import workbench.decoding.prompt_states as ps
    from workbench.experiments.conditions import GenerationMemo

    ran: list[int] = []
    real = ps.run_prompts
    monkeypatch.setattr(ps, "run_prompts", lambda plain, prompts, *a: ran.append(len(prompts)) or real(plain, prompts, *a))
    memo = GenerationMemo(tiny, max_new_tokens=N)
    memo.perplexities(tiny, PROMPTS, ["Some answer.", "Blue light scatters.", "A fox."], batch_size=4)
    memo.generate_many([(PROMPTS, _settings(tiny)[1][0])])  # steered at layer 1: its prompt pass starts from the states
    assert sum(ran) - 1 == len(PROMPTS)  # each prompt once, plus the template's prefix once
    assert memo.prompt_states[model_info(tiny).name].keep_hidden


def test_scoring_from_a_start_equals_the_full_pass(tiny, one_thread):
    settings = _settings(tiny)
    prompts = [p for _ in settings for p in PROMPTS]
    rows = [specs for specs, _ in settings for _ in PROMPTS]
    out = decode_packed(tiny, prompts, rows, max_new_tokens=N, batch_size=7)
    tokens, starts = out.tokens, out.starts
    formatter = model_info(tiny).formatter
    pairs = [(list(formatter.token_ids(p, False)), t) for p, t in zip(prompts, tokens)]
    plain = plain_model_for(tiny)
    full = response_logprobs_cached(plain, pairs, PromptStates(), batch_size=4)
    states = PromptStates()
    started = response_logprobs_cached(plain, pairs, states, batch_size=4, starts=starts)
    assert states.resumed == 18  # five steered settings and the unsteered one, x three prompts
    for a, b in zip(full, started):
        assert b == pytest.approx(a, abs=1e-4)
    # a start recorded for other tokens is not used
    wrong = [None if s is None else LayerStart(s.layer, s.hidden, tuple(t + 1 for t in s.tokens), s.logprobs) for s in starts]
    states = PromptStates()
    assert response_logprobs_cached(plain, pairs, states, batch_size=4, starts=wrong) == full
    assert states.resumed == 0
    # through the text API: responses whose text gives back their tokens start from their layer
    texts = [tiny.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    states = PromptStates()
    by_text = quality.response_nlls(tiny, prompts, texts, batch_size=4, states=states, starts=starts)
    assert states.resumed == sum(s is not None and list(s.tokens[: len(r)]) == r
                                 for s, (_, r) in zip(starts, quality._encode_pairs(tiny, prompts, texts, False)))
    assert by_text == [pytest.approx(x, abs=1e-4) for x in quality.response_nlls(tiny, prompts, texts, batch_size=4)]
    with pytest.raises(WorkbenchError, match="starts"):
        quality.response_nlls(tiny, prompts, texts, starts=starts[:2])


def test_hidden_states_given_to_a_layer_are_what_it_computes_from(tiny):
    """Starting at layer 2 from the full pass's own layer-2 input gives the full pass's logits."""
    plain = plain_model_for(tiny)
    ids = torch.tensor([[5, 9, 2, 44, 17, 3]])
    out = plain(input_ids=ids, output_hidden_states=True)
    with from_layer(plain, 2, out.hidden_states[2]):
        resumed = plain(input_ids=ids).logits
    torch.testing.assert_close(resumed, out.logits)
    with from_layer(plain, 2, torch.zeros_like(out.hidden_states[2])):  # what is fed is what counts
        assert not torch.allclose(plain(input_ids=ids).logits, out.logits)
    torch.testing.assert_close(plain(input_ids=ids).logits, out.logits)  # the layers came back
    for bad in (0, 5):
        with pytest.raises(WorkbenchError, match="not in 1..4"):
            with from_layer(plain, bad, out.hidden_states[2]):
                pass
    with pytest.raises(WorkbenchError, match="shape"):
        with from_layer(plain, 2, out.hidden_states[2][:, :3]):
            plain(input_ids=ids)


@pytest.mark.parametrize("batch_size,shared", [(21, False), (5, False), (21, True)])
def test_prompt_passes_started_from_kept_states_give_the_same_tokens(tiny, one_thread, batch_size, shared):
    """Every mode, position setting and hook, steered at layers 0-3 (the prompt pass from no layer, from a middle
    layer, or only the final norm's input): the tokens of the full prompt pass, and of each setting alone; also
    when the states run the chat template's shared prefix once."""
    settings = _settings(tiny)
    prompts = [p for _ in settings for p in PROMPTS]
    rows = [specs for specs, _ in settings for _ in PROMPTS]
    full = wb.generate(tiny, prompts, max_new_tokens=N, batch_size=batch_size, return_tokens=True, row_steering=rows)
    states = PromptStates(keep_hidden=True, prefix=model_info(tiny).formatter.template_prefix() if shared else ())
    started = decode_packed(tiny, prompts, rows, max_new_tokens=N, batch_size=batch_size, states=states).tokens
    assert started == full
    assert states.runs == len(PROMPTS) and all(s.hidden.shape[0] == 4 for s in states.entries.values())
    assert states.shared == (len(PROMPTS) if shared else 0)
    assert len({str(full[i * 3:(i + 1) * 3]) for i in range(len(settings))}) == len(settings)
    for i, (specs, _) in enumerate(settings[1:4], start=1):
        with wb.steer(tiny, *specs):
            assert full[i * 3:(i + 1) * 3] == wb.generate(tiny, PROMPTS, max_new_tokens=N, batch_size=3, return_tokens=True)


def test_bad_state_arguments_are_one_line_errors(tiny):
    rows = [[] for _ in PROMPTS]
    with pytest.raises(WorkbenchError, match=r"PromptStates\(keep_hidden=True\)"):
        decode_packed(tiny, PROMPTS, rows, max_new_tokens=2, batch_size=4, states=PromptStates())
    with pytest.raises(WorkbenchError, match=r"PromptStates\(keep_hidden=True\)"):
        decode_packed(tiny, PROMPTS, rows, max_new_tokens=2, batch_size=4, states={})
    with pytest.raises(WorkbenchError, match=r"row_steering needs one list of specs per prompt \(3\), got 2"):
        decode_packed(tiny, PROMPTS, rows[:2], max_new_tokens=2, batch_size=4)
    for plumbing in ("unsteered_states", "prompt_states"):  # the sweep's, on the engine API: not generate's arguments
        with pytest.raises(TypeError, match=plumbing):
            wb.generate(tiny, PROMPTS, max_new_tokens=2, **{plumbing: []})
