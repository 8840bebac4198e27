"""``workbench reproduce``: the paper's experiments end to end, seeded, resumable, split-clean.

Directions come from train pairs, layer/strength selection from validation pairs (the sweep),
and every number in the tables from test pairs (or ``--eval-data``). Each run writes
``<out>/<model>/<experiment>/``: config.json, generations.jsonl, results.csv/.md, sweep.jsonl
(resumable units), sweep.csv/.md (heatmap records), selection.json and the directions.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data import PairDataset, PairRow
from ..directions import Direction
from ..errors import DatasetError, LayerError, ShapeError, WorkbenchError
from ..evaluation.stats import rate_cell
from ..evaluation.punkt import count_sentences
from ..evaluation.quality import mean_perplexity
from ..io import write_json_atomic, write_text_atomic
from ..models import load_model, model_info
from ..names import safe_name
from ..version import __version__
from .conditions import CONDITIONS, GenerationMemo
from .coverage import Coverage, check_coverage, keyword_tasks
from .config import (
    EXPERIMENTS,
    LENGTH_ID,
    PRESETS,
    TITLE_ID,
    ReproduceConfig,
    cpu_threads,
    length_kwargs,
    length_scale,
    quick_layers,
)
from .executors import make_executor
from .hygiene import check_split_hygiene
from .results import write_jsonl, write_table
from .run import Run, attach_p_values, rate_columns
from .sweep import SweepResult, heatmap_records
from .targets import SweepTarget, cell_meta, cell_specs, format_target_names, run_targets, steering_spec

__all__ = [
    "EXPERIMENTS", "PRESETS", "RUNNERS", "ReproduceConfig", "Run", "check_transferable", "cpu_threads", "length_kwargs",
    "length_scale", "quick_layers", "run_reproduce",
]

def _model_dir(name: str) -> str:
    return safe_name(name)  # bounded: a 300-character --word must not fail as "File name too long" after the sweep


STEERED = tuple(c for c in CONDITIONS if c.endswith("_steered"))


def _same_cell(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and (a["layer"], a["coeff"]) == (b["layer"], b["coeff"])


def _rule_label(sweep: SweepResult, name: str) -> str:
    """Which rule chose ``name``'s steered rows: ``workbench``, or ``both`` when the paper's rule chose the same cell."""
    return "both" if _same_cell(sweep.selection.get(name), sweep.paper_selection.get(name)) else "workbench"


def _paper_specs(sweep: SweepResult, name: str, direction: Direction, mode: str, scale: float = 1.0,
                 sign: float = 1.0) -> list | None:
    """Steering at the paper rule's cell for ``name``, when it differs from the workbench rule's (else None)."""
    paper = sweep.paper_selection.get(name)
    if paper is None or _same_cell(sweep.selection.get(name), paper):
        return None
    return [steering_spec(direction, paper["layer"], sign * paper["coeff"], mode, scale)]


def _paper_rows(run: Run, sweep: SweepResult, name: str, rows: PairDataset, specs: list | None, meta: dict[str, Any],
                conditions: Sequence[str] = CONDITIONS) -> list[dict[str, Any]]:
    """The steered conditions at the paper rule's cell (rows marked ``rule: paper``), so that every table shows
    what the perplexity-only rule would have reported beside the workbench's rule; none when the two agree."""
    if specs is None:
        return []
    paper = sweep.paper_selection[name]
    cell = {**meta, "rule": "paper", "layer": paper["layer"], "strength": paper["coeff"]}
    return run.conditions_table(rows, specs, cell, [c for c in conditions if c in STEERED])


def _save_directions(run: Run, selection: dict[str, Any], paper_selection: dict[str, Any] | None = None) -> None:
    """Each direction as safetensors, with its selection (and the paper rule's) in ``extra``."""
    for name, d in run.directions.items():
        sel = selection.get(name)
        d2 = replace(d, extra={**d.extra, "selection": sel, "paper_selection": (paper_selection or {}).get(name)})
        d2.save(run.out_dir / "directions" / f"{_model_dir(name)}.safetensors")
    write_json_atomic(run.out_dir / "selection.json", selection)


# --- experiments -------------------------------------------------------------------------
def _format_targets(run: Run, ids: Sequence[str]) -> list[tuple[SweepTarget, str, dict[str, Any] | None]]:
    cfg = run.config
    targets = []
    for name, iid, kwargs in format_target_names(ids):
        if not run.covers(name):  # the --eval-data file has no row for it (listed in the log and on the page)
            continue
        train = run.builtin("format", iid, "train", cfg.n_train or 0, kwargs)
        val = run.builtin("format", iid, "validation", cfg.n_val or 0, kwargs)
        targets.append((SweepTarget(name, val, run.direction(name, train), cfg.mode or "project"), iid, kwargs))
    return targets


FORMAT_COLUMNS = ["instruction_id", "condition", "rule", "n", "accuracy", "accuracy_p", "loose_accuracy", "perplexity",
                  "degeneration", "layer", "strength", "mode"]


def exp_format(run: Run) -> dict[str, Any]:
    """Per-instruction accuracy under the four conditions, steering at the selected layer."""
    cfg = run.config
    targets = _format_targets(run, cfg.instructions or [])
    evals = {t.name: run.eval_rows("format", iid, kwargs, name=t.name) for t, iid, kwargs in targets}  # bad data fails here
    sweep = run.sweep([t for t, _, _ in targets])
    paper = {t.name: _paper_specs(sweep, t.name, t.direction, t.mode) for t, _, _ in targets}
    run.prefetch_conditions([(evals[t.name], cell_specs(t.direction, sweep.selection.get(t.name), t.mode)) for t, _, _ in targets]
                            + [(evals[t.name], paper[t.name], STEERED) for t, _, _ in targets if paper[t.name]])
    table: list[dict[str, Any]] = []
    for t, iid, kwargs in targets:
        sel = sweep.selection.get(t.name)
        rows = evals[t.name]
        run.say(f"  {t.name}: conditions on {len(rows)} evaluation prompts ({len(rows.with_twin())} with an instruction-free twin)")
        meta = {"instruction_id": t.name, "rule": _rule_label(sweep, t.name), **cell_meta(sel, t.mode)}
        table += run.conditions_table(rows, cell_specs(t.direction, sel, t.mode), meta)
        table += _paper_rows(run, sweep, t.name, rows, paper[t.name], meta)
    table += _pooled_by_rule(table, ["condition"], {"instruction_id": "all"})
    attach_p_values(table, ["instruction_id"])
    return {"table": table, "columns": _with_instruction_level(table, FORMAT_COLUMNS), "sweep": sweep, "selection": sweep.selection}


def _checks_several(table: Sequence[dict[str, Any]]) -> bool:
    """Whether some prompt of the table checks more than one instruction."""
    return any(r.get("n_checks", r["n"]) != r["n"] for r in table)


def _with_instruction_level(table: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """IFEval's instruction-level accuracies beside the prompt-level ones, where some prompt checks several instructions."""
    if not _checks_several(table):
        return columns
    at = columns.index("loose_accuracy") + 1
    return columns[:at] + ["n_checks", "instruction_accuracy", "instruction_loose_accuracy"] + columns[at:]


def _pooled(table: list[dict[str, Any]], by: Sequence[str], extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows pooled over instructions: passes concatenated (so intervals and paired tests pool too), perplexity as a
    geometric mean over responses, degeneration as a mean over responses."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in table:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        cat = lambda name: [x for r in rs for x in r[name]]  # noqa: E731
        ppl, deg = cat("_ppl"), cat("_deg")
        keys = [f"{r.get('instruction_id', '')}/{k}" for r in rs for k in r["_keys"]]
        out.append({**extra, **dict(zip(by, key)),
                    **rate_columns(cat("_strict"), cat("_loose"), cat("_inst_strict"), cat("_inst_loose")),
                    "perplexity": mean_perplexity(ppl), "degeneration": sum(deg) / len(deg) if deg else math.nan,
                    "_ppl": ppl, "_deg": deg, "_keys": keys})
    return out


def _pooled_by_rule(table: list[dict[str, Any]], by: Sequence[str], extra: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`_pooled` rows: unsteered conditions once, steered ones under each rule (a ``both`` row counts for both)."""
    unsteered = [r for r in table if r["condition"] not in STEERED]
    out = _pooled(unsteered, by, extra)
    for rule in ("workbench", "paper"):
        out += _pooled([r for r in table if r["condition"] in STEERED and r.get("rule") in (rule, "both")], by, {**extra, "rule": rule})
    order = {c: i for i, c in enumerate(CONDITIONS)}
    return sorted(out, key=lambda r: (order.get(r["condition"], len(order)), r.get("rule") == "paper"))


def _length_targets(run: Run, ns: Sequence[int]) -> tuple[Direction, list[SweepTarget]]:
    cfg = run.config
    per = max(1, math.ceil((cfg.n_train or 0) / len(ns)))
    train = PairDataset([r for n in ns for r in run.builtin("length", LENGTH_ID, "train", per, length_kwargs(n))], name="length-train")
    direction = run.direction("length", train)
    targets = [
        SweepTarget(f"length<={n}", run.builtin("length", LENGTH_ID, "validation", cfg.n_val or 0, length_kwargs(n)),
                    direction, "add", group="length", scale=length_scale(n))
        for n in ns
    ]
    return direction, targets


def exp_length(run: Run) -> dict[str, Any]:
    """A length direction, strength scaled with the target N; sentence counts move with the strength."""
    cfg = run.config
    ns = cfg.targets or [1, 3]
    direction, targets = _length_targets(run, ns)
    ns = [n for n in ns if run.covers(f"length<={n}")]  # the direction and sweep use every target; tables what is covered
    evals = {n: run.eval_rows("length", LENGTH_ID, length_kwargs(n)) for n in ns}  # bad data fails before the sweep
    sweep = run.sweep(targets)
    sel = sweep.selection.get("length")
    paper = {n: _paper_specs(sweep, "length", direction, "add", length_scale(n)) for n in ns}
    run.prefetch_conditions([(evals[n], cell_specs(direction, sel, "add", length_scale(n))) for n in ns]
                            + [(evals[n], paper[n], STEERED) for n in ns if paper[n]])
    table: list[dict[str, Any]] = []
    for n in ns:
        rows = evals[n]
        specs = cell_specs(direction, sel, "add", length_scale(n))
        run.say(f"  at most {n} sentence(s): four conditions on {len(rows)} evaluation prompts")
        meta = {"target_n": n, "rule": _rule_label(sweep, "length"), **cell_meta(sel, "add"), "scale": length_scale(n)}
        part = run.conditions_table(rows, specs, meta)
        part += _paper_rows(run, sweep, "length", rows, paper[n], meta)
        for r in part:  # mean sentence count of this condition's responses
            texts = [g["response"] for g in run.generations
                     if g.get("target_n") == n and g["condition"] == r["condition"] and g.get("rule") == r.get("rule")]
            r["mean_sentences"] = sum(count_sentences(t) for t in texts) / len(texts)
        table += part
    dist = _length_distribution(run, direction, sel, ns)
    attach_p_values(table, ["target_n"])
    return {"table": table, "columns": ["target_n", "condition", "rule", "n", "accuracy", "accuracy_p", "loose_accuracy", "mean_sentences",
                                        "perplexity", "degeneration", "layer", "strength", "scale"],
            "sweep": sweep, "selection": sweep.selection, "extra_tables": {"length_distribution": (dist, DIST_COLUMNS)}}


DIST_COLUMNS = ["strength", "layer", "n", "mean_sentences", "median_sentences", "share_1", "share_2", "share_3",
                "share_4", "share_5", "share_6+", "perplexity"]


def _length_distribution(run: Run, direction: Direction, sel: dict | None, ns: Sequence[int]) -> list[dict[str, Any]]:
    """Sentence-count distribution of responses without the instruction, at strength 0 and each swept strength."""
    if sel is None:
        return []
    cfg = run.config
    rows = run.eval_rows("length", LENGTH_ID, length_kwargs(ns[0])).with_twin()
    if not rows:  # e.g. IFEval rows: no prompt without the instruction
        return []
    prompts = rows.prompts_without_instruction()
    strengths = [0.0, *(cfg.strengths or [])]
    specs_at = {s: [] if s == 0 else [steering_spec(direction, sel["layer"], s, "add")] for s in strengths}
    run.memo.generate_many([(prompts, specs_at[s]) for s in strengths], cfg.max_new_tokens)  # every strength in one packed decode
    out = []
    for s in strengths:
        specs = specs_at[s]
        texts = run.memo.generate(prompts, specs, cfg.max_new_tokens)
        counts = sorted(count_sentences(t) for t in texts)
        ppl = run.memo.perplexities(run.reference, prompts, texts, cfg.batch_size)
        row = {"strength": s, "layer": sel["layer"], "n": len(counts), "mean_sentences": sum(counts) / len(counts),
               "median_sentences": float(counts[len(counts) // 2]), "perplexity": mean_perplexity(ppl)}
        for k in range(1, 6):
            row[f"share_{k}"] = sum(c == k for c in counts) / len(counts)
        row["share_6+"] = sum(c >= 6 for c in counts) / len(counts)
        out.append(row)
        for r, p, t in zip(rows, prompts, texts):
            run.generations.append({"experiment": "length_distribution", "strength": s, "layer": sel["layer"], "base_id": r.base_id,
                                    "prompt": p, "response": t, "sentences": count_sentences(t)})
    return out


def exp_keywords(run: Run) -> dict[str, Any]:
    """Inclusion (add the word's direction) and exclusion (subtract it, or ablate it), per word."""
    cfg = run.config
    tasks = {w: [task for task in keyword_tasks(cfg) if run.covers(f"{task}:{w}")] for w in cfg.words or []}
    words = [w for w in cfg.words or [] if tasks[w]]  # a word the --eval-data file has no row for gets no direction
    targets = []
    for w in words:
        kw = {"keywords": [w]}
        train = run.builtin("keywords", "keywords:existence", "train", cfg.n_train or 0, kw)
        val = run.builtin("keywords", "keywords:existence", "validation", cfg.n_val or 0, kw)
        targets.append(SweepTarget(f"include:{w}", val, run.direction(f"include:{w}", train), "add"))
    evals = {w: (run.eval_rows("keywords", "keywords:existence", {"keywords": [w]}) if "include" in tasks[w] else None,
                 run.eval_rows("keywords", "keywords:forbidden_words", {"forbidden_words": [w]}) if "exclude" in tasks[w] else None)
             for w in words}
    sweep = run.sweep(targets)
    table: list[dict[str, Any]] = []
    for t, w in zip(targets, words):
        sel = sweep.selection.get(t.name)
        inc, exc = evals[w]
        run.say(f"  {w}: {' and '.join(tasks[w])} on {len(inc if inc is not None else exc)} evaluation prompts each")
        rule = _rule_label(sweep, t.name)
        if inc is not None:
            meta = {"word": w, "task": "include", "steering": "add", "rule": rule, **cell_meta(sel, "add")}
            table += run.conditions_table(inc, cell_specs(t.direction, sel, "add"), meta)
            table += _paper_rows(run, sweep, t.name, inc, _paper_specs(sweep, t.name, t.direction, "add"), meta)
        for how in ("subtract", "ablate") if exc is not None else ():
            mode = "add" if how == "subtract" else "ablate"
            specs = None
            if sel is not None:
                specs = [steering_spec(t.direction, sel["layer"], -sel["coeff"], mode)]
            conds = CONDITIONS if how == "subtract" else STEERED
            meta = {"word": w, "task": "exclude", "steering": how, "rule": rule, **cell_meta(sel, mode)}
            table += run.conditions_table(exc, specs, meta, conds)
            table += _paper_rows(run, sweep, t.name, exc, _paper_specs(sweep, t.name, t.direction, mode, sign=-1.0), meta, conds)
    attach_p_values(table, ["word", "task"])
    return {"table": table, "columns": ["word", "task", "steering", "condition", "rule", "n", "accuracy", "accuracy_p", "loose_accuracy",
                                        "perplexity", "degeneration", "layer", "strength", "mode"], "sweep": sweep, "selection": sweep.selection}


def _combined_rows(run: Run, name: str, iid: str, kwargs: dict[str, Any] | None, n: int) -> PairDataset:
    """Evaluation rows asking for both the format and "at most n sentences": the length instruction is appended to
    each format row's prompt (as the paper does), built-in test rows or ``--eval-data`` rows alike."""
    from ..data.builtin import instruction_phrase

    fmt = run.eval_rows("format", iid, kwargs, name=name)
    rows = []
    for r in fmt:
        phrase = instruction_phrase(LENGTH_ID, length_kwargs(n), r.base_id)
        rows.append(PairRow(prompt=f"{r.prompt} {phrase}", prompt_without_instruction=r.prompt_without_instruction,
                            instruction_id=f"{r.instruction_id}+{LENGTH_ID}", kwargs={}, base_id=r.base_id,
                            eval_instruction_ids=(*r.eval_instruction_ids, LENGTH_ID),
                            eval_kwargs=(*r.eval_kwargs, length_kwargs(n)), split=r.split))
    data = PairDataset(rows, name=f"composition[{name}, at most {n}]").require_nonempty("composition rows")
    check_split_hygiene(run.used_rows, data)
    return data


def exp_composition(run: Run) -> dict[str, Any]:
    """Format and length steered at once (each at its own selected layer), against each alone."""
    cfg = run.config
    fmt_targets = _format_targets(run, cfg.instructions or [TITLE_ID])
    ns = cfg.targets or [2]
    length_dir, len_targets = _length_targets(run, ns)
    combined = {(t.name, n): _combined_rows(run, t.name, iid, kwargs, n) for t, iid, kwargs in fmt_targets for n in ns}
    sweep = run.sweep([*(t for t, _, _ in fmt_targets), *len_targets])
    len_sel = sweep.selection.get("length")
    table: list[dict[str, Any]] = []
    cells = []  # (meta, rows, prompts, specs) of every cell, decoded together in packed batches below
    for t, iid, kwargs in fmt_targets:
        fsel = sweep.selection.get(t.name)
        for n in ns:
            rows = combined[(t.name, n)]
            fspec = cell_specs(t.direction, fsel, t.mode)
            lspec = cell_specs(length_dir, len_sel, "add", length_scale(n))
            sets = {"none": [], "format": fspec, "length": lspec, "both": None if fspec is None or lspec is None else fspec + lspec}
            run.say(f"  {t.name} + at most {n} sentences on {len(rows)} evaluation prompts")
            for steering, specs in sets.items():
                if specs is None:
                    continue
                for kind in ("no_instruction", "instruction"):
                    used = rows if kind == "instruction" else rows.with_twin()
                    if not used:
                        continue
                    prompts = used.prompts() if kind == "instruction" else used.prompts_without_instruction()
                    cells.append(({"format": t.name, "target_n": n, "steering": steering, "prompt": kind}, used, prompts, specs))
    run.memo.generate_many([(prompts, specs) for _, _, prompts, specs in cells], cfg.max_new_tokens)
    for meta, used, prompts, specs in cells:
        cell = run.score(used, prompts, run.memo.generate(prompts, specs, cfg.max_new_tokens), meta)
        fmt_pass, len_pass = _format_and_length_passes(cell["_checks"])
        cell.update({**rate_cell(fmt_pass, "format_acc"), **rate_cell(len_pass, "length_acc"),
                     "both_acc": cell["accuracy"], "both_acc_lo": cell["accuracy_lo"], "both_acc_hi": cell["accuracy_hi"]})
        table.append(cell)
    attach_p_values(table, ["format", "target_n", "prompt"], key="steering",
                    twins={"format": "none", "length": "none", "both": "none"}, column="both_acc_p")
    for r in table:
        r["format_layer"] = None if sweep.selection.get(r["format"]) is None else sweep.selection[r["format"]]["layer"]
        r["length_layer"] = None if len_sel is None else len_sel["layer"]
    return {"table": table, "columns": ["format", "target_n", "steering", "prompt", "n", "format_acc", "length_acc", "both_acc",
                                        "both_acc_p", "perplexity", "degeneration", "format_layer", "length_layer"],
            "sweep": sweep, "selection": sweep.selection}


def _format_and_length_passes(all_checks: Sequence[Sequence[Any]]) -> tuple[list[bool], list[bool]]:
    """Per response (from its checks): every non-length instruction followed (strict), and the length instruction."""
    fmt, length = [], []
    for checks in all_checks:
        fmt.append(all(c.strict for c in checks if c.instruction_id != LENGTH_ID))
        length.append(all(c.strict for c in checks if c.instruction_id == LENGTH_ID))
    return fmt, length


def check_transferable(source: Any, target: Any) -> None:
    """Directions move between models only with the same d_model and layer count (a clear error otherwise)."""
    s_name, t_name = model_info(source).name, model_info(target).name
    if int(source.cfg.d_model) != int(target.cfg.d_model):
        raise ShapeError(f"cannot transfer directions from {s_name} (d_model={source.cfg.d_model}) to {t_name} "
                         f"(d_model={target.cfg.d_model}): d_model must match")
    if int(source.cfg.n_layers) != int(target.cfg.n_layers):
        raise LayerError(f"cannot transfer directions from {s_name} ({source.cfg.n_layers} layers) to {t_name} "
                         f"({target.cfg.n_layers} layers): the layer count must match")


def exp_transfer(run: Run) -> dict[str, Any]:
    """Directions computed on ``--source-model`` steer ``--model`` (instruct -> base in the paper)."""
    cfg = run.config
    source_name = cfg.source_model or cfg.model
    from ..transfer.experiment import check_map_option, exp_mapped_transfer, needs_maps

    check_map_option(cfg.map, cfg.map_prompts)  # before the source model loads
    if source_name == cfg.model:
        source = run.model
        run.notes.append("source and target are the same model: this run checks the mechanism, not transfer")
    else:
        source = load_model(source_name, device=cfg.device)
    if needs_maps(cfg, source, run.model):  # --map, or models of different shapes: fitted maps, four directions' rows
        return exp_mapped_transfer(run, source)
    check_transferable(source, run.model)
    src_run = Run(config=cfg, model=source, reference=source, out_dir=run.out_dir, memo=run.memo, say=run.say, used_rows=run.used_rows)
    items = run_targets(cfg, run.covers, "transfer")  # format ids and --word inclusions
    data = {name: (run.builtin(family, iid, "train", cfg.n_train or 0, kwargs), run.builtin(family, iid, "validation", cfg.n_val or 0, kwargs))
            for name, family, iid, kwargs, _ in items}
    evals = {name: run.eval_rows(family, iid, kwargs, name=name) for name, family, iid, kwargs, _ in items}  # before any activation
    targets = []
    for name, *_, mode in items:
        train, val = data[name]
        d = src_run.direction(name, train)
        d.check_compatible(run.model)
        run.directions[name] = d
        targets.append(SweepTarget(name, val, d, mode))
    sweep = run.sweep(targets)
    table: list[dict[str, Any]] = []
    for t in targets:
        sel = sweep.selection.get(t.name)
        rows = evals[t.name]
        table += run.conditions_table(rows, cell_specs(t.direction, sel, t.mode),
                                      {"instruction_id": t.name, "source": model_info(source).name, **cell_meta(sel, t.mode)})
    return {"table": table, "columns": ["instruction_id", "source", "condition", "n", "accuracy", "accuracy_p", "loose_accuracy", "perplexity",
                                        "degeneration", "layer", "strength", "mode"], "sweep": sweep, "selection": sweep.selection}


def exp_estimators(run: Run) -> dict[str, Any]:
    """Estimators of the direction compared (``workbench.experiments.estimators``)."""
    from .estimators import exp_estimators as run_estimators

    return run_estimators(run)


def exp_conditional(run: Run) -> dict[str, Any]:
    """Conditional steering gated by the direction's own projection (``workbench.experiments.conditional``)."""
    from .conditional import exp_conditional as run_conditional

    return run_conditional(run)


RUNNERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "format": exp_format, "length": exp_length, "keywords": exp_keywords, "composition": exp_composition, "transfer": exp_transfer,
    "estimators": exp_estimators, "conditional": exp_conditional,
}
SWEEP_COLUMNS = ["instruction_id", "layer", "coeff", "n", "accuracy", "loose_accuracy", "perplexity", "degeneration"]


def _figures(run: Run, records: list[dict[str, Any]], table: list[dict[str, Any]]) -> list[str]:
    """HTML figures from the figures module when it offers them (optional: a failure is only a note)."""
    try:
        from .. import figures
    except Exception:  # noqa: BLE001  (figures are optional)
        return []
    made: list[str] = []
    folder = run.out_dir / "figures"
    heatmap = getattr(figures, "sweep_heatmap_figure", None)
    bars = getattr(figures, "conditions_figure", None)
    jobs: list[tuple[str, Callable[[], Any]]] = []
    if heatmap is not None:
        for iid in dict.fromkeys(r["instruction_id"] for r in records):
            jobs.append((f"sweep_{_model_dir(iid)}.html", lambda iid=iid: heatmap(records, iid)))
    cond_rows = [r for r in table if "instruction_id" in r and "condition" in r and r["instruction_id"] != "all"
                 and r.get("direction", "none") in ("none", "transferred")  # a mapped transfer: own/random rows have their own figure
                 and r.get("steering") != "conditional"]  # the four conditions; conditional rows have the gate figure
    if bars is not None and cond_rows:
        jobs.append(("conditions.html", lambda: bars(cond_rows)))
    for name, build in jobs:
        try:
            made.append(str(figures.save_figure(build(), folder / name)))
        except Exception as exc:  # noqa: BLE001  (a figure must never sink a finished run)
            run.notes.append(f"figure {name} not written: {exc}")
    return made


def run_reproduce(config: ReproduceConfig, say: Callable[[str], None] = print, model: Any | None = None) -> Path:
    """Run one experiment; return its output folder. ``model``: an already loaded ``config.model`` (reused)."""
    if config.experiment not in EXPERIMENTS:
        raise WorkbenchError(f"unknown experiment {config.experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    from .flags import check_experiment_config

    check_experiment_config(config)  # a flag this experiment ignores, an unknown instruction: before any folder or model
    make_executor(config.executor, address=config.address, workers=config.workers)  # fail at once (e.g. Ray not installed)
    eval_file = None
    if config.eval_data:  # a bad evaluation file fails before the model is loaded
        from ..data import read_pairs_file

        eval_file = read_pairs_file(config.eval_data, config.fields, config.convention)
    # what the evaluation file covers, before any model or direction: a file that covers nothing fails here
    coverage = check_coverage(config, *((eval_file[0], eval_file[1].schema) if eval_file else (None, None)))
    threads_before = torch.get_num_threads()
    try:
        return _run(config, say, model, eval_file, coverage)
    finally:
        torch.set_num_threads(threads_before)


def _load() -> float | None:
    """The 1-minute load average (context for wall times on a shared machine), where the OS reports it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _run(config: ReproduceConfig, say: Callable[[str], None], model: Any | None, eval_file: tuple | None = None,
         coverage: Coverage | None = None) -> Path:
    start, load_start = time.time(), _load()
    torch.set_num_threads(cpu_threads(config.threads, config.device))
    torch.manual_seed(config.seed)
    if model is None:
        say(f"Loading {config.model} ...")
        model = load_model(config.model, device=config.device)
    elif model_info(model).name != Path(config.model).name:
        raise WorkbenchError(f"run_reproduce: the given model is {model_info(model).name}, the config names {config.model}")
    cfg = config.resolved(int(model.cfg.n_layers))
    reference = model if not cfg.reference_model or cfg.reference_model == cfg.model else load_model(cfg.reference_model, device=cfg.device)
    if reference is not model and reference.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise WorkbenchError(f"reference model {cfg.reference_model} has another tokenizer than {cfg.model}")
    out_dir = Path(cfg.out) / _model_dir(model_info(model).name) / cfg.experiment
    out_dir.mkdir(parents=True, exist_ok=True)
    from .lock import hold_run_folder
    _lock = hold_run_folder(out_dir)  # noqa: F841  one writer per run folder (a second process fails here); freed on return
    memo = GenerationMemo(model, cfg.max_new_tokens or 48, cfg.batch_size, cfg.seed, max_batch=cfg.max_batch, pack=cfg.pack)
    run = Run(config=cfg, model=model, reference=reference, out_dir=out_dir, memo=memo, say=say)
    if eval_file is not None:
        run.use_eval_data(*eval_file)
    run.coverage = coverage
    for line in coverage.lines() if coverage else []:
        say(f"  {line}")
    say(f"{cfg.experiment}: layers {cfg.layers}, strengths {cfg.strengths}, mode {cfg.mode}, "
        f"{cfg.n_train} train / {cfg.n_val} validation / {cfg.n_eval or 'all'} evaluation prompts, {cfg.max_new_tokens} new tokens")
    result = RUNNERS[cfg.experiment](run)
    sweep: SweepResult = result["sweep"]
    _save_directions(run, result["selection"], sweep.paper_selection)
    files = {"generations": str(write_jsonl(out_dir / "generations.jsonl", [{"experiment": cfg.experiment, **g} for g in run.generations]))}
    title = f"{cfg.experiment} on {model_info(model).name}{' (--quick)' if cfg.quick else ''}"
    modes = [m for m in dict.fromkeys(r.get("mode") for r in result["table"]) if m]  # --word rows steer in add mode
    note = _table_note(cfg, sweep, modes) + "".join(f" Not evaluated: {line.removeprefix('skipped ')}." for line in
                                             (coverage.lines() if coverage else []))
    files["results"] = [str(p) for p in write_table(out_dir / "results", result["table"], result["columns"], title, note)]
    sweep_rows = [r for g in sorted({*sweep.baselines, *(x["instruction_id"] for x in sweep.records)})
                  for r in ([sweep.baselines[g]] if g in sweep.baselines else []) + [x for x in sweep.records if x["instruction_id"] == g]]
    files["sweep"] = [str(p) for p in write_table(out_dir / "sweep", sweep_rows, SWEEP_COLUMNS, f"validation sweep ({cfg.experiment})",
                                                  "Rows with an empty layer are the unsteered baseline. Strength: see docs/reproduce.md.")]
    write_json_atomic(out_dir / "heatmap.json", heatmap_records(sweep))
    if sweep.search:
        write_json_atomic(out_dir / "search.json", sweep.search)  # --search fast: every cell's score, decoded or not
    if _checks_several(result["table"]):
        result.setdefault("extra_tables", {})["per_instruction"] = (run.per_instruction, _per_instruction_columns(run.per_instruction))
    for name, (rows, columns) in result.get("extra_tables", {}).items():
        files[name] = [str(p) for p in write_table(out_dir / name, rows, columns, name.replace("_", " "))]
    files["figures"] = _figures(run, heatmap_records(sweep), result["table"])
    elapsed = time.time() - start
    write_json_atomic(out_dir / "config.json", {
        "config": asdict(cfg), "model": {"name": model_info(model).name, "n_layers": int(model.cfg.n_layers),
                                         "d_model": int(model.cfg.d_model), "prompt_style": model_info(model).prompt_style},
        "reference_model": model_info(reference).name, "selection": result["selection"],
        "paper_selection": sweep.paper_selection, "notes": run.notes,
        "eval_data": None if run.eval_report is None else run.eval_report.to_dict(),
        "coverage": None if coverage is None else coverage.to_dict(),
        "generate_calls": memo.calls, "memo_seconds": {k: round(v, 1) for k, v in memo.seconds.items()}, "sweep": run.sweep_stats, "elapsed_s": round(elapsed, 1), "load_average": [load_start, _load()],
        "cpu_count": os.cpu_count(), "workbench_version": __version__,
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(), "files": files,
    })
    if cfg.publish:
        files["published"] = str(_publish(cfg, out_dir, model_info(model).name, elapsed, result, (load_start, _load()),
                                          given=config, notes=run.notes))
        write_json_atomic(out_dir / "config.json", {**json.loads((out_dir / "config.json").read_text()), "files": files})
    say(f"Done in {elapsed:.0f} s: {out_dir}")
    return out_dir


def _resumed_note(sweep: SweepResult) -> str:
    """Say when the wall time excludes a sweep resumed from an earlier run's sweep.jsonl."""
    if not sweep.units_skipped:
        return ""
    return (f" The sweep resumed {sweep.units_skipped} of its {sweep.units_skipped + sweep.units_run} units from an "
            "earlier run's sweep.jsonl, so the wall time does not include them.")


def _per_instruction_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Identity columns of the per-instruction table (as in the results table), then the checked id and its rates."""
    tail = ["checked_id", "n", "strict", "loose"]
    ident = [c for c in dict.fromkeys(k for r in rows for k in r)
             if c not in tail and not c.endswith(("_lo", "_hi")) and c not in ("layer", "strength", "mode", "scale")]
    return [*ident, *tail]


# fields a command line does not need to repeat (where it writes, which device) or that it spells its own way
_NOT_IN_COMMAND = {"experiment", "model", "out", "publish", "device"}
_FLAG_NAMES = {"instructions": "--instruction", "words": "--word", "pack": "--no-pack"}


def command_line(cfg: ReproduceConfig) -> str:
    """The ``workbench reproduce`` command that makes ``cfg`` (as the user gave it: the fields that differ from the
    defaults), so a published page names the run that produced it."""
    import shlex
    from dataclasses import fields as dc_fields

    parts = ["workbench", "reproduce", cfg.experiment, "--model", shlex.quote(cfg.model)]
    for f in dc_fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _NOT_IN_COMMAND or value == f.default:
            continue
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        if isinstance(value, bool):
            parts.append(flag)  # a switch (--quick, --include-only) or, for pack=False, --no-pack
        elif value is None:
            parts += [flag, "none"]  # a rule limit switched off
        elif f.name in ("instructions", "words"):
            parts += [part for v in value for part in (flag, shlex.quote(str(v)))]
        elif isinstance(value, (list, tuple)):
            parts += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
        else:
            parts += [flag, shlex.quote(f"{value:g}" if isinstance(value, float) else str(value))]
    return " ".join(parts)


def _publish(cfg: ReproduceConfig, out_dir: Path, model_name: str, elapsed: float, result: dict[str, Any],
             load: tuple[float | None, float | None], given: ReproduceConfig | None = None,
             notes: Sequence[str] = ()) -> Path:
    """One commit-ready Markdown page (results, extra tables, sweep, the run's notes) at ``<publish>/<model>/<name>``
    (``published_name``)."""
    parts = [(out_dir / "results.md").read_text(encoding="utf-8")]
    parts += [(out_dir / f"{name}.md").read_text(encoding="utf-8") for name in result.get("extra_tables", {})]
    parts.append((out_dir / "sweep.md").read_text(encoding="utf-8"))
    if notes:
        parts.append("## notes\n\n" + "".join(f"- {n}\n" for n in dict.fromkeys(notes)))
    cmd = command_line(given or cfg)
    head = (f"<!-- written by `{cmd} --publish ...`; do not edit by hand -->\n\n"
            f"Command: `{cmd}`. Wall time: {elapsed / 60:.1f} min on {torch.get_num_threads()} torch thread(s), "
            f"{os.cpu_count()} CPU cores, load average {load[0]} at the start and {load[1]} at the end "
            f"(torch {torch.__version__}, workbench {__version__}).{_resumed_note(result['sweep'])}\n\n")
    path = Path(cfg.publish) / _model_dir(model_name) / published_name(cfg)
    write_text_atomic(path, head + "\n".join(parts))
    return path


def published_name(cfg: ReproduceConfig) -> str:
    """``<experiment>.md``, or ``<experiment>-<word>...md`` for an experiment run on keywords it does not default to
    (``conditional --word ocean``), so a keyword run never overwrites the format run's page."""
    words = "-".join(re.sub(r"\W+", "-", w.lower()).strip("-") or "_" for w in cfg.words or [])
    return f"{safe_name(f'{cfg.experiment}-{words}')}.md" if words and cfg.experiment != "keywords" else f"{cfg.experiment}.md"


def _table_note(cfg: ReproduceConfig, sweep: SweepResult, modes: Sequence[str] = ()) -> str:
    """What the table shows, and each selection in words with its validation accuracy and n (under both rules);
    ``modes``: the steering modes the table's rows use (the configured mode when none is given)."""
    from .sweep import describe_rule, describe_selection, rule_settings

    rule = describe_rule(cfg.max_ppl_ratio, None, **rule_settings(cfg.rule, cfg.max_degeneration, cfg.max_degeneration_gain))
    paper_rule = describe_rule(cfg.max_ppl_ratio, None, None)
    groups = dict.fromkeys([*sweep.selection, *sweep.paper_selection])
    why = dict(n.split(": none selected: ", 1) for n in sweep.notes if ": none selected: " in n)
    lines = []
    for g in groups:
        ours, paper = sweep.selection.get(g), sweep.paper_selection.get(g)
        text = f"{g}: {describe_selection(ours)}" if ours else f"{g}: none selected ({why.get(g, 'no cell passed the rule')})"
        text += "; the paper's rule: " + ("the same" if _same_cell(ours, paper) else describe_selection(paper))
        lines.append(text)
    sel = "; ".join(lines)
    return (f"Accuracy: IFEval strict (loose beside it) on {'--eval-data' if cfg.eval_data else 'test'} prompts; "
            f"perplexity of the responses under the unsteered model; degeneration: share of repeated 3-grams of words and punctuation. "
            f"Steering selected on validation prompts ({' and '.join(modes or [str(cfg.mode)])} mode) by the {cfg.rule} rule ({rule}); rows with rule 'paper' "
            f"steer at the cell the paper's rule ({paper_rule}) selects where that differs, 'both' where the two rules agree. "
            f"Selected: {sel or 'n/a'}. Seed {cfg.seed}, greedy decoding, {cfg.max_new_tokens} new tokens."
            + (" vs_mean_p: McNemar's exact test against the mean method's same condition; vs_prompt_p: the steered "
               "responses without the instruction against the unsteered responses with the instruction in the prompt, "
               "paired by base query." if cfg.experiment == "estimators" else "")
            + (" Conditional: one steer(..., condition=gate) block over the instructed and uninstructed test prompts; the "
               "gate (layer, side, threshold) maximised hit rate - false-trigger rate on the validation prompts with and "
               "without the instruction (gates table). share_changed: responses that differ from the unsteered ones; "
               "share_gated: rows the gate steered (the hit rate on instructed prompts, the false-trigger rate on the "
               "others); vs_always_p: McNemar's exact test of conditional against always steered. On uninstructed prompts "
               "accuracy counts responses that follow the instruction they were not given."
               if cfg.experiment == "conditional" else ""))
