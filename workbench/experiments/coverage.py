"""What an ``--eval-data`` file covers of a run, decided before any direction is computed.

A researcher's file often covers part of what a run asks for: some of IFEval's languages, or only the
inclusion words of a keywords run. Each experiment evaluates named *evaluation sets* (one instruction
with its arguments); a set the file has no row for is skipped and listed (log, ``config.json``, the
results page), and the run fails in one line only when the file covers none of them.

>>> sets = evaluation_sets(ReproduceConfig("keywords", words=["ocean"]))
>>> [s.name for s in sets]
['include:ocean', 'exclude:ocean']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import PairDataset, PairRow
from ..errors import DatasetError
from .config import LENGTH_ID, PRESETS, TITLE_ID, WORD_EXPERIMENTS, ReproduceConfig, length_kwargs
from .targets import format_target_names

KEYWORD_TASKS: dict[str, str] = {"include": "keywords:existence", "exclude": "keywords:forbidden_words"}
KEYWORD_ARGS: dict[str, str] = {"include": "keywords", "exclude": "forbidden_words"}


@dataclass(frozen=True)
class EvaluationSet:
    """One instruction (with its arguments) that a run evaluates, under the name its tables use."""

    name: str
    instruction_id: str
    kwargs: dict[str, Any] | None = None

    def label(self) -> str:
        return self.instruction_id + (f" {self.kwargs}" if self.kwargs else "")


def matches(row: PairRow, iid: str, kwargs: dict | None) -> bool:
    """Whether ``row`` checks ``iid`` with (a superset of) ``kwargs`` among its instructions."""
    return any(i == iid and (not kwargs or all(kw.get(k) == v for k, v in kwargs.items()))
               for i, kw in zip(row.eval_instruction_ids, row.eval_kwargs))


def _preset(cfg: ReproduceConfig, name: str) -> Any:
    value = getattr(cfg, name)
    return value if value is not None else PRESETS[cfg.experiment][cfg.quick].get(name)


def keyword_tasks(cfg: ReproduceConfig) -> tuple[str, ...]:
    """The keyword tasks a run asks for: ``include``, ``exclude`` or both (``--include-only`` / ``--exclude-only``)."""
    if cfg.include_only and cfg.exclude_only:
        raise DatasetError("--include-only and --exclude-only exclude each other; pass one (or neither for both tasks)")
    return ("include",) if cfg.include_only else ("exclude",) if cfg.exclude_only else ("include", "exclude")


def evaluation_sets(cfg: ReproduceConfig) -> list[EvaluationSet]:
    """Every set the experiment of ``cfg`` evaluates, in table order (presets filled in)."""
    exp = cfg.experiment
    if exp in ("format", "composition", "transfer", "estimators", "conditional"):
        gated = exp in WORD_EXPERIMENTS  # these also take keyword inclusion directions (--word)
        words_only = gated and cfg.words and cfg.instructions is None  # as ReproduceConfig.resolved
        ids = (None if words_only else _preset(cfg, "instructions")) or ([] if gated else [TITLE_ID])
        sets = [EvaluationSet(name, iid, kwargs) for name, iid, kwargs in format_target_names(ids)]
        if gated:
            sets += [EvaluationSet(f"include:{w}", KEYWORD_TASKS["include"], {"keywords": [w]}) for w in cfg.words or []]
        return sets
    if exp == "length":
        return [EvaluationSet(f"length<={n}", LENGTH_ID, length_kwargs(n)) for n in _preset(cfg, "targets") or [1, 3]]
    if exp == "keywords":
        return [EvaluationSet(f"{task}:{w}", KEYWORD_TASKS[task], {KEYWORD_ARGS[task]: [w]})
                for w in _preset(cfg, "words") or [] for task in keyword_tasks(cfg)]
    return []


@dataclass(frozen=True)
class Coverage:
    """The evaluation sets a run will evaluate and the ones it skips (with why)."""

    covered: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __contains__(self, name: str) -> bool:
        return name in self.covered

    def lines(self) -> list[str]:
        """What to print in a run log and write on the results page."""
        return [f"skipped {name}: {why}" for name, why in self.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {"covered": list(self.covered), "skipped": [{"name": n, "reason": w} for n, w in self.skipped]}


QUERY_EXPERIMENTS = ("length", "keywords")  # experiments that phrase their own instruction onto base queries


def check_coverage(cfg: ReproduceConfig, data: PairDataset | None, schema: str | None = None) -> Coverage:
    """Which sets ``data`` (the ``--eval-data`` rows of ``schema``; None: the built-in test split) covers; a
    one-line :class:`DatasetError` when it covers none, or when a file of base queries feeds an experiment
    that does not phrase its own instruction."""
    sets = evaluation_sets(cfg)
    if schema == "queries" and cfg.experiment not in QUERY_EXPERIMENTS:
        raise DatasetError(f"{cfg.eval_data} holds base queries only (no instructions): it feeds the "
                           f"{' and '.join(QUERY_EXPERIMENTS)} experiments, which append their own; {cfg.experiment} needs "
                           "prompts with their instructions")
    if data is None or schema == "queries":  # built-in rows, or queries the run phrases itself: every set
        return Coverage(covered=tuple(s.name for s in sets))
    covered, skipped = [], []
    for s in sets:
        if any(matches(r, s.instruction_id, s.kwargs) for r in data):
            covered.append(s.name)
        else:
            skipped.append((s.name, f"{cfg.eval_data} has no row that checks {s.label()}"))
    if not covered:
        wanted = ", ".join(s.label() for s in sets[:4]) + (" ..." if len(sets) > 4 else "")
        raise DatasetError(f"{cfg.eval_data}: no row checks any instruction this {cfg.experiment} run evaluates ({wanted})")
    return Coverage(covered=tuple(covered), skipped=tuple(skipped))

