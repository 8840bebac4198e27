"""One unit of sweep work: (target, layer, strength, prompt batch), and how any executor computes it.

A :class:`Unit` carries everything a worker needs besides the model: the rows and prompts of its
batch and the steering spec (its direction as a tensor). Executors (in-process or Ray actors) call
:func:`compute_unit` on it; the driver turns the result into the JSONL record with :meth:`Unit.record`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..data import PairRow
from ..evaluation.checkers import CheckResult, check_response
from ..evaluation.quality import degeneration
from ..steering import SteeringSpec
from .conditions import GenerationMemo


@dataclass(frozen=True)
class Unit:
    """One sweep unit; ``layer is None`` is the unsteered baseline. Picklable: no model inside."""

    key: str
    target: str
    group: str
    layer: int | None
    strength: float | None
    mode: str
    scale: float
    batch: int
    rows: tuple[PairRow, ...]
    prompts: tuple[str, ...]
    spec: SteeringSpec | None

    def describe(self) -> str:
        where = "unsteered" if self.layer is None else f"layer {self.layer}, strength {self.strength:g}"
        return f"{self.target} {where} (batch {self.batch})"

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        """The JSONL line of this unit (the same for every executor)."""
        return {"key": self.key, "target": self.target, "instruction_id": self.group, "layer": self.layer,
                "coeff": self.strength, "mode": self.mode, "scale": self.scale, "batch": self.batch, **result}


def check_rows(rows: Sequence[PairRow], responses: Sequence[str]) -> list[list[CheckResult]]:
    """Every check of every response: one :class:`CheckResult` per instruction its row asks for."""
    return [check_response(text, row.eval_instruction_ids, row.eval_kwargs, row.prompt) for row, text in zip(rows, responses)]


def prompt_passes(checks: Sequence[Sequence[CheckResult]]) -> tuple[list[bool], list[bool]]:
    """Strict and loose pass of each response on all of its checks (IFEval's prompt level)."""
    return [all(r.strict for r in cs) for cs in checks], [all(r.loose for r in cs) for cs in checks]


def score_rows(rows: Sequence[PairRow], responses: Sequence[str]) -> tuple[list[bool], list[bool]]:
    """Strict and loose pass of each response on all of its row's instructions (IFEval's prompt level)."""
    return prompt_passes(check_rows(rows, responses))


def compute_unit(reference: Any, unit: Unit, batch_size: int, max_new_tokens: int, memo: GenerationMemo) -> dict[str, Any]:
    """Generate (steered or not), check and score one unit's prompts."""
    responses = memo.generate(list(unit.prompts), [] if unit.spec is None else [unit.spec], max_new_tokens)
    return score_unit(reference, unit, responses, batch_size, memo)


def compute_pack(reference: Any, pack: Sequence[Unit], batch_size: int, max_new_tokens: int,
                 memo: GenerationMemo) -> list[dict[str, Any]]:
    """The results of several units whose prompts decode together in packed batches (one result per unit)."""
    texts = memo.generate_many([(u.prompts, [] if u.spec is None else [u.spec]) for u in pack], max_new_tokens)
    return [score_unit(reference, u, responses, batch_size, memo) for u, responses in zip(pack, texts)]


def pack_units(units: Sequence[Unit], max_rows: int) -> list[list[Unit]]:
    """Units in packs of at most ``max_rows`` prompts (a larger unit alone), units sharing prompts side by side
    so a pack pads like each of its units; the order of first appearance is kept."""
    groups: dict[tuple[str, ...], list[Unit]] = {}
    for unit in units:
        groups.setdefault(unit.prompts, []).append(unit)
    packs: list[list[Unit]] = []
    rows = 0
    for unit in (u for group in groups.values() for u in group):
        if not packs or rows + len(unit.prompts) > max_rows:
            packs.append([])
            rows = 0
        packs[-1].append(unit)
        rows += len(unit.prompts)
    return packs


def score_unit(reference: Any, unit: Unit, responses: Sequence[str], batch_size: int, memo: GenerationMemo) -> dict[str, Any]:
    """Check and score one unit's responses (the same for one unit at a time and packed units)."""
    prompts = list(unit.prompts)
    strict, loose = score_rows(unit.rows, responses)
    ppl = memo.perplexities(reference, prompts, responses, batch_size)
    return {
        "base_ids": [r.base_id for r in unit.rows],
        "responses": list(responses),
        "strict": strict,
        "loose": loose,
        "perplexity": ppl,
        "degeneration": [degeneration(t) for t in responses],
    }
