"""Score the same responses with the workbench's IFEval checks and with lm-eval's vendored IFEval checkers; report agreement.

The workbench scores with ``if-verifiable`` (:mod:`workbench.evaluation.checkers`);
lm-evaluation-harness ships its own copy of Google's checkers (``lm_eval/tasks/ifeval``) and
scores with ``test_instruction_following_strict`` / ``_loose`` from its ``utils.py``. This module
runs both on every response of a ``reproduce`` run's ``generations.jsonl`` and counts, per
instruction id, how often they agree (strict and loose). Rows that name no kwargs are resolved
against the built-in pair datasets (by experiment family, instruction, split, base id and prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..experiments.results import read_generations  # noqa: F401  (re-exported: the CLI and tests use it here)
from ..errors import DatasetError, WorkbenchError

FAMILIES = ("format", "length", "keywords")


@dataclass(frozen=True)
class Scored:
    """One (response, instruction) check by both scorers."""

    instruction_id: str
    ours_strict: bool
    ours_loose: bool
    theirs_strict: bool
    theirs_loose: bool
    response: str


@dataclass
class CrossCheck:
    """Per-instruction agreement between the workbench's and lm-eval's IFEval scoring of the same responses."""

    scored: list[Scored] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    n_records: int = 0
    # records whose stored prompt-level strict/loose (the run's own scoring) differ from our re-check:
    # 0 means the kwargs were recovered correctly
    n_stored: int = 0
    stored_mismatch: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per instruction id (n, agreement and both pass rates, strict and loose), then ``all``."""
        groups: dict[str, list[Scored]] = {}
        for s in self.scored:
            groups.setdefault(s.instruction_id, []).append(s)
        out = [_summary(iid, items) for iid, items in sorted(groups.items())]
        if self.scored:
            out.append(_summary("all", self.scored))
        return out

    def disagreements(self) -> list[Scored]:
        return [s for s in self.scored if s.ours_strict != s.theirs_strict or s.ours_loose != s.theirs_loose]

    def markdown(self) -> str:
        """The agreement table as Markdown."""
        head = ("| instruction | n | strict agree | loose agree | strict: ours / lm-eval | loose: ours / lm-eval |\n"
                "|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows():
            lines.append(
                f"| {r['instruction_id']} | {r['n']} | {r['strict_agree']}/{r['n']} | {r['loose_agree']}/{r['n']} | "
                f"{r['ours_strict']}/{r['theirs_strict']} | {r['ours_loose']}/{r['theirs_loose']} |"
            )
        lines.append("")
        lines.append(f"Stored run scores re-checked: {self.n_stored} records, {self.stored_mismatch} differ from the re-check.")
        if self.skipped:
            lines.append("")
            lines.append("Skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())))
        return "\n".join(lines) + "\n"


def _summary(iid: str, items: Sequence[Scored]) -> dict[str, Any]:
    return {
        "instruction_id": iid,
        "n": len(items),
        "strict_agree": sum(s.ours_strict == s.theirs_strict for s in items),
        "loose_agree": sum(s.ours_loose == s.theirs_loose for s in items),
        "ours_strict": sum(s.ours_strict for s in items),
        "theirs_strict": sum(s.theirs_strict for s in items),
        "ours_loose": sum(s.ours_loose for s in items),
        "theirs_loose": sum(s.theirs_loose for s in items),
    }


def lm_eval_scores(response: str, instruction_ids: Sequence[str], kwargs_list: Sequence[dict[str, Any]], prompt: str) -> list[tuple[bool, bool]]:
    """``(strict, loose)`` per instruction from lm-eval's own IFEval code (``lm_eval.tasks.ifeval.utils``).

    Example: ``lm_eval_scores("<<Hi>>", ["detectable_format:title"], [{}], "") == [(True, True)]``.
    """
    from langdetect import DetectorFactory

    from ..evaluation.punkt import ensure_punkt

    ensure_punkt()  # lm-eval's instructions_util downloads punkt_tab on import unless NLTK already finds it
    DetectorFactory.seed = 0
    try:
        from lm_eval.tasks.ifeval import utils
    except ImportError:
        raise WorkbenchError("the IFEval cross-check needs lm-eval: pip install -e '.[lmeval]'") from None
    inp = utils.InputExample(key=0, instruction_id_list=list(instruction_ids), prompt=prompt, kwargs=[dict(k) for k in kwargs_list])
    strict = utils.test_instruction_following_strict(inp, response).follow_instruction_list
    loose = utils.test_instruction_following_loose(inp, response).follow_instruction_list
    return list(zip(strict, loose))


class _Resolver:
    """Finds the IFEval ids, kwargs and checked prompt of a record from the built-in pair datasets."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], list[Any]] = {}  # (family, target name, split) -> rows

    def rows(self, family: str, name: str, split: str, target_n: Any = None, word: Any = None) -> list[Any]:
        """Built-in rows of one experiment target (``language:response_language_fr`` is the French rows,
        a length record's ``target_n`` N the "at most N sentences" rows, a keywords record's ``word`` its word)."""
        key = (family, f"{name}|{target_n}|{word}", split)
        if key not in self._cache:
            from ..data import load_pairs

            iid, kwargs = name, None
            if family == "length" and isinstance(target_n, int):
                from ..experiments.reproduce import LENGTH_ID, length_kwargs

                iid, kwargs = LENGTH_ID, length_kwargs(target_n)
            elif family == "keywords" and isinstance(word, str):
                from ..data.builtin import WORD_ARGUMENTS

                if name in WORD_ARGUMENTS:
                    kwargs = {WORD_ARGUMENTS[name]: [word]}
            elif family == "format":
                from ..experiments.targets import format_target_names

                try:
                    ((_, iid, kwargs),) = format_target_names([name])
                except (WorkbenchError, ValueError):
                    pass
            try:
                self._cache[key] = list(load_pairs(family, iid, split=split, kwargs=kwargs).rows)
            except WorkbenchError:
                self._cache[key] = []
        return self._cache[key]

    def resolve(self, rec: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]], str] | str:
        """``(ids, kwargs, prompt)`` or the reason the record cannot be checked."""
        ids = rec.get("eval_instruction_ids")
        if not isinstance(ids, list) or not ids:
            return "records with no instruction to check (e.g. length_distribution)"
        if isinstance(rec.get("eval_kwargs"), list):
            return list(ids), [dict(k) for k in rec["eval_kwargs"]], str(rec.get("checked_prompt", rec.get("prompt", "")))
        family = rec.get("experiment")
        iid = ids[0] if family in ("length", "keywords") else rec.get("instruction_id")
        if family not in FAMILIES or not isinstance(iid, str):
            return f"records of experiment {family!r} (kwargs not recoverable)"
        rows = self.rows(family, iid, str(rec.get("split", "test")), rec.get("target_n"), rec.get("word"))
        candidates = [r for r in rows if r.base_id == rec.get("base_id") and tuple(r.eval_instruction_ids) == tuple(ids)]
        exact = [r for r in candidates if rec.get("prompt") in (r.prompt, r.prompt_without_instruction)]
        candidates = exact or candidates
        kinds = {json.dumps([dict(k) for k in r.eval_kwargs], sort_keys=True) for r in candidates}
        if len(kinds) != 1:
            return "records whose kwargs are ambiguous or unknown"
        row = candidates[0]
        return list(row.eval_instruction_ids), [dict(k) for k in row.eval_kwargs], row.prompt


def crosscheck(records: Iterable[dict[str, Any]]) -> CrossCheck:
    """Score every record's response with both scorers; ``CrossCheck.rows()`` has the agreement per instruction.

    Example: ``crosscheck(read_generations("results/smollm2-135m-instruct/format/generations.jsonl")).markdown()``.
    """
    from ..evaluation.checkers import check_response

    resolver = _Resolver()
    out = CrossCheck()
    for rec in records:
        out.n_records += 1
        got = resolver.resolve(rec)
        if isinstance(got, str):
            out.skipped[got] = out.skipped.get(got, 0) + 1
            continue
        ids, kwargs, prompt = got
        response = rec["response"]
        ours = check_response(response, ids, kwargs, prompt)
        theirs = lm_eval_scores(response, ids, kwargs, prompt)
        for o, (ts, tl) in zip(ours, theirs):
            out.scored.append(Scored(o.instruction_id, o.strict, o.loose, ts, tl, response))
        if isinstance(rec.get("strict"), bool) and isinstance(rec.get("loose"), bool):
            out.n_stored += 1
            out.stored_mismatch += (all(o.strict for o in ours), all(o.loose for o in ours)) != (rec["strict"], rec["loose"])
    return out
