"""Tests for workbench.data: built-in pair families, splits, checker kwargs and the JSONL loaders."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

from workbench.data import (
    FAMILIES,
    PairDataset,
    PairRow,
    list_instructions,
    load_ifeval_jsonl,
    load_paired_jsonl,
    load_pairs,
    load_pairs_file,
)
from workbench.data.builtin import load_instruction_specs, load_queries, split_assignment
from workbench.errors import DatasetError

EXPECTED_IDS = {
    "format": {
        "change_case:english_lowercase",
        "change_case:english_capital",
        "punctuation:no_comma",
        "detectable_format:json_format",
        "detectable_format:title",
        "detectable_format:number_bullet_lists",
        "detectable_format:number_highlighted_sections",
        "detectable_format:multiple_sections",
        "detectable_format:constrained_response",
        "startend:quotation",
        "startend:end_checker",
        "change_case:capital_word_frequency",
        "language:response_language",
    },
    "length": {"length_constraints:number_sentences"},
    "keywords": {"keywords:existence", "keywords:forbidden_words"},
}


@pytest.fixture(scope="module")
def all_rows() -> dict[str, PairDataset]:
    return {f: load_pairs(f, split="all") for f in FAMILIES}


def write_lines(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


# --- built-in data ------------------------------------------------------------------------------


def test_counts_and_ids() -> None:
    queries = load_queries()
    assert len(queries) >= 160
    assert len({q["id"] for q in queries}) == len(queries)
    assert len({q["text"] for q in queries}) == len(queries)
    assert len({q["category"] for q in queries}) >= 10
    for family, ids in EXPECTED_IDS.items():
        assert set(list_instructions(family)) == ids
    specs = load_instruction_specs()
    assert all(len(spec["phrasings"]) >= 3 for spec in specs.values())
    langs = {v["kwargs"]["language"] for v in specs["language:response_language"]["variants"]}
    assert {"fr", "de", "es", "it"} <= langs
    words = {v["kwargs"]["keywords"][0] for v in specs["keywords:existence"]["variants"]}
    assert len(words) >= 6
    assert {v["kwargs"]["forbidden_words"][0] for v in specs["keywords:forbidden_words"]["variants"]} == words
    lengths = {v["kwargs"]["num_sentences"] for v in specs["length_constraints:number_sentences"]["variants"]}
    assert lengths == {2, 3, 4, 5, 6}


def test_every_query_gets_one_row_per_variant(all_rows: dict[str, PairDataset]) -> None:
    """One row per (variant, query); ``per_query`` instructions give each query exactly one of their variants."""
    n_queries = len(load_queries())
    specs = load_instruction_specs()
    for family, data in all_rows.items():
        per_variant = [i for i in list_instructions(family) if specs[i].get("assign") != "per_query"]
        per_query = [i for i in list_instructions(family) if specs[i].get("assign") == "per_query"]
        expected = (sum(len(specs[i]["variants"]) for i in per_variant) + len(per_query)) * n_queries
        assert len(data) == expected
        for iid in per_query:
            rows = data.filter(instruction=iid)
            assert sorted(rows.base_ids()) == sorted(q["id"] for q in load_queries())
            used = {json.dumps(r.kwargs, sort_keys=True) for r in rows.filter(split="train")}
            assert len(used) == len(specs[iid]["variants"]) >= 3, iid  # the direction sees several argument values
        for row in data:
            assert row.prompt == f"{row.prompt_without_instruction} {row.prompt[len(row.prompt_without_instruction) + 1:]}"
            assert row.eval_instruction_ids == (row.instruction_id,)
            assert row.eval_kwargs == (row.kwargs,)


def test_all_phrasings_used_and_filled(all_rows: dict[str, PairDataset]) -> None:
    specs = load_instruction_specs()
    for data in all_rows.values():
        used: dict[str, set[str]] = defaultdict(set)
        for row in data:
            suffix = row.prompt[len(row.prompt_without_instruction) + 1 :]
            assert "{" not in suffix and "}" not in suffix
            used[row.instruction_id].add(suffix)
        for iid, suffixes in used.items():
            spec = specs[iid]
            for template in spec["phrasings"]:
                filled = {template.format(**v["kwargs"], **v["fill"]) for v in spec["variants"]}
                assert filled & suffixes, f"{iid}: phrasing never used: {template}"


def test_kwargs_accepted_by_checkers(all_rows: dict[str, PairDataset]) -> None:
    seen = set()
    for data in all_rows.values():
        for row in data:
            key = (row.instruction_id, json.dumps(row.kwargs, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            checker = INSTRUCTION_DICT[row.instruction_id](row.instruction_id)
            checker.build_description(**row.kwargs)
            assert set(row.kwargs) <= set(checker.get_instruction_args_keys())
    assert len(seen) >= 16


def test_number_sentences_means_at_most_n() -> None:
    data = load_pairs("length", split="all", kwargs={"num_sentences": 3})
    assert all("2 sentences" in r.prompt and r.kwargs["relation"] == "less than" for r in data)
    checker = INSTRUCTION_DICT["length_constraints:number_sentences"]("x")
    # (check_following needs NLTK's punkt_tab data, so only the description is checked here.)
    assert "less than 3 sentences" in checker.build_description(**data[0].kwargs)


def test_split_hygiene(all_rows: dict[str, PairDataset]) -> None:
    assignment = split_assignment()
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in ("train", "validation", "test")}
    n = len(assignment)
    assert abs(counts["train"] - 0.6 * n) <= 1 and abs(counts["validation"] - 0.2 * n) <= 1
    for data in all_rows.values():
        by_split: dict[str, set[str]] = defaultdict(set)
        for row in data:
            by_split[row.split].add(row.base_id)
            assert row.split == assignment[row.base_id]  # same split in every family
        assert set(by_split) == {"train", "validation", "test"}
        assert not (by_split["train"] & by_split["validation"])
        assert not (by_split["train"] & by_split["test"])
        assert not (by_split["validation"] & by_split["test"])
    for family in FAMILIES:
        for iid in list_instructions(family):
            for split in ("train", "validation", "test"):
                data = load_pairs(family, iid, split=split)
                assert len(data) > 0 and {r.split for r in data} == {split}


def test_determinism_and_hash() -> None:
    a = load_pairs("format", split="validation")
    b = load_pairs("format", split="validation")
    assert a == b
    assert a.hash() == b.hash()
    assert len(a.hash()) == 64
    assert a.hash() != load_pairs("format", split="test").hash()
    assert a[:5].hash() == a.head(5).hash()


def test_unknown_choices_are_listed() -> None:
    with pytest.raises(DatasetError, match="format"):
        load_pairs("formats")
    with pytest.raises(DatasetError, match="keywords:existence"):
        load_pairs("keywords", "keywords:nope")
    with pytest.raises(DatasetError, match="validation"):
        load_pairs("length", split="dev")
    with pytest.raises(DatasetError, match="fr"):
        load_pairs("format", "language:response_language", kwargs={"language": "xx"})
    with pytest.raises(DatasetError):
        list_instructions("nope")


# --- PairDataset ------------------------------------------------------------------------------


def test_dataset_sequence_and_filter() -> None:
    data = load_pairs("format", split="all")
    fr = data.filter(instruction="language:response_language", kwargs={"language": "fr"})
    assert len(fr) == len(load_queries())
    assert all(r.kwargs == {"language": "fr"} for r in fr)
    assert fr.filter(split="test") == PairDataset(
        load_pairs("format", "language:response_language", split="test", kwargs={"language": "fr"}).rows,
        name=fr.filter(split="test").name,
    )
    sub = data[10:20]
    assert isinstance(sub, PairDataset) and len(sub) == 10 and sub[0] == data[10]
    assert isinstance(data[0], PairRow) and list(iter(sub)) == list(sub.rows)
    assert fr.instruction_ids() == ["language:response_language"]
    assert len(fr.prompts()) == len(fr.prompts_without_instruction()) == len(fr.base_ids())
    text = repr(fr.filter(split="train"))
    assert "size=" in text and "language:response_language" in text and "train" in text
    with pytest.raises(TypeError):
        hash(data)
    with pytest.raises(AttributeError):
        data[0].prompt = "x"  # type: ignore[misc]


def test_require_nonempty() -> None:
    empty = load_pairs("length").filter(split="test")
    assert len(empty) == 0
    with pytest.raises(DatasetError, match=r"computing directions: dataset .* is empty"):
        empty.require_nonempty("computing directions")
    data = load_pairs("length")
    assert data.require_nonempty("x") is data


def test_to_dict_is_json() -> None:
    row = load_pairs("keywords")[0]
    d = row.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["eval_instruction_ids"] == [row.instruction_id]


# --- external files ---------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    data = load_pairs("keywords", split="validation")
    path = tmp_path / "out" / "pairs.jsonl"
    data.to_jsonl(path)
    back = load_paired_jsonl(path)
    assert len(back) == len(data)
    for a, b in zip(data, back):
        assert b.split == "external"
        assert a.to_dict() | {"split": "external"} == b.to_dict()
    assert load_pairs_file(path).rows == back.rows


def test_load_ifeval(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "ifeval.jsonl",
        [
            {"key": 1000, "prompt": "Write a poem. Use no commas.", "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{"num_highlights": None}]},
            "",
            {"key": 1001, "prompt": "Write a list in French.",
             "instruction_id_list": ["detectable_format:number_bullet_lists", "language:response_language"],
             "kwargs": [{"num_bullets": 4, "language": None}, {"language": "fr"}]},
        ],
    )
    data = load_ifeval_jsonl(path)
    assert len(data) == 2
    assert data[0].kwargs == {} and data[0].base_id == "1000" and data[0].prompt_without_instruction is None
    assert data[1].instruction_id == "detectable_format:number_bullet_lists+language:response_language"
    assert data[1].kwargs == {"num_bullets": 4}
    assert data[1].eval_kwargs == ({"num_bullets": 4}, {"language": "fr"})
    assert data.filter(instruction="language:response_language").base_ids() == ["1001"]
    assert load_pairs_file(path) == data
    with pytest.raises(DatasetError, match="ifeval.jsonl.*prompt_without_instruction"):
        data.prompts_without_instruction()


def test_paired_eval_list(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Q? Use no commas.", "prompt_without_instruction": "Q?",
             "instruction_id_list": ["punctuation:no_comma"],
             "instruction_id_list_for_eval": ["punctuation:no_comma", "language:response_language"],
             "kwargs": [{}, {"language": "de"}]},
            {"prompt": "R? Three bullets.", "prompt_without_instruction": "R?", "key": "k7",
             "instruction_id_list": ["detectable_format:number_bullet_lists", "punctuation:no_comma"],
             "instruction_id_list_for_eval": ["punctuation:no_comma"],
             "kwargs": [{"num_bullets": 3}, {}]},
        ],
    )
    data = load_pairs_file(path)
    assert data[0].base_id == "1" and data[1].base_id == "k7"
    assert data[0].eval_kwargs == ({}, {"language": "de"})
    assert data[1].kwargs == {"num_bullets": 3}
    assert data[1].eval_instruction_ids == ("punctuation:no_comma",) and data[1].eval_kwargs == ({},)


GOOD = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({k: v for k, v in GOOD.items() if k != "instruction_id_list"}, "instruction_id_list"),
        (GOOD | {"instruction_id_list": "punctuation:no_comma"}, "instruction_id_list"),
        (GOOD | {"instruction_id_list": [1]}, "instruction_id_list"),
        (GOOD | {"kwargs": [{}, {}]}, "kwargs"),
        (GOOD | {"kwargs": ["x"]}, "kwargs"),
        (GOOD | {"prompt": 5}, "prompt"),
        ({k: v for k, v in GOOD.items() if k != "key"}, "key"),
    ],
)
def test_malformed_ifeval_lines(tmp_path: Path, bad: dict[str, Any], field: str) -> None:
    path = write_lines(tmp_path / "data.jsonl", [GOOD, "", bad])
    with pytest.raises(DatasetError, match=rf"data\.jsonl line 3: field '{field}'"):
        load_ifeval_jsonl(path)


def test_malformed_paired_and_json(tmp_path: Path) -> None:
    good = GOOD | {"prompt_without_instruction": "q"}
    path = write_lines(tmp_path / "pairs.jsonl", [good, {k: v for k, v in good.items() if k != "prompt"}])
    with pytest.raises(DatasetError, match=r"pairs\.jsonl line 2: field 'prompt' missing"):
        load_pairs_file(path)
    path = write_lines(tmp_path / "broken.jsonl", [good, good, "{not json"])
    with pytest.raises(DatasetError, match=r"broken\.jsonl:3: not JSON"):
        load_paired_jsonl(path)
    path = write_lines(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(DatasetError, match=r"list\.jsonl:1: a JSON list, expected an object"):
        load_pairs_file(path)


def test_a_line_separator_inside_a_prompt_stays_in_it(tmp_path: Path) -> None:
    """Rows split at newlines only: a raw U+2028 or U+0085 in a string is part of the prompt (str.splitlines cut there)."""
    row = GOOD | {"prompt": "First part\u2028second part\u0085third."}
    path = tmp_path / "sep.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert load_pairs_file(path).rows[0].prompt == row["prompt"]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    for loader in (load_ifeval_jsonl, load_paired_jsonl, load_pairs_file):
        with pytest.raises(DatasetError, match="empty.jsonl.*no rows"):
            loader(empty)
        with pytest.raises(DatasetError, match="missing.jsonl: no such file"):
            loader(tmp_path / "missing.jsonl")
