"""Instruction checks on hand-written responses (offline Punkt included) and response quality on the tiny model."""

from __future__ import annotations

import math

import nltk
import pytest
import torch

import workbench as wb
from workbench.errors import DatasetError, SteeringError
from workbench.evaluation import (
    accuracy_report,
    check_response,
    count_sentences,
    degeneration,
    ensure_punkt,
    response_perplexities,
    score_quality,
    sentence_tokenizer,
)
from workbench.evaluation.punkt import PUNKT_FILES, write_punkt_tab
from workbench.evaluation.quality import active_hooks, response_nlls


# --- sentence counting, offline ------------------------------------------------------------
@pytest.mark.parametrize(
    "text, n",
    [
        ("Dr. Smith went to Washington. He arrived at 5 p.m. on Monday.", 2),
        ("Hello world. How are you? I am fine!", 3),
        ("Mr. and Mrs. Brown live on Elm St. near the park.", 1),
        ("One sentence only", 1),
    ],
)
def test_count_sentences_known(text, n):
    assert count_sentences(text) == n
    assert len(sentence_tokenizer().tokenize(text)) == n


def test_punkt_tab_files_load_through_nltk(tmp_path):
    folder = write_punkt_tab(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUNKT_FILES)
    root = ensure_punkt()
    assert str(root) in nltk.data.path
    nltk.data.find("tokenizers/punkt_tab/english/")  # what NLTK 3.10's PunktTokenizer looks up
    from nltk.tokenize.punkt import PunktTokenizer

    text = "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday. It rained."
    assert PunktTokenizer("english").tokenize(text) == sentence_tokenizer().tokenize(text)
    assert nltk.word_tokenize("HELLO there. BIG day.") == ["HELLO", "there", ".", "BIG", "day", "."]


# --- checkers on hand-written responses ----------------------------------------------------
LENGTH_AT_MOST_2 = {"num_sentences": 3, "relation": "less than"}


@pytest.mark.parametrize(
    "iid, kwargs, response, strict",
    [
        ("detectable_format:title", {}, "<<A Rainy Day>>\nIt rained all afternoon.", True),
        ("detectable_format:title", {}, "A Rainy Day\nIt rained all afternoon.", False),
        ("length_constraints:number_sentences", LENGTH_AT_MOST_2, "Dr. Smith came. He left at 5 p.m. on Monday.", True),
        ("length_constraints:number_sentences", LENGTH_AT_MOST_2, "One. Two. Three.", False),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "This is *one part* and *another*.", True),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "Only *one part* here.", False),
        ("keywords:existence", {"keywords": ["ocean"]}, "The Ocean was calm.", True),
        ("keywords:forbidden_words", {"forbidden_words": ["ocean"]}, "The ocean was calm.", False),
        ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "This is VERY, VERY good.", True),
        ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1\nHi.\nSection 2\nBye.", True),
    ],
)
def test_checkers_on_hand_written_responses(iid, kwargs, response, strict):
    (result,) = check_response(response, [iid], [kwargs])
    assert result.strict is strict


def test_loose_accepts_what_strict_rejects():
    (r,) = check_response('Here is the JSON:\n{"a": 1}', ["detectable_format:json_format"], [{}])
    assert (r.strict, r.loose) == (False, True)


def test_empty_response_follows_nothing():
    assert check_response("", ["detectable_format:title"], [{}])[0].strict is False


def test_accuracy_report_per_instruction_and_overall():
    rows = [
        wb.PairRow(prompt="q. title", prompt_without_instruction="q.", instruction_id="detectable_format:title", kwargs={},
                   base_id=f"b{i}", eval_instruction_ids=("detectable_format:title", "length_constraints:number_sentences"),
                   eval_kwargs=({}, LENGTH_AT_MOST_2))
        for i in range(3)
    ]
    responses = ["<<T>>\nOne. Two.", "<<T>>\nOne. Two. Three. Four.", "No title. Short."]
    report = accuracy_report(rows, responses)
    assert report.per_instruction["detectable_format:title"]["strict"] == pytest.approx(2 / 3)
    assert report.per_instruction["length_constraints:number_sentences"]["strict"] == pytest.approx(2 / 3)
    assert report.prompt_strict == pytest.approx(1 / 3)
    assert report.instruction_strict == pytest.approx(4 / 6)
    assert report.rows()[-1]["instruction_id"] == "all"
    with pytest.raises(DatasetError):
        accuracy_report(rows, responses[:2])


# --- quality --------------------------------------------------------------------------------
def test_degeneration():
    assert degeneration("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert degeneration("the quick brown fox jumps over a lazy dog") == 0.0
    assert degeneration("") == 0.0 and degeneration("two words") == 0.0


def test_perplexity_matches_hand_computation(tiny):
    prompts = ["Hi.", "Explain why the sky is blue."]
    responses = ["Hello there, friend.", "Because of Rayleigh scattering."]
    ppl = response_perplexities(tiny, prompts, responses, batch_size=2)
    fmt = tiny.workbench.formatter
    for prompt, response, got in zip(prompts, responses, ppl):
        p_ids = tiny.tokenizer(fmt.format(prompt), add_special_tokens=fmt.add_special_tokens)["input_ids"]
        r_ids = tiny.tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            logits = tiny(ids, return_type="logits")[0].float()
        logp = torch.log_softmax(logits, -1)
        nll = [-float(logp[len(p_ids) + i - 1, t]) for i, t in enumerate(r_ids)]
        assert got == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4)
    # batching (right padding) changes nothing; an empty response has no perplexity
    single = response_perplexities(tiny, prompts[1:], responses[1:], batch_size=1)
    assert single[0] == pytest.approx(ppl[1], rel=1e-4)
    assert math.isnan(response_perplexities(tiny, ["Hi."], [""])[0])
    assert len(response_nlls(tiny, ["Hi."], ["ab"])[0]) == len(tiny.tokenizer("ab", add_special_tokens=False)["input_ids"])


def test_perplexity_refuses_active_steering(tiny, tiny_pairs):
    d = wb.compute_direction(tiny, tiny_pairs, layers=[1], progress=False)
    assert active_hooks(tiny) == []
    with wb.steer(tiny, d, layer=1, coeff=2.0):
        with pytest.raises(SteeringError, match="outside steer"):
            response_perplexities(tiny, ["Hi."], ["Hello"])
    scores = score_quality(tiny, ["Hi."], ["a b c a b c a b c"])
    assert scores[0]["degeneration"] > 0.5 and math.isfinite(scores[0]["perplexity"])


def test_degeneration_sees_symbol_loops():
    assert degeneration("<<" * 40) > 0.9
    assert degeneration("Hello, world. Yes, indeed.") == 0.0
