"""Fast layer search (issue #15 part 2): teacher-forced cell scores, the shortlist, and bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import workbench as wb
from workbench.errors import DatasetError, LayerError, ShapeError, SteeringError, WorkbenchError
from workbench.experiments.conditions import GenerationMemo
from workbench.experiments.search import fast_scores, shortlist
from workbench.experiments.sweep import SweepTarget, steering_spec
from workbench.models.loading import model_info

N_TOKENS = 6
GEN_TOKENS = 10


@pytest.fixture(scope="module")
def title_direction(tiny):
    rows = []
    queries = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern.", "Name a colour."]
    for i, q in enumerate(queries):
        rows.append(wb.PairRow(
            prompt=f"{q} Add a title in <<brackets>>.", prompt_without_instruction=q, instruction_id="detectable_format:title",
            kwargs={}, base_id=f"q{i}", eval_instruction_ids=("detectable_format:title",), eval_kwargs=({},), split="validation",
        ))
    data = wb.PairDataset(rows, name="search-pairs")
    return data, wb.compute_direction(tiny, data)


@torch.no_grad()
def bridge_shifts(model, target: SweepTarget, spec, responses: list[str]) -> list[float | None]:
    """Each row's shift computed independently: the row alone through the bridge, steered with wb.steer (None: empty)."""
    info = model_info(model)
    shifts = []
    for prompt, response in zip(target.prompts(), responses):
        p = info.formatter.token_ids(prompt, False)
        r = model.tokenizer(response, add_special_tokens=False)["input_ids"][:N_TOKENS]
        if not r:
            shifts.append(None)
            continue
        ids = torch.tensor([p + r])

        def logp() -> torch.Tensor:
            lp = torch.log_softmax(model(ids, return_type="logits")[0].float(), dim=-1)
            return lp[len(p) - 1 : len(p) - 1 + len(r)].gather(-1, torch.tensor(r)[:, None])[:, 0]

        base = logp()
        with wb.steer(model, spec):
            steered = logp()
        shifts.append(float((steered - base).mean()))
    return shifts


@pytest.mark.parametrize("mode,strength,contrast", [("project", 1.0, False), ("add", 2.0, False), ("add", 2.0, True)])
def test_cell_score_equals_bridge_computation(tiny, title_direction, mode, strength, contrast):
    data, direction = title_direction
    target = SweepTarget("title", data, direction, mode=mode)
    memo = GenerationMemo(tiny, GEN_TOKENS)
    layers = [1, 3]
    # batch_size 3 over 4 rows of different lengths: right padding and a ragged last batch both matter
    scores = fast_scores(tiny, [target], layers, [strength], memo, n_tokens=N_TOKENS, batch_size=3, contrast=contrast)
    assert [(r["layer"], r["coeff"]) for r in scores] == [(1, strength), (3, strength)]
    responses = memo.generate(data.prompts(), [], GEN_TOKENS)  # the with-instruction responses (cached)
    plain_responses = memo.generate(data.prompts_without_instruction(), [], GEN_TOKENS)
    for rec in scores:
        spec = steering_spec(direction, rec["layer"], strength, mode)
        rows = [[x] for x in bridge_shifts(tiny, target, spec, responses)]
        if contrast:  # minus the shift of the uninstructed response; rows where either response is empty drop out
            rows = [[w, None if o is None else -o] for (w,), o in zip(rows, bridge_shifts(tiny, target, spec, plain_responses))]
        kept = [sum(r) for r in rows if None not in r]
        expected = sum(kept) / len(kept)
        assert rec["n"] == len(kept) >= 3
        assert abs(rec["score"] - expected) < 1e-4, (rec, expected)
    assert any(abs(r["score"]) > 1e-3 for r in scores)  # steering moved something: the check above is not 0 == 0


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("hook,layer,mode", [("resid_post", 1, "project"), ("resid_post", 3, "add"), ("resid_pre", 2, "add"),
                                             ("resid_pre", 0, "add"), ("resid_post", 0, "project")])
def test_cells_resume_from_the_kept_unsteered_states_with_the_same_logprobs(tiny, title_direction, hook, layer, mode, shared):
    """A cell's pass starts at its first steered layer from the unsteered pass's states, the chat template's prefix
    run once (``shared``): the full pass's log-probabilities (bit for bit without the prefix, within float noise with
    it), and the layers before it do not run."""
    from workbench.experiments.search import _batches, _score_batches, response_logprobs
    from workbench.decoding.from_layer import first_changed_layer
    from workbench.models.plain import decoder_layers, plain_model_for

    data, direction = title_direction
    plain = plain_model_for(tiny)
    formatter = model_info(tiny).formatter
    tok = tiny.tokenizer
    pairs = [(tuple(formatter.token_ids(p)), tuple(tok(" Title <<x>> and more text")["input_ids"][: 2 + i]))
             for i, p in enumerate(data.prompts())]
    pairs.append((pairs[0][0], ()))  # an empty response: no row
    prefix = formatter.template_prefix() if shared else ()
    spec = dataclasses.replace(steering_spec(direction, layer, 1.5, mode), hook=hook)
    first = first_changed_layer([spec])
    rows = _batches(pairs, 3, 0, prefix)  # two batches, the last ragged
    assert rows.prefix == tuple(prefix) and (len(prefix) >= 4 or not shared)
    same = torch.equal if not shared else (lambda a, b: torch.allclose(a, b, atol=1e-5, rtol=1e-5))
    base = _score_batches(plain, pairs, rows, None, record=[first])
    assert all(same(a, b) for a, b in zip(base, response_logprobs(plain, pairs, None, 3)))
    calls = []
    handle = decoder_layers(plain)[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        resumed = _score_batches(plain, pairs, rows, spec)
    finally:
        handle.remove()
    # layer 0 ran only where nothing could be skipped: per batch, and once for the prefix
    assert len(calls) == (0 if first else len(rows.batches) + bool(shared))
    full = response_logprobs(plain, pairs, spec, 3)  # no prefix, no kept states: every layer of every row runs
    assert [t.numel() for t in resumed] == [t.numel() for t in full] and resumed[-1].numel() == 0
    assert all(same(a, b) for a, b in zip(resumed, full))
    assert any(not torch.allclose(a, b) for a, b in zip(resumed, base) if a.numel())  # the spec did steer


def test_zero_add_scores_zero_and_responses_come_from_the_memo(tiny, title_direction):
    data, direction = title_direction
    memo = GenerationMemo(tiny, GEN_TOKENS)
    target = SweepTarget("title", data, direction, mode="add")
    scores = fast_scores(tiny, [target], [0, 2], [0.0], memo, n_tokens=N_TOKENS)
    assert all(abs(r["score"]) < 1e-6 and r["n"] > 0 for r in scores)
    assert memo.calls == 1
    fast_scores(tiny, [target], [1], [1.0], memo, n_tokens=N_TOKENS)
    assert memo.calls == 1  # the with-instruction responses were generated once and reused


def test_targets_of_one_group_pool_their_rows(tiny, title_direction):
    data, direction = title_direction
    a = SweepTarget("a", data[:2], direction, mode="add", group="g")
    b = SweepTarget("b", data[2:], direction, mode="add", group="g")
    memo = GenerationMemo(tiny, GEN_TOKENS)
    pooled = fast_scores(tiny, [a, b], [2], [1.5], memo, n_tokens=N_TOKENS)
    alone = [fast_scores(tiny, [t], [2], [1.5], memo, n_tokens=N_TOKENS)[0] for t in (a, b)]
    assert len(pooled) == 1 and pooled[0]["instruction_id"] == "g"
    assert pooled[0]["n"] == alone[0]["n"] + alone[1]["n"]
    weighted = sum(r["score"] * r["n"] for r in alone) / pooled[0]["n"]
    assert abs(pooled[0]["score"] - weighted) < 1e-6


def _rec(group, layer, coeff, score):
    return {"instruction_id": group, "layer": layer, "coeff": coeff, "score": score, "n": 4}


def test_shortlist_ranks_layers_by_best_cell_with_ties_to_earlier_layers():
    scores = [
        _rec("a", 10, 0.5, 0.1), _rec("a", 10, 1.0, 0.9),  # layer 10 counts its best strength: 0.9
        _rec("a", 12, 1.0, 0.5), _rec("a", 14, 1.0, 0.5), _rec("a", 8, 1.0, 0.5),  # three-way tie at 0.5
        _rec("a", 16, 1.0, math.nan), _rec("a", 18, 1.0, -2.0),
        _rec("b", 4, 1.0, -1.0), _rec("b", 2, 1.0, math.nan),
    ]
    assert shortlist(scores, keep=3) == {"a": [8, 10, 12], "b": [2, 4]}
    assert shortlist(scores, keep=1) == {"a": [10], "b": [4]}
    assert shortlist(scores, keep=6)["a"] == [8, 10, 12, 14, 16, 18]
    assert shortlist(scores, keep=5)["a"] == [8, 10, 12, 14, 18]  # NaN ranks below -2
    with pytest.raises(WorkbenchError, match="keep must be >= 1"):
        shortlist(scores, keep=0)
    with pytest.raises(WorkbenchError, match="no scores"):
        shortlist([])


def test_bad_input_is_refused_before_any_work(tiny, title_direction):
    data, direction = title_direction
    target = SweepTarget("title", data, direction)
    memo = GenerationMemo(tiny, GEN_TOKENS)
    other = wb.Direction(vectors=torch.randn(4, 32), layers=(0, 1, 2, 3), name="other", model_name="other-model",
                         d_model=32, n_model_layers=4, proj_with=torch.ones(4))
    empty = wb.PairDataset([], name="empty")
    cases = [
        (dict(layers=[]), LayerError, "no layers"),
        (dict(strengths=[]), WorkbenchError, "no strengths"),
        (dict(layers=[1, 4]), LayerError, "layer 4 is out of range"),
        (dict(targets=[SweepTarget("other", data, other)]), ShapeError, "d_model=32"),
        (dict(targets=[SweepTarget("empty", empty, direction)]), DatasetError, "empty"),
        (dict(targets=[]), WorkbenchError, "no targets"),
        (dict(n_tokens=0), WorkbenchError, "n_tokens must be >= 1"),
        (dict(memo=GenerationMemo(object())), WorkbenchError, "another model"),
    ]
    for change, error, message in cases:
        kw = dict(targets=[target], layers=[1, 2], strengths=[1.0], memo=memo) | change
        with pytest.raises(error, match=message):
            fast_scores(tiny, kw.pop("targets"), kw.pop("layers"), kw.pop("strengths"), kw.pop("memo"), **kw)
    with wb.steer(tiny, steering_spec(direction, 1, 1.0, "project")), pytest.raises(SteeringError, match="steer"):
        fast_scores(tiny, [target], [1], [1.0], memo)
    assert memo.calls == 0 and not memo.cache  # nothing was generated for any refused call



def test_a_prompt_that_cannot_fit_the_context_is_refused_before_any_forward_pass(tiny, title_direction):
    import dataclasses

    from workbench.models.prompts import ContextLengthError

    data, direction = title_direction
    n_ctx, formatter = int(tiny.cfg.n_ctx), model_info(tiny).formatter

    def text_of(n: int) -> str:  # a prompt of exactly n tokens as generation tokenises it
        return next(t for k in range(n // 2, 2 * n) if len(formatter.token_ids(t := "word " * (k // 5) + "w" * (k % 5), False)) == n)

    def with_row(i: int, **change) -> wb.PairDataset:
        rows = list(data.rows)
        rows[i] = dataclasses.replace(rows[i], **change)
        return wb.PairDataset(rows, name="changed")

    memo = GenerationMemo(tiny, GEN_TOKENS)
    cases = [  # the uninstructed prompt (scored) fits generation but not N_TOKENS teacher-forced; the instructed one not GEN_TOKENS
        (with_row(1, prompt_without_instruction=text_of(n_ctx - N_TOKENS + 1)),
         f"prompt 1 has {n_ctx - N_TOKENS + 1} tokens; with the {N_TOKENS} response tokens teacher-forced after it"),
        (with_row(2, prompt=text_of(n_ctx - GEN_TOKENS + 1)),
         f"prompt 2 has {n_ctx - GEN_TOKENS + 1} tokens; with the {GEN_TOKENS} response tokens generated after it"),
    ]
    for rows, message in cases:
        with pytest.raises(ContextLengthError) as err:
            fast_scores(tiny, [SweepTarget("long", rows, direction)], [1], [1.0], memo, n_tokens=N_TOKENS)
        assert str(err.value) == f"fast search target long: {message} that is {n_ctx + 1}, more than the model's {n_ctx}-token context"
    assert memo.calls == 0 and not memo.cache  # refused before generating anything
    # a prompt of exactly n_ctx - N_TOKENS tokens fits: the bound is exact, and that row is scored
    fits = with_row(1, prompt_without_instruction=text_of(n_ctx - N_TOKENS))
    scores = fast_scores(tiny, [SweepTarget("fits", fits, direction)], [1], [1.0], memo, n_tokens=N_TOKENS)
    assert scores[0]["n"] == len(fits) and math.isfinite(scores[0]["score"])
