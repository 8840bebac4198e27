"""The state one reproduce run shares between its steps: data with split bookkeeping, directions, scoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..activations import collect_activations
from ..data import PairDataset, PairRow, load_pairs, read_pairs_file
from ..data.builtin import rows_from_queries
from ..data.files import QUERIES_SCHEMA, LoadReport
from ..directions import Direction, direction_from_activations
from ..evaluation.quality import degeneration, mean_perplexity
from ..evaluation.stats import mcnemar_exact, rate_cell
from ..errors import DatasetError
from ..models import model_info
from .coverage import Coverage, matches
from .conditions import CONDITIONS, GenerationMemo, condition_requests, run_conditions
from .config import ReproduceConfig
from .hygiene import check_split_hygiene
from .executors import make_executor, sweep_stats
from .sweep import SweepResult, SweepSettings, SweepTarget, rule_settings, run_sweep
from .units import check_rows, prompt_passes

# A steered condition and the unsteered condition on the same prompts (its McNemar twin).
TWINS = {"no_instruction_steered": "no_instruction", "instruction_steered": "instruction"}


def rate_columns(strict: Sequence[bool], loose: Sequence[bool], inst_strict: Sequence[bool],
                 inst_loose: Sequence[bool]) -> dict[str, Any]:
    """Prompt-level and instruction-level accuracies with their intervals, and the per-prompt passes behind them."""
    return {"n": len(strict), **rate_cell(strict, "accuracy"), **rate_cell(loose, "loose_accuracy"),
            "n_checks": len(inst_strict), **rate_cell(inst_strict, "instruction_accuracy"),
            **rate_cell(inst_loose, "instruction_loose_accuracy"),
            "_strict": list(strict), "_loose": list(loose), "_inst_strict": list(inst_strict), "_inst_loose": list(inst_loose)}


def kwargs_used(rows: Sequence[PairRow]) -> list[dict[str, Any]]:
    """The instruction arguments of ``rows`` with how many rows used each (recorded with a direction)."""
    import json

    counts: dict[str, int] = {}
    for r in rows:
        key = json.dumps(r.kwargs, sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    return [{"kwargs": json.loads(k), "rows": n} for k, n in sorted(counts.items())]


def attach_p_values(table: list[dict[str, Any]], identity: Sequence[str], key: str = "condition",
                    twins: dict[str, str] | None = None, column: str = "accuracy_p") -> None:
    """McNemar p-value of each steered cell against its unsteered twin (same identity, same prompts)."""
    twins = TWINS if twins is None else twins
    index = {(tuple(r.get(k) for k in identity), r.get(key)): r for r in table}
    for r in table:
        if r.get(key) not in twins:  # only the keys named in ``twins`` have a twin
            continue
        twin = index.get((tuple(r.get(k) for k in identity), twins[r.get(key)]))
        if twin is not None and r.get("_keys") == twin.get("_keys"):
            r[column] = mcnemar_exact(r["_strict"], twin["_strict"]).p_value


@dataclass
class Run:
    """State shared by the steps of one run."""

    config: ReproduceConfig
    model: Any
    reference: Any
    out_dir: Path
    memo: GenerationMemo
    say: Callable[[str], None]
    used_rows: list[PairRow] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)
    act_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    directions: dict[str, Direction] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sweep_stats: dict[str, Any] = field(default_factory=dict)
    per_instruction: list[dict[str, Any]] = field(default_factory=list)
    eval_report: LoadReport | None = None
    coverage: Coverage | None = None  # the evaluation sets an --eval-data file covers (None: every set)
    _eval_data: tuple[tuple, PairDataset] | None = None

    # --- data ----------------------------------------------------------------------------
    def covers(self, name: str) -> bool:
        """Whether the run evaluates the set ``name`` (an ``--eval-data`` file may cover only some)."""
        return self.coverage is None or name in self.coverage

    def builtin(self, family: str, iid: str | None, split: str, n: int, kwargs: dict | None = None) -> PairDataset:
        rows = load_pairs(family, iid, split=split, kwargs=kwargs).head(n)
        if split != "test":
            self.used_rows.extend(rows)
        return rows

    def eval_data(self) -> PairDataset:
        """The ``--eval-data`` file, read once (its schema, convention and failed rewrites go to the log and config)."""
        cfg = self.config
        if self._eval_data is None or self._eval_data[0] != (cfg.eval_data, cfg.fields, cfg.convention):
            self.use_eval_data(*read_pairs_file(cfg.eval_data, cfg.fields, cfg.convention))  # type: ignore[arg-type]
        return self._eval_data[1]  # type: ignore[index]

    def use_eval_data(self, data: PairDataset, report: LoadReport) -> None:
        """Take the ``--eval-data`` file as already read (and say how it was read)."""
        for line in report.lines():
            self.say(f"  {line}")
        cfg = self.config
        self.eval_report, self._eval_data = report, ((cfg.eval_data, cfg.fields, cfg.convention), data)

    def eval_rows(self, family: str, iid: str, kwargs: dict | None = None, name: str | None = None) -> PairDataset:
        """Test rows (or the ``--eval-data`` rows that check ``iid`` with ``kwargs``), checked against the used rows.

        External rows keep every instruction they check (prompt-level accuracy needs all of them).
        """
        cfg = self.config
        data = self.eval_data() if cfg.eval_data else None
        if data is not None and self.eval_report is not None and self.eval_report.schema == QUERIES_SCHEMA:
            rows = rows_from_queries(data, iid, kwargs or {})  # phrased as the built-in rows are
            if cfg.n_eval:
                rows = rows.head(cfg.n_eval)
        elif data is not None:
            picked = [r for r in data if matches(r, iid, kwargs)]
            rows = PairDataset(picked, name=f"{cfg.eval_data}[{name or iid}]")
            if cfg.n_eval:
                rows = rows.head(cfg.n_eval)
            if not rows:
                raise DatasetError(f"{cfg.eval_data}: no rows check {iid}" + (f" with {kwargs}" if kwargs else ""))
        else:
            rows = load_pairs(family, iid, split="test", kwargs=kwargs).head(cfg.n_eval or 0)
        rows.require_nonempty(f"evaluation rows for {name or iid}")
        check_split_hygiene(self.used_rows, rows)
        return rows

    # --- directions ----------------------------------------------------------------------
    def _acts(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.act_cache]
        if missing:
            acts = collect_activations(self.model, missing, batch_size=self.config.batch_size, progress=False)
            self.act_cache.update(zip(missing, acts))
        return torch.stack([self.act_cache[p] for p in prompts])

    def direction(self, name: str, rows: PairDataset, method: str = "mean") -> Direction:
        """Direction of ``method`` (default the paper's mean difference) at every layer; activations are cached per
        prompt, so other methods and subsets of the same pairs run no new pass."""
        if name not in self.directions:
            self.say(f"  direction {name} from {len(rows)} train pairs" + ("" if method == "mean" else f" ({method})"))
            n = int(self.model.cfg.n_layers)
            self.directions[name] = direction_from_activations(
                self._acts(rows.prompts()), self._acts(rows.prompts_without_instruction()), layers=range(n), name=name,
                model_name=model_info(self.model).name, n_model_layers=n, data_hash=rows.hash(),
                extra={"instruction_ids": rows.instruction_ids(), "split": "train", "kwargs": kwargs_used(rows)},
                method=method, seed=self.config.seed,
            )
        return self.directions[name]

    # --- sweep and scoring ---------------------------------------------------------------
    def sweep(self, targets: Sequence[SweepTarget]) -> SweepResult:
        cfg = self.config
        settings = SweepSettings(
            layers=cfg.layers or [], strengths=cfg.strengths or [1.0], max_new_tokens=cfg.max_new_tokens or 48,
            batch_size=cfg.batch_size, unit_size=cfg.batch_size, max_ppl_ratio=cfg.max_ppl_ratio, **rule_settings(cfg.rule, cfg.max_degeneration, cfg.max_degeneration_gain),
            seed=cfg.seed, max_batch=cfg.max_batch, pack=cfg.pack,
            search=cfg.search, search_keep=cfg.search_keep,
        )
        executor = make_executor(cfg.executor, address=cfg.address, workers=cfg.workers, model=cfg.model,
                                 reference=cfg.reference_model if self.reference is not self.model else None,
                                 device=cfg.device, threads=cfg.threads)
        result = run_sweep(self.model, targets, settings, self.out_dir / "sweep.jsonl", self.reference, memo=self.memo, say=self.say,
                           executor=executor)
        self.notes.extend(result.notes)
        self.sweep_stats = sweep_stats(result)
        rate = self.sweep_stats.get("units_per_s")
        self.say(f"  sweep: {result.units_run} units run, {result.units_skipped} resumed from sweep.jsonl"
                 + (f" ({rate:.3g} units/s, executor {self.sweep_stats['executor']})" if rate else ""))
        return result

    def score(self, rows: Sequence[PairRow], prompts: Sequence[str], responses: Sequence[str], meta: dict[str, Any]) -> dict[str, Any]:
        """Check and score responses, keep the raw generations, return the table cell.

        Accuracy is IFEval's prompt level (every instruction of a row followed), strict and loose, with 95%
        Wilson intervals; ``instruction_accuracy`` is IFEval's instruction level (share of all checks).
        Keys starting with ``_`` (per-prompt passes and checks) feed paired tests and sub-scores and are not written.
        """
        checks = check_rows(rows, responses)
        strict, loose = prompt_passes(checks)
        ppl = self.memo.perplexities(self.reference, prompts, responses, self.config.batch_size)
        deg = [degeneration(t) for t in responses]
        for row, prompt, text, s, lo, p, d in zip(rows, prompts, responses, strict, loose, ppl, deg):
            self.generations.append({**meta, "base_id": row.base_id, "split": row.split, "prompt": prompt, "response": text,
                                     "eval_instruction_ids": list(row.eval_instruction_ids),
                                     "eval_kwargs": [dict(k) for k in row.eval_kwargs], "strict": s, "loose": lo,
                                     "perplexity": p, "degeneration": d})
        by_id: dict[str, list[tuple[bool, bool]]] = {}
        for cs in checks:
            for c in cs:
                by_id.setdefault(c.instruction_id, []).append((c.strict, c.loose))
        label = {k: v for k, v in meta.items() if not k.startswith("_")}
        for iid, res in sorted(by_id.items()):
            self.per_instruction.append({**label, "checked_id": iid, "n": len(res), **rate_cell([a for a, _ in res], "strict"),
                                         **rate_cell([b for _, b in res], "loose")})
        flat = [c for cs in checks for c in cs]
        return {**meta, **rate_columns(strict, loose, [c.strict for c in flat], [c.loose for c in flat]),
                "perplexity": mean_perplexity(ppl), "degeneration": sum(deg) / len(deg), "_ppl": list(ppl), "_deg": deg,
                "_keys": [r.base_id for r in rows], "_checks": checks, "_texts": list(responses)}

    def prefetch_conditions(self, items: Sequence[tuple], conditions: Sequence[str] = CONDITIONS) -> None:
        """Decode the conditions of several ``(rows, specs)`` (or ``(rows, specs, conditions)``) at once, in packed
        batches; the tables then read the memo."""
        requests = [r for rows, specs, *own in items
                    for r in condition_requests(rows, specs, own[0] if own else conditions, no_instruction_rows=rows.with_twin())]
        self.memo.generate_many(requests, self.config.max_new_tokens)

    def conditions_table(self, rows: PairDataset, specs: list | None, meta: dict[str, Any],
                         conditions: Sequence[str] = CONDITIONS) -> list[dict[str, Any]]:
        """The four conditions for ``rows`` (steered ones only when a selection exists), with McNemar p-values.

        The no-instruction conditions use the rows that have an instruction-free twin (none for IFEval rows).
        """
        twin_rows = rows.with_twin()
        out = run_conditions(self.memo, rows, specs, conditions, self.config.max_new_tokens, no_instruction_rows=twin_rows)
        table = []
        for cond, texts in out.items():
            used = rows if cond.startswith("instruction") else twin_rows
            prompts = used.prompts() if cond.startswith("instruction") else used.prompts_without_instruction()
            cell_meta = {**meta, "condition": cond}
            if not cond.endswith("_steered"):  # layer, strength and mode describe the steered conditions only
                cell_meta.update({k: None for k in ("layer", "strength", "mode", "scale", "rule") if k in meta})
                if "steering" in meta:
                    cell_meta["steering"] = "none"
            table.append(self.score(used, prompts, texts, cell_meta))
        attach_p_values(table, [])
        return table
