"""The state one reproduce run shares between its steps: data with split bookkeeping, directions, scoring."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..activations import collect_activations
from ..data import PairDataset, PairRow, load_pairs, load_pairs_file
from ..directions import Direction, direction_from_activations
from ..evaluation.quality import degeneration, mean_perplexity, response_perplexities
from ..models import model_info
from .conditions import CONDITIONS, GenerationMemo, run_conditions
from .config import ReproduceConfig
from .hygiene import check_split_hygiene
from .executors import make_executor, sweep_stats
from .sweep import SweepResult, SweepSettings, SweepTarget, run_sweep, score_rows


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

    # --- data ----------------------------------------------------------------------------
    def builtin(self, family: str, iid: str | None, split: str, n: int, kwargs: dict | None = None) -> PairDataset:
        rows = load_pairs(family, iid, split=split, kwargs=kwargs).head(n)
        if split != "test":
            self.used_rows.extend(rows)
        return rows

    def eval_rows(self, family: str, iid: str, kwargs: dict | None = None) -> PairDataset:
        """Test rows (or rows of --eval-data checking ``iid``), checked against the used rows."""
        cfg = self.config
        if cfg.eval_data:
            rows = load_pairs_file(cfg.eval_data).filter(instruction=iid)
            picked = []
            for r in rows:
                if iid not in r.eval_instruction_ids:
                    continue
                kw = r.eval_kwargs[r.eval_instruction_ids.index(iid)]
                if kwargs and any(kw.get(k) != v for k, v in kwargs.items()):
                    continue
                picked.append(replace(r, instruction_id=iid, kwargs=kw, eval_instruction_ids=(iid,), eval_kwargs=(kw,)))
            rows = PairDataset(picked, name=f"{cfg.eval_data}[{iid}]").head(cfg.n_eval)
        else:
            rows = load_pairs(family, iid, split="test", kwargs=kwargs).head(cfg.n_eval)
        rows.require_nonempty(f"evaluation rows for {iid}")
        check_split_hygiene(self.used_rows, rows)
        return rows

    # --- directions ----------------------------------------------------------------------
    def _acts(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.act_cache]
        if missing:
            acts = collect_activations(self.model, missing, batch_size=self.config.batch_size, progress=False)
            self.act_cache.update(zip(missing, acts))
        return torch.stack([self.act_cache[p] for p in prompts])

    def direction(self, name: str, rows: PairDataset) -> Direction:
        """Mean-difference direction at every layer; without-instruction activations are shared across calls."""
        if name not in self.directions:
            self.say(f"  direction {name} from {len(rows)} train pairs")
            n = int(self.model.cfg.n_layers)
            self.directions[name] = direction_from_activations(
                self._acts(rows.prompts()), self._acts(rows.prompts_without_instruction()), layers=range(n), name=name,
                model_name=model_info(self.model).name, n_model_layers=n, data_hash=rows.hash(),
                extra={"instruction_ids": rows.instruction_ids(), "split": "train"},
            )
        return self.directions[name]

    # --- sweep and scoring ---------------------------------------------------------------
    def sweep(self, targets: Sequence[SweepTarget]) -> SweepResult:
        cfg = self.config
        settings = SweepSettings(
            layers=cfg.layers or [], strengths=cfg.strengths or [1.0], max_new_tokens=cfg.max_new_tokens or 48,
            batch_size=cfg.batch_size, unit_size=cfg.batch_size, max_ppl_ratio=cfg.max_ppl_ratio,
            max_degeneration=cfg.max_degeneration, seed=cfg.seed,
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
        """Check and score responses, keep the raw generations, return the table cells."""
        strict, loose = score_rows(rows, responses)
        ppl = response_perplexities(self.reference, prompts, responses, batch_size=self.config.batch_size)
        deg = [degeneration(t) for t in responses]
        for row, prompt, text, s, lo, p, d in zip(rows, prompts, responses, strict, loose, ppl, deg):
            self.generations.append({**meta, "base_id": row.base_id, "split": row.split, "prompt": prompt, "response": text,
                                     "eval_instruction_ids": list(row.eval_instruction_ids), "strict": s, "loose": lo,
                                     "perplexity": p, "degeneration": d})
        return {**meta, "n": len(rows), "accuracy": sum(strict) / len(rows), "loose_accuracy": sum(loose) / len(rows),
                "perplexity": mean_perplexity(ppl), "degeneration": sum(deg) / len(deg)}

    def conditions_table(self, rows: PairDataset, specs: list | None, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """The four conditions for ``rows`` (steered ones only when a selection exists)."""
        out = run_conditions(self.memo, rows, specs, CONDITIONS, self.config.max_new_tokens)
        table = []
        for cond, texts in out.items():
            prompts = rows.prompts() if cond.startswith("instruction") else rows.prompts_without_instruction()
            cell_meta = {**meta, "condition": cond}
            if not cond.endswith("_steered"):  # layer, strength and mode describe the steered conditions only
                cell_meta.update({k: None for k in ("layer", "strength", "mode", "scale") if k in meta})
                if "steering" in meta:
                    cell_meta["steering"] = "none"
            table.append(self.score(rows, prompts, texts, cell_meta))
        return table
