"""Built-in instruction families: base queries x instruction phrasings, split by base query.

The data ships as package files (``builtin/queries.json``, ``builtin/instructions.json``) read with
``importlib.resources``; rows, phrasings and splits are derived deterministically from them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from typing import Any

from ..errors import DatasetError
from .pairs import SPLITS, PairDataset, PairRow

FAMILIES: tuple[str, ...] = ("format", "length", "keywords")
SPLIT_FRACTIONS: tuple[float, float] = (0.6, 0.2)  # train, validation; test gets the rest


def _stable_int(text: str) -> int:
    """A process-independent integer hash (Python's ``hash()`` is salted per run)."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


@functools.lru_cache(maxsize=None)
def _read_json(name: str) -> str:
    try:
        return resources.files(__package__).joinpath("builtin", name).read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"built-in data file builtin/{name} is missing from the package ({exc})") from None


def load_queries() -> list[dict[str, str]]:
    """The built-in base queries (``id``, ``category``, ``text``), sorted by id."""
    queries = json.loads(_read_json("queries.json"))
    return sorted(queries, key=lambda q: q["id"])


def load_instruction_specs() -> dict[str, dict[str, Any]]:
    """Instruction id -> ``{"family", "phrasings", "variants": [{"kwargs", "fill"}]}``, in file order."""
    specs: dict[str, dict[str, Any]] = json.loads(_read_json("instructions.json"))
    for iid, spec in specs.items():
        if spec.get("family") not in FAMILIES or not spec.get("phrasings") or not spec.get("variants"):
            raise DatasetError(f"built-in instructions.json: entry {iid!r} is malformed")
    return specs


@functools.lru_cache(maxsize=None)
def split_assignment() -> dict[str, str]:
    """Base query id -> split; queries ordered by sha256 of their id, then cut 60/20/20."""
    ids = sorted((q["id"] for q in load_queries()), key=lambda i: (_stable_int(i), i))
    n_train = round(len(ids) * SPLIT_FRACTIONS[0])
    n_val = round(len(ids) * SPLIT_FRACTIONS[1])
    out: dict[str, str] = {}
    for pos, qid in enumerate(ids):
        out[qid] = "train" if pos < n_train else "validation" if pos < n_train + n_val else "test"
    return out


def list_instructions(family: str | None = None) -> list[str]:
    """Built-in instruction ids (of one family, or all), in file order."""
    if family is not None:
        _check_family(family)
    return [iid for iid, spec in load_instruction_specs().items() if family is None or spec["family"] == family]


def family_of(instruction_id: str) -> str:
    """The built-in family holding ``instruction_id`` (a clear error for unknown ids)."""
    specs = load_instruction_specs()
    if instruction_id not in specs:
        raise DatasetError(
            f"unknown built-in instruction {instruction_id!r}; choose one of {', '.join(specs)}"
        )
    return str(specs[instruction_id]["family"])


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise DatasetError(f"unknown instruction family {family!r}; choose one of {', '.join(FAMILIES)}")


def instruction_phrase(instruction_id: str, kwargs: dict[str, Any], key: str) -> str:
    """The built-in phrasing of ``instruction_id`` with ``kwargs`` for the query ``key`` (deterministic per key).

    >>> instruction_phrase("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "q001")
    'Respond in 2 sentences or fewer.'
    """
    spec = load_instruction_specs()[instruction_id]
    variant = _variant_for(instruction_id, spec, kwargs)
    phrasings: list[str] = spec["phrasings"]
    template = phrasings[_stable_int(f"{key}|{instruction_id}") % len(phrasings)]
    return template.format(**{**variant["kwargs"], **variant.get("fill", {})})


# Instructions whose argument is a free word: any word gets a variant made on the fly.
WORD_ARGUMENTS = {"keywords:existence": "keywords", "keywords:forbidden_words": "forbidden_words"}


def _word_variant(instruction_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A variant for any word or phrase (``{"keywords": [W]}``); one word or phrase per direction."""
    arg = WORD_ARGUMENTS[instruction_id]
    words = kwargs.get(arg)
    if not isinstance(words, list) or len(words) != 1 or set(kwargs) != {arg}:
        raise DatasetError(f"{instruction_id}: kwargs must be {{{arg!r}: [WORD]}} with exactly one word or phrase, got {kwargs}")
    word = words[0]
    if not isinstance(word, str) or not word.strip():
        raise DatasetError(f"{instruction_id}: the word must be a non-empty string, got {word!r}")
    if word != word.strip() or '"' in word:
        raise DatasetError(f"{instruction_id}: the word {word!r} has surrounding spaces or a double quote")
    return {"kwargs": {arg: [word]}, "fill": {"word": word}}


def _variant_for(instruction_id: str, spec: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    for variant in spec["variants"]:
        if variant["kwargs"] == kwargs:
            return variant
    if instruction_id in WORD_ARGUMENTS:
        return _word_variant(instruction_id, kwargs)
    choices = "; ".join(json.dumps(v["kwargs"], sort_keys=True) for v in spec["variants"])
    raise DatasetError(f"{instruction_id}: no built-in phrasing for kwargs {kwargs}; available kwargs: {choices}")


def _rows_for(instruction_id: str, spec: dict[str, Any], queries: list[dict[str, str]],
              variants: list[dict[str, Any]] | None = None) -> list[PairRow]:
    """Every (variant, query) row; ``assign: per_query`` instructions give each query one variant instead,
    so a direction is learned from several argument values, not from one."""
    splits = split_assignment()
    phrasings: list[str] = spec["phrasings"]
    variants = spec["variants"] if variants is None else variants
    per_query = spec.get("assign") == "per_query" and len(variants) > 1
    rows: list[PairRow] = []
    for vi, variant in enumerate(variants):
        kwargs: dict[str, Any] = variant["kwargs"]
        fill = {**kwargs, **variant.get("fill", {})}
        for q in queries:
            if per_query and _stable_int(f"{q['id']}|{instruction_id}|variant") % len(variants) != vi:
                continue
            template = phrasings[_stable_int(f"{q['id']}|{instruction_id}") % len(phrasings)]
            rows.append(_instructed(q["text"], template.format(**fill), instruction_id, kwargs, q["id"], splits[q["id"]]))
    if per_query:  # query order, as for single-variant instructions, so head(n) mixes the argument values
        order = {q["id"]: i for i, q in enumerate(queries)}
        rows.sort(key=lambda r: order[r.base_id])
    return rows


def _instructed(text: str, phrase: str, instruction_id: str, kwargs: dict[str, Any], key: str, split: str) -> PairRow:
    """A base query with an instruction phrase appended (the built-in rows' construction)."""
    return PairRow(prompt=f"{text} {phrase}", prompt_without_instruction=text, instruction_id=instruction_id, kwargs=kwargs,
                   base_id=key, eval_instruction_ids=(instruction_id,), eval_kwargs=(kwargs,), split=split)


def rows_from_queries(queries: PairDataset, instruction_id: str, kwargs: dict[str, Any]) -> PairDataset:
    """Pairs from a file of base queries: each query with ``instruction_id`` appended exactly as the built-in
    rows phrase it (the same phrasing for the same query key), and without it.

    >>> qs = load_pairs_file("queries.jsonl", fields="query=text")   # rows of the "queries" schema
    >>> rows_from_queries(qs, "keywords:existence", {"keywords": ["ocean"]})[0].prompt  # doctest: +SKIP
    'Describe your morning routine. Make sure the word "ocean" appears in your answer.'
    """
    rows = [_instructed(q.prompt, instruction_phrase(instruction_id, kwargs, q.base_id), instruction_id, kwargs, q.base_id, q.split)
            for q in queries]
    return PairDataset(rows, name=f"{queries.name}[{instruction_id} {kwargs}]")


def load_pairs(
    family: str,
    instruction: str | None = None,
    split: str = "train",
    kwargs: dict[str, Any] | None = None,
) -> PairDataset:
    """Built-in pairs of one family (optionally one instruction, kwargs subset); split may be ``"all"``."""
    if kwargs is not None and not isinstance(kwargs, dict):
        raise DatasetError(f"kwargs must be a JSON object (a dict), e.g. {{\"keywords\": [\"ocean\"]}}, got {kwargs!r:.60}")
    _check_family(family)
    valid = list_instructions(family)
    if instruction is not None and instruction not in valid:
        raise DatasetError(
            f"unknown instruction {instruction!r} for family {family!r}; choose one of {', '.join(valid)}"
        )
    if split not in (*SPLITS, "all"):
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join((*SPLITS, 'all'))}")
    specs = load_instruction_specs()
    queries = load_queries()
    chosen = [instruction] if instruction is not None else valid
    name = f"builtin:{family}" + (f"/{instruction}" if instruction else "") + f"/{split}"
    if kwargs:
        name += "{" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + "}"
    if kwargs and instruction in WORD_ARGUMENTS and set(kwargs) == {WORD_ARGUMENTS[instruction]}:
        # any word: the rows of a variant made for it (the built-in words give the same rows as before)
        variants = [_variant_for(instruction, specs[instruction], kwargs)]
        rows = [r for r in _rows_for(instruction, specs[instruction], queries, variants) if split in ("all", r.split)]
        return PairDataset(rows, name=name)
    rows = [r for iid in chosen for r in _rows_for(iid, specs[iid], queries) if split in ("all", r.split)]
    if kwargs:
        rows = [r for r in rows if all(k in r.kwargs and r.kwargs[k] == v for k, v in kwargs.items())]
        if not rows:
            variants = sorted({json.dumps(v["kwargs"], sort_keys=True) for i in chosen for v in specs[i]["variants"]})
            raise DatasetError(f"{name}: no rows with these kwargs; available kwargs: {'; '.join(variants)}")
    return PairDataset(rows, name=name)


def language_codes() -> list[str]:
    """The languages the built-in ``language:response_language`` rows ask for (IFEval's codes), in file order."""
    return [v["kwargs"]["language"] for v in load_instruction_specs()["language:response_language"]["variants"]]
