"""IFEval instruction checks (strict and loose) through the maintained ``if-verifiable`` checkers."""

from __future__ import annotations

from dataclasses import dataclass
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
            f"checking {list(instruction_ids)} needs NLTK's Punkt sentence model, which is not installed"
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
