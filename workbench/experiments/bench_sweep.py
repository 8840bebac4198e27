"""``workbench bench-sweep``: the layer x strength sweep one unit at a time, packed, and with the fast search.

All variants run in one process on the same model, direction, validation prompts and grid, one after the
other, so their ratios are meaningful on a noisy machine. Each gets its own generation memo (nothing is
shared between variants) and its own JSONL file. Besides units/s it reports whether the packed sweep made the
same selection and what share of its responses equal the one-at-a-time sweep's, token for token; and for the
fast search which layers it decoded and whether it selected the same (layer, strength).

Example: ``workbench bench-sweep --layers 14,18,22,26 --n-val 40 --max-new-tokens 128``. ``--twin NAME`` runs it on a
random-weight model at a real shape and ``--dtype`` in another precision (:mod:`workbench.bench_options`): the times then
say how fast the sweep runs there, the selection and accuracies mean nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data import load_pairs
from ..directions import compute_direction
from ..generation import generate
from ..io import write_json_atomic
from ..models import load_model, model_info
from .config import cpu_threads
from .store import UnitStore
from .sweep import SweepSettings, SweepTarget, default_layers, run_sweep

VARIANTS = ("one unit at a time", "packed", "packed, fast search")


def run_sweep_bench(
    model_name: str = "smollm2-135m-instruct",
    instruction: str = "detectable_format:title",
    layers: Sequence[int] | None = None,
    strengths: Sequence[float] = (1.0,),
    n_train: int = 40,
    n_val: int = 40,
    max_new_tokens: int = 128,
    unit_size: int = 20,
    max_batch: int | None = None,
    search_keep: int = 3,
    device: str | None = None,
    threads: int | None = None,
    out: Path | None = Path("docs/bench-sweep.json"),
    say: Callable[[str], None] = print,
    dtype: str | None = None,
    twin: str | None = None,
    twin_layers: int | None = None,
) -> dict[str, Any]:
    """Time the same sweep three ways and compare what they record; returns (and writes) the report.

    ``dtype``: float32 (default), bfloat16 or float16; ``twin``: a random-weight model at a real shape instead of
    ``model_name`` (``twin_layers``: fewer layers).
    """
    from ..bench_options import check_bench_options, resolve_bench_model

    check_bench_options(twin, twin_layers, dtype, device)
    model_name, twin_report = resolve_bench_model(model_name, twin, twin_layers, dtype, device, say)
    model = load_model(model_name, device=device, dtype=dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(threads, str(model.cfg.device)))
    try:
        report = _bench(model, instruction, layers, strengths, n_train, n_val, max_new_tokens, unit_size, max_batch,
                        search_keep, say)
    finally:
        torch.set_num_threads(before)
    report.update({"dtype": str(model.cfg.dtype).removeprefix("torch."), "weights": "random" if twin else "trained",
                   "twin": twin_report})
    if twin:
        report["model"] = f"twin:{twin}"
    say("\n" + markdown(report))
    if out is not None:
        write_json_atomic(out, report)
        say(f"\nwrote {out}")
    return report


def _bench(model, instruction, layers, strengths, n_train, n_val, max_new_tokens, unit_size, max_batch, search_keep,
           say) -> dict[str, Any]:
    train = load_pairs("format", instruction, "train").head(n_train)
    val = load_pairs("format", instruction, "validation").head(n_val)
    direction = compute_direction(model, train, name=instruction, progress=False)
    target = SweepTarget(instruction, val, direction, "project")
    grid = list(layers) if layers else default_layers(int(model.cfg.n_layers))
    base = SweepSettings(layers=grid, strengths=list(strengths), max_new_tokens=max_new_tokens, batch_size=unit_size,
                         unit_size=unit_size, max_batch=max_batch)
    settings = {VARIANTS[0]: replace(base, pack=False), VARIANTS[1]: base,
                VARIANTS[2]: replace(base, search="fast", search_keep=search_keep)}
    say(f"sweep bench: {model_info(model).name}, {instruction}, layers {grid}, strengths {list(strengths)}, "
        f"{len(val)} validation prompts, {max_new_tokens} new tokens, {torch.get_num_threads()} thread(s)")
    generate(model, val.prompts()[:2], max_new_tokens=2)  # build the plain model and warm up outside the timings
    rows, records = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, s in settings.items():
            path = Path(tmp) / f"{VARIANTS.index(name)}.jsonl"
            load_start = _load()
            start = time.perf_counter()
            memo = s.new_memo(model)
            result = run_sweep(model, [target], s, path, memo=memo, say=lambda line: None)
            seconds = time.perf_counter() - start
            records[name] = UnitStore(path).load()
            sel = result.selection.get(instruction)
            rows.append({"variant": name, "units": result.units_run, "seconds": round(seconds, 1),
                         "units_per_s": round(result.units_run / seconds, 4), "max_batch": result.stats.get("max_batch"),
                         "selection": None if sel is None else {"layer": sel["layer"], "coeff": sel["coeff"],
                                                                "accuracy": sel["accuracy"]},
                         "decoded_layers": sorted({r["layer"] for r in result.records}),
                         "decode_s": round(memo.seconds["decode"], 2), "perplexity_s": round(memo.seconds["perplexity"], 2),
                         "load_average": [load_start, _load()]})
            say(f"  {name}: {result.units_run} units in {seconds:.1f} s ({rows[-1]['units_per_s']:.3g} units/s); "
                f"selected {rows[-1]['selection']}")
    one, packed = records[VARIANTS[0]], records[VARIANTS[1]]
    same = total = 0
    for key, rec in one.items():
        for a, b in zip(rec["responses"], packed[key]["responses"]):
            same += a == b
            total += 1
    ref = rows[0]
    for row in rows:
        row["units_per_s_ratio"] = round(row["units_per_s"] / ref["units_per_s"], 2)
        row["wall_ratio"] = round(ref["seconds"] / row["seconds"], 2)
        row["same_selection"] = _cell(row["selection"]) == _cell(ref["selection"])
    report = {"model": model_info(model).name, "instruction": instruction, "layers": grid, "strengths": list(strengths),
              "n_val": len(val), "max_new_tokens": max_new_tokens, "unit_size": unit_size, "threads": torch.get_num_threads(),
              "device": str(model.cfg.device), "torch": torch.__version__, "rows": rows,
              "identical_responses": {"same": same, "total": total}}
    return report


def _load() -> float | None:
    """The 1-minute load average (other work on the machine slows a variant down), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cell(sel: dict[str, Any] | None) -> tuple | None:
    return None if sel is None else (sel["layer"], sel["coeff"])


def markdown(report: dict[str, Any]) -> str:
    """The sweep bench as a Markdown table."""
    same = report["identical_responses"]
    lines = [
        f"Model `{report['model']}` on {report['device']} ({report['threads']} torch thread(s), torch {report['torch']}): "
        f"`{report['instruction']}`, project mode, layers {report['layers']} x strengths {report['strengths']}, "
        f"{report['n_val']} validation prompts, {report['max_new_tokens']} new tokens, units of {report['unit_size']} prompts.",
        "",
        "| variant | units decoded | seconds | of which decoding, perplexity | units/s | units/s vs one at a time | wall time vs one at a time | selection (layer, strength, validation accuracy) | same selection | load average (start, end) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        sel = r["selection"]
        cell = "none" if sel is None else f"L{sel['layer']}, {sel['coeff']:g}, {sel['accuracy']:.0%}"
        batch = f" (max batch {r['max_batch']})" if r["max_batch"] else ""
        split = f"{r['decode_s']:.0f}, {r['perplexity_s']:.0f}" if "decode_s" in r else "-"
        lines.append(f"| {r['variant']}{batch} | {r['units']} | "
                     f"{r['seconds']:.0f} | {split} | {r['units_per_s']:.3g} | {r['units_per_s_ratio']:.2f}x | {r['wall_ratio']:.2f}x | "
                     f"{cell} | {'yes' if r['same_selection'] else 'no'} | {r['load_average'][0]}, {r['load_average'][1]} |")
    lines += ["", f"Packed responses identical to one-at-a-time, token for token: {same['same']}/{same['total']}."]
    if report.get("twin"):
        twin = report["twin"]
        lines += ["", f"dtype {report.get('dtype', 'float32')}. **Random weights**: `{twin['name']}`, a twin at the shape of "
                  f"{twin['shape_of']} ({twin['config']['num_hidden_layers']} layers): the times measure speed; the selections "
                  "and accuracies mean nothing. Decoding stops at the end-of-text token as in a real sweep (a random model "
                  "rarely emits it, so rows run close to full length)."]
    elif report.get("dtype"):
        lines += ["", f"dtype {report['dtype']}."]
    return "\n".join(lines)
