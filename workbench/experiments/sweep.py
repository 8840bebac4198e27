"""Layer x strength sweep on validation prompts, with a perplexity rule, resumable unit by unit.

Each (target, layer, strength, prompt batch) is one unit with a stable key; its generations and
scores are appended to a JSONL file as soon as it finishes. A rerun skips finished units, so an
interrupted sweep resumes and ends with the same table as an uninterrupted one.

What a target steers and what a strength means per mode: :mod:`.targets`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import WorkbenchError
from ..evaluation.quality import mean_perplexity
from ..evaluation.stats import rate_cell
from ..models.loading import model_info
from .conditions import GenerationMemo, pack_size
from .config import DEFAULT_MAX_DEGENERATION_GAIN, default_layers
from .executors import make_executor
from .job import Executor, SweepJob
from .store import UnitStore
from .targets import SweepTarget, steering_spec
from .units import Unit, score_rows

__all__ = [
    "DEFAULT_MAX_DEGENERATION_GAIN", "HEATMAP_KEYS", "SweepResult", "SweepSettings", "SweepTarget", "Unit", "default_layers",
    "degeneration_limit", "describe_selection", "heatmap_records", "plan_units", "rule_settings", "run_sweep", "score_rows",
    "select", "steering_spec", "summarize", "unit_key",
]

HEATMAP_KEYS = ("instruction_id", "layer", "coeff", "accuracy", "perplexity")
SCORING_VERSION = 2  # bump when checks or quality scores change, so stored units are not reused

@dataclass
class SweepSettings:
    """Generation and selection settings shared by every unit."""

    layers: Sequence[int]
    strengths: Sequence[float] = (1.0,)
    max_new_tokens: int = 48
    batch_size: int = 20
    unit_size: int = 20
    max_ppl_ratio: float | None = 2.0
    max_perplexity: float | None = None
    max_degeneration: float | None = None  # an absolute cap on mean degeneration (off by default)
    max_degeneration_gain: float | None = DEFAULT_MAX_DEGENERATION_GAIN  # mean degeneration <= unsteered + this (None: off)
    beat_unsteered: bool = True  # select only cells more accurate than no steering (False: the paper's rule)
    seed: int = 0
    max_batch: int | None = None  # rows per packed decode batch (None: chosen from the device, conditions.pack_size)
    pack: bool = True  # False: one unit at a time, each in its own decode batches (the pre-packing path)
    search: str = "full"  # full: decode every cell; fast: score cells by forward passes, decode the best layers
    search_keep: int = 3  # search="fast": layers decoded per group

    def __post_init__(self) -> None:
        if self.search not in ("full", "fast"):
            raise WorkbenchError(f"unknown search {self.search!r}; choose full or fast")
        if isinstance(self.search_keep, bool) or not isinstance(self.search_keep, int) or self.search_keep < 1:
            raise WorkbenchError(f"search_keep must be a positive integer, got {self.search_keep!r}")
        if not list(self.layers):
            raise WorkbenchError("the sweep grid has no layers")
        if not list(self.strengths):
            raise WorkbenchError("the sweep grid has no strengths")
        if self.max_batch is not None and (isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int)
                                           or self.max_batch < 1):
            raise WorkbenchError(f"max_batch must be a positive integer, got {self.max_batch!r}")

    def new_memo(self, model: Any) -> GenerationMemo:
        """An empty generation memo that decodes and packs as these settings say (what :func:`run_sweep` expects)."""
        return GenerationMemo(model, self.max_new_tokens, self.batch_size, self.seed, max_batch=self.max_batch, pack=self.pack)


@dataclass
class SweepResult:
    """Heatmap records (one per group, layer, strength), unsteered baselines and the selection per group."""

    records: list[dict[str, Any]]
    baselines: dict[str, dict[str, Any]]
    selection: dict[str, dict[str, Any] | None]
    units_run: int = 0
    units_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    search: list[dict[str, Any]] = field(default_factory=list)  # search="fast": every cell's score and whether it was decoded
    stats: dict[str, Any] = field(default_factory=dict)  # executor, workers, per-unit worker and driver seconds
    paper_selection: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # the paper's perplexity-only rule


def _fingerprint(model: Any, target: SweepTarget, settings: SweepSettings, reference: Any) -> str:
    """Hash of everything that changes a unit's result besides its own coordinates."""
    d = target.direction
    payload = {
        "model": model_info(model).name,
        "reference": model_info(reference).name,
        "direction": [d.name, d.data_hash, d.model_name, list(d.layers), d.n_pairs],
        "rows": target.rows.hash(),
        "mode": target.mode,
        "scale": target.scale,
        "with_instruction": target.with_instruction,
        "max_new_tokens": settings.max_new_tokens,
        "unit_size": settings.unit_size,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "scoring": SCORING_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def unit_key(fingerprint: str, target: str, layer: int | None, strength: float | None, batch: int) -> str:
    """Stable key of one unit; ``layer=None`` is the unsteered baseline."""
    where = "base" if layer is None else f"L{layer}/s{strength:g}"
    return f"{fingerprint}/{target}/{where}/b{batch}"


def plan_units(model: Any, targets: Sequence[SweepTarget], settings: SweepSettings, reference: Any | None = None,
               layers_for: dict[str, Sequence[int]] | None = None) -> list[Unit]:
    """Every unit of the sweep in a fixed order (per target: baseline, then layer x strength; per cell: batches).

    ``layers_for``: per target group, the layers to decode (a fast search's shortlist; default every grid layer)."""
    reference = model if reference is None else reference
    units: list[Unit] = []
    for target in targets:
        target.rows.require_nonempty(f"sweep target {target.name}")
        target.direction.check_compatible(model)
        fp = _fingerprint(model, target, settings, reference)
        prompts = target.prompts()
        rows = list(target.rows)
        cells: list[tuple[int | None, float | None]] = [(None, None)]
        layers = settings.layers if layers_for is None else [x for x in settings.layers if x in layers_for[target.group_name]]
        cells += [(layer, s) for layer in layers for s in settings.strengths]
        for layer, strength in cells:
            spec = None if layer is None else steering_spec(target.direction, layer, strength, target.mode, target.scale)
            for b, start in enumerate(range(0, len(rows), settings.unit_size)):
                sl = slice(start, start + settings.unit_size)
                units.append(Unit(
                    key=unit_key(fp, target.name, layer, strength, b), target=target.name, group=target.group_name,
                    layer=layer, strength=strength, mode=target.mode, scale=target.scale, batch=b,
                    rows=tuple(rows[sl]), prompts=tuple(prompts[sl]), spec=spec,
                ))
    return units


def run_sweep(
    model: Any,
    targets: Sequence[SweepTarget],
    settings: SweepSettings,
    path: str | Path,
    reference: Any | None = None,
    on_unit: Callable[[dict[str, Any]], None] | None = None,
    memo: GenerationMemo | None = None,
    say: Callable[[str], None] = lambda s: None,
    executor: str | Executor | None = "local",
) -> SweepResult:
    """Run (or resume) the sweep; every finished unit is in ``path`` as soon as the driver has it.

    ``executor``: ``"local"`` (in this process), ``"ray"`` (a local Ray cluster) or an
    :class:`~workbench.experiments.job.Executor` such as ``RayExecutor(address=..., workers=...)``.
    Resume and dedupe live here, so every executor records each unit exactly once.
    """
    reference = model if reference is None else reference
    if memo is None:
        memo = settings.new_memo(model)
    elif (memo.pack, memo.max_batch) != (settings.pack, settings.max_batch):
        raise WorkbenchError(f"run_sweep: the memo packs with (pack={memo.pack}, max_batch={memo.max_batch}) but the settings "
                             f"say (pack={settings.pack}, max_batch={settings.max_batch}); build the memo from the settings")
    store = UnitStore(path)
    done = store.load()
    layers_for, scores = None, []
    if settings.search == "fast":
        from .search import fast_scores, shortlist

        say(f"  search: scoring {len(settings.layers)} layers x {len(settings.strengths)} strengths by forward passes")
        # the first 16 tokens of each with-instruction response: greedy decoding of those 16 only (not the sweep's length)
        scores = fast_scores(model, targets, settings.layers, settings.strengths, memo, n_tokens=16, response_tokens=16,
                             batch_size=settings.batch_size)
        layers_for = shortlist(scores, settings.search_keep)
        scores = [{**r, "decoded": r["layer"] in layers_for[r["instruction_id"]]} for r in scores]
        say("  search: decoding " + "; ".join(f"{g}: layers {', '.join(map(str, ls))}" for g, ls in sorted(layers_for.items())))
    units = plan_units(model, targets, settings, reference, layers_for)
    n_keys = len({u.key for u in units})
    pending = list({u.key: u for u in units if u.key not in done}.values())  # each key once, in plan order
    max_batch = (memo.max_batch or pack_size(model)) if memo.pack else None  # the memo decodes: its packing is the job's
    job = SweepJob(model=model, reference=reference, batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                   seed=settings.seed, memo=memo, max_batch=max_batch, total=n_keys, done=n_keys - len(pending))
    run = 0

    def deliver(unit: Unit, result: dict[str, Any]) -> bool:
        nonlocal run
        if unit.key in store:  # a retried unit whose first result already arrived: recorded once only
            return False
        record = unit.record(result)
        store.append(record)
        run += 1
        job.done += 1
        if on_unit is not None:
            on_unit(record)
        return True

    start = time.perf_counter()
    if pending:
        make_executor(executor).run(job, pending, deliver, say)
    elapsed = time.perf_counter() - start
    missing = [u.key for u in pending if u.key not in store]
    if missing:
        raise WorkbenchError(f"sweep ended with {len(missing)} unit(s) not recorded, e.g. {missing[0]}")
    result = summarize([store.get(u.key) for u in units], settings)
    result.units_run, result.units_skipped = run, n_keys - len(pending)
    result.search = scores
    result.stats = {**job.stats, "units": run, "elapsed_s": elapsed}
    return result


def _aggregate(recs: list[dict[str, Any]]) -> dict[str, Any]:
    strict = [x for r in recs for x in r["strict"]]
    loose = [x for r in recs for x in r["loose"]]
    ppl = [x for r in recs for x in r["perplexity"] if x is not None]
    deg = [x for r in recs for x in r["degeneration"]]
    return {
        "n": len(strict),
        **rate_cell(strict, "accuracy"),
        **rate_cell(loose, "loose_accuracy"),
        "perplexity": mean_perplexity(ppl),
        "degeneration": sum(deg) / len(deg) if deg else math.nan,
    }


def summarize(unit_records: Sequence[dict[str, Any] | None], settings: SweepSettings) -> SweepResult:
    """Pool unit records into heatmap records and baselines, then select per group (deterministic)."""
    cells: dict[tuple[str, int | None, float | None], list[dict[str, Any]]] = {}
    for rec in unit_records:
        if rec is None:
            continue
        cells.setdefault((rec["instruction_id"], rec["layer"], rec["coeff"]), []).append(rec)
    records, baselines = [], {}
    for (group, layer, coeff), recs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0, kv[0][2] or 0)):
        agg = _aggregate(recs)
        if layer is None:
            baselines[group] = {"instruction_id": group, **agg}
        else:
            records.append({"instruction_id": group, "layer": layer, "coeff": coeff, "mode": recs[0]["mode"], **agg})
    selection, notes = select(records, baselines, settings.max_ppl_ratio, settings.max_perplexity, settings.max_degeneration,
                              settings.max_degeneration_gain, settings.beat_unsteered)
    paper, _ = select(records, baselines, settings.max_ppl_ratio, settings.max_perplexity, None, None, beat_unsteered=False)
    return SweepResult(records=records, baselines=baselines, selection=selection, notes=notes, paper_selection=paper)


def degeneration_limit(unsteered: float, gain: float) -> float:
    """The most repetition a steered cell may show: the unsteered responses' mean degeneration + ``gain``
    (SmolLM2-135M, gain 0.25: 0.02 -> 0.27 at 48 new tokens, 0.19 -> 0.44 at 128)."""
    return unsteered + gain


def rule_settings(rule: str, max_degeneration: float | None = None,
                  max_degeneration_gain: float | None = DEFAULT_MAX_DEGENERATION_GAIN) -> dict[str, Any]:
    """:class:`SweepSettings` fields of a named selection rule: ``workbench`` (the repetition limits given, and
    accuracy above no steering) or ``paper`` (the perplexity rule alone)."""
    if rule == "paper":
        return {"max_degeneration": None, "max_degeneration_gain": None, "beat_unsteered": False}
    if rule != "workbench":
        raise WorkbenchError(f"unknown selection rule {rule!r}; choose workbench or paper")
    return {"max_degeneration": max_degeneration, "max_degeneration_gain": max_degeneration_gain, "beat_unsteered": True}


def _pick(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The most accurate cell; ties: lower perplexity, then the earlier layer, then the smaller strength."""
    return min(cells, key=lambda r: (-r["accuracy"], r["perplexity"], r["layer"], r["coeff"]))


def _cell(r: dict[str, Any]) -> str:
    return f"layer {r['layer']}, strength {r['coeff']:g}"


def select(
    records: Sequence[dict[str, Any]],
    baselines: dict[str, dict[str, Any]],
    max_ppl_ratio: float | None = 2.0,
    max_perplexity: float | None = None,
    max_degeneration: float | None = None,
    max_degeneration_gain: float | None = DEFAULT_MAX_DEGENERATION_GAIN,
    beat_unsteered: bool = True,
) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """Per group, the most accurate (layer, strength) that passes the quality rule and beats no steering.

    Rule: perplexity <= ``max_ppl_ratio`` x the unsteered perplexity and <= ``max_perplexity``; mean
    degeneration <= :func:`degeneration_limit` of the unsteered responses' and <= ``max_degeneration``
    (each when not None); with ``beat_unsteered``, validation accuracy above the unsteered validation
    accuracy (a cell that adds nothing is never reported as a selection). Ties: lower perplexity, then
    earlier layer, then smaller strength. The paper's rule is ``max_degeneration_gain=None, beat_unsteered=False``.

    >>> sel, notes = select(records, baselines)   # records and baselines from summarize()
    """
    selection: dict[str, dict[str, Any] | None] = {}
    notes: list[str] = []
    rule = describe_rule(max_ppl_ratio, max_perplexity, max_degeneration, max_degeneration_gain, beat_unsteered)
    for group in sorted({r["instruction_id"] for r in records}):
        base = baselines.get(group, {})
        base_ppl, base_deg = base.get("perplexity", math.nan), base.get("degeneration", math.nan)
        base_acc = base.get("accuracy", math.nan)
        limit = math.inf
        if max_ppl_ratio is not None and math.isfinite(base_ppl):
            limit = min(limit, max_ppl_ratio * base_ppl)
        if max_perplexity is not None:
            limit = min(limit, max_perplexity)
        deg_limit = math.inf
        if max_degeneration is not None:
            deg_limit = min(deg_limit, max_degeneration)
        if max_degeneration_gain is not None and math.isfinite(base_deg):
            deg_limit = min(deg_limit, degeneration_limit(base_deg, max_degeneration_gain))
        cells = [r for r in records if r["instruction_id"] == group and math.isfinite(r["perplexity"])]
        quality = [r for r in cells if r["perplexity"] <= limit and r.get("degeneration", 0.0) <= deg_limit]
        ok = [r for r in quality if not beat_unsteered or not math.isfinite(base_acc) or r["accuracy"] > base_acc]
        if not ok:
            selection[group] = None
            if not quality:
                why = f"no cell passed the quality rule (perplexity <= {limit:.3g}, degeneration <= {deg_limit:.3g})"
            else:
                best = _pick(quality)
                why = (f"no cell that passed the quality rule beat the unsteered validation accuracy "
                       f"({base_acc:.0%} of {base.get('n', '?')}; best: {_cell(best)} at {best['accuracy']:.0%})")
            notes.append(f"{group}: none selected: {why}")
            continue
        best = _pick(ok)
        unfiltered = _pick(cells)
        selection[group] = {
            "layer": best["layer"], "coeff": best["coeff"], "mode": best["mode"], "accuracy": best["accuracy"],
            "n": best.get("n"), "perplexity": best["perplexity"], "baseline_accuracy": base.get("accuracy"),
            "baseline_n": base.get("n"), "baseline_perplexity": base_ppl, "baseline_degeneration": base_deg,
            "perplexity_limit": limit if math.isfinite(limit) else None,
            "degeneration_limit": deg_limit if math.isfinite(deg_limit) else None, "degeneration": best.get("degeneration"),
            "rule": rule, "excluded_by_rule": [_cell(r) for r in cells if r not in ok],
            "most_accurate_without_rule": {"layer": unfiltered["layer"], "coeff": unfiltered["coeff"],
                                           "accuracy": unfiltered["accuracy"], "degeneration": unfiltered.get("degeneration")},
        }
    return selection, notes


def describe_selection(sel: dict[str, Any] | None) -> str:
    """A selected cell in words with its validation accuracy and n, e.g. ``layer 26, strength 0.5 (validation 7/10, unsteered 0/10)``."""
    if sel is None:
        return "none"
    text = _cell(sel)
    n, base_n = sel.get("n"), sel.get("baseline_n")
    if n:
        text += f" (validation {round(sel['accuracy'] * n)}/{n}"
        base = sel.get("baseline_accuracy")
        if base_n and base is not None and math.isfinite(base):
            text += f", unsteered {round(base * base_n)}/{base_n}"
        text += ")"
    return text


def describe_rule(max_ppl_ratio: float | None, max_perplexity: float | None, max_degeneration: float | None,
                  max_degeneration_gain: float | None = None, beat_unsteered: bool = False) -> str:
    """The selection rule in words, as recorded beside each selection."""
    parts = []
    if max_ppl_ratio is not None:
        parts.append(f"perplexity <= {max_ppl_ratio:g} x unsteered")
    if max_perplexity is not None:
        parts.append(f"perplexity <= {max_perplexity:g}")
    if max_degeneration_gain is not None:
        parts.append(f"degeneration <= unsteered + {max_degeneration_gain:g}")
    if max_degeneration is not None:
        parts.append(f"degeneration <= {max_degeneration:g}")
    if beat_unsteered:
        parts.append("accuracy > unsteered")
    return ", ".join(parts) or "none (most accurate)"


def heatmap_records(result: SweepResult) -> list[dict[str, Any]]:
    """The records with exactly the keys the figures module plots (plus nothing else)."""
    return [{k: r[k] for k in HEATMAP_KEYS} for r in result.records]
