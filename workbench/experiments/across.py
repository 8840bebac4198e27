"""``workbench reproduce EXPERIMENT --model all``: one experiment on several models in turn, then a comparison.

Each model runs exactly as ``--model NAME`` would (``<out>/<model>/<experiment>/``); afterwards the
models' ``results.csv`` tables are read back and joined into ``<out>/all/<experiment>/comparison.csv``
(long: one row per model and table row) and ``comparison.md`` (wide: one row per instruction /
condition, accuracy and perplexity per model), beside ``models.csv/.md`` (shape, selection, wall time).
Every number in them is read from a finished run's files; a model that did not run has no cells.
"""

from __future__ import annotations

import csv
import gc
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import WorkbenchError
from ..io import write_text_atomic
from ..models.registry import BUILTIN_MODELS, REAL_MODELS
from .config import ReproduceConfig
from .results import to_markdown, write_table

ALL = "all"
# Columns of a results table that are measurements or settings, not what identifies a row.
VALUE_COLUMNS = {"n", "accuracy", "loose_accuracy", "perplexity", "degeneration", "layer", "strength", "mode", "scale",
                 "mean_sentences", "format_acc", "length_acc", "both_acc", "format_layer", "length_layer", "source",
                 "n_checks", "instruction_accuracy", "instruction_loose_accuracy"}


def _is_value(column: str) -> bool:
    """Measurements (with their interval bounds and p-values) and settings, as opposed to a row's identity."""
    return column in VALUE_COLUMNS or column.endswith(("_lo", "_hi", "_p"))


def installed_models(models: Sequence[str], say: Callable[[str], None]) -> tuple[list[str], dict[str, str]]:
    """Split ``models`` into the runnable ones and ``{name: one-line reason}`` for built-ins not installed."""
    runnable, skipped = [], {}
    for name in models:
        spec = BUILTIN_MODELS.get(name)
        if spec is not None and not spec.is_installed():
            skipped[name] = spec.not_installed_message()
            say(f"skipping {name}: {skipped[name]}")
        else:
            runnable.append(name)
    return runnable, skipped


def _shape(name: str) -> tuple[str, str] | None:
    """(layers, d_model) of a built-in model from its cached config or GGUF header, if known without loading it."""
    from ..models.inventory import describe_model

    spec = BUILTIN_MODELS.get(name)
    if spec is None:
        return None
    row = describe_model(spec)
    return None if "-" in (row.layers, row.d_model) else (row.layers, row.d_model)


def check_transfer_shapes(source: str, targets: Sequence[str]) -> None:
    """Fail before any run when a target's layer count or d_model differs from the source's (where both are known)."""
    src = _shape(source)
    if src is None:
        return
    bad = [f"{t} ({s[0]} layers, d_model {s[1]})" for t in targets if (s := _shape(t)) is not None and s != src]
    if bad:
        raise WorkbenchError(
            f"transfer --model all --source-model {source} --map identity ({src[0]} layers, d_model {src[1]}): the identity "
            f"map only fits models of the same shape, and these differ: {'; '.join(bad)}. Leave out --map identity "
            "(affine maps are fitted) or pass --model with matching models."
        )


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def read_results(run_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """A finished run's ``results.csv``: its columns and rows (numbers parsed)."""
    with open(run_dir / "results.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [{k: _number(v) for k, v in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


def comparison_tables(experiment: str, runs: dict[str, Path], skipped: dict[str, str] | None = None,
                      out_dir: Path | None = None) -> dict[str, Any]:
    """Join the finished runs' tables; write them under ``out_dir`` when given. Returns the rows and columns."""
    models = list(runs)
    long_rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    key_cols: list[str] = []
    metric = "accuracy"
    for model, run_dir in runs.items():
        columns, rows = read_results(run_dir)
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        for c in columns:
            if not _is_value(c) and c not in key_cols:
                key_cols.append(c)
        if "accuracy" not in columns and "both_acc" in columns:
            metric = "both_acc"
        shape = config.get("model", {})
        for r in rows:
            if r.get("rule") == "both":  # the workbench rule's row, which the paper's rule also chose: one row per rule
                long_rows.append({"model": model, "n_layers": shape.get("n_layers"), "d_model": shape.get("d_model"),
                                  **r, "rule": "paper"})
                r = {**r, "rule": "workbench"}
            long_rows.append({"model": model, "n_layers": shape.get("n_layers"), "d_model": shape.get("d_model"), **r})
        sel = config.get("selection") or {}
        summary.append({
            "model": model, "n_layers": shape.get("n_layers"), "d_model": shape.get("d_model"),
            "prompt_style": shape.get("prompt_style"),
            "selection": "; ".join(f"{k}: layer {v['layer']}, strength {v['coeff']:g}" if v else f"{k}: none"
                                   for k, v in sel.items()) or "–",
            "minutes": None if config.get("elapsed_s") is None else round(config["elapsed_s"] / 60, 1),
        })
    for name, why in (skipped or {}).items():
        summary.append({"model": name, "selection": f"not run: {why}"})
    # wide: one row per key, accuracy and perplexity per model
    wide: dict[tuple, dict[str, Any]] = {}
    for r in long_rows:
        key = tuple(r.get(c) for c in key_cols)
        row = wide.setdefault(key, dict(zip(key_cols, key)))
        i = models.index(r["model"])
        row[f"m{i}_acc"] = r.get(metric)
        row[f"m{i}_acc_lo"], row[f"m{i}_acc_hi"] = r.get(f"{metric}_lo"), r.get(f"{metric}_hi")
        row[f"m{i}_ppl"] = r.get("perplexity")
    wide_cols = [*key_cols, *(c for i in range(len(models)) for c in (f"m{i}_acc", f"m{i}_ppl"))]
    headers = {f"m{i}_acc": f"{m} accuracy" for i, m in enumerate(models)}
    headers.update({f"m{i}_ppl": f"{m} perplexity" for i, m in enumerate(models)})
    long_cols = ["model", "n_layers", "d_model", *key_cols,
                 *dict.fromkeys(c for r in long_rows for c in r if c not in key_cols and c not in ("model", "n_layers", "d_model"))]
    result = {"long": (long_rows, long_cols), "wide": (list(wide.values()), wide_cols, headers), "models": summary,
              "metric": metric}
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_table(out_dir / "comparison", long_rows, long_cols)  # the CSV (and a long Markdown table)
        write_table(out_dir / "models", summary, ["model", "n_layers", "d_model", "prompt_style", "selection", "minutes"])
        what = "IFEval strict accuracy" if metric == "accuracy" else "strict accuracy on both instructions"
        md = (f"## {experiment}: models compared\n\n"
              + to_markdown(list(wide.values()), wide_cols, headers)
              + f"\n{what} on each model's evaluation prompts, and the perplexity of its responses under the unsteered "
                "model itself (so perplexities compare conditions within a model, not models). Steered conditions use each "
                "model's own selected layer and strength (below). Per-model tables: `<out>/<model>/"
              + f"{experiment}/results.md`.\n\n### models\n\n"
              + to_markdown(summary, ["model", "n_layers", "d_model", "prompt_style", "selection", "minutes"])
              + "\n`minutes`: each model's wall time as measured by its run (config.json `elapsed_s`).\n")
        write_text_atomic(out_dir / "comparison.md", md)
    return result


def run_across_models(config: ReproduceConfig, models: Sequence[str] | None = None,
                      say: Callable[[str], None] = print) -> Path:
    """Run ``config.experiment`` on each of ``models`` (default: the built-in real models) in turn; write the
    comparison; return its folder. Built-in models that are not installed are named up front, one line each, and skipped.
    """
    from .reproduce import run_reproduce

    models = REAL_MODELS if models is None else models
    if not models:
        raise WorkbenchError("--model all: no models to run")
    runnable, skipped = installed_models(models, say)
    if not runnable:
        raise WorkbenchError("--model all: none of the models is installed (" + "; ".join(skipped.values()) + ")")
    if config.experiment == "transfer" and config.source_model and config.map == "identity":  # other maps fit any shapes
        check_transfer_shapes(config.source_model, runnable)
    say(f"{config.experiment} on {len(runnable)} model(s) in turn: {', '.join(runnable)}")
    start = time.time()
    runs: dict[str, Path] = {}
    for i, name in enumerate(runnable, 1):
        say(f"[{i}/{len(runnable)}] {name}")
        runs[name] = run_reproduce(replace(config, model=name), say=say)
        gc.collect()  # the model of the finished run goes before the next one loads
    out_dir = Path(config.out) / ALL / config.experiment
    comparison_tables(config.experiment, runs, skipped, out_dir)
    if config.publish:
        path = Path(config.publish) / ALL / f"{config.experiment}.md"
        from .reproduce import command_line

        cmd = command_line(replace(config, model="all"))  # every flag the run was given, as on a one-model page
        head = (f"<!-- written by `{cmd} --publish ...`; do not edit by hand -->\n\n"
                f"Command: `{cmd}`. Wall time: {(time.time() - start) / 60:.1f} min for the {len(runs)} model(s) in turn "
                f"(each model's own time is in the models table; per-model pages: `<model>/{config.experiment}.md`).\n\n")
        write_text_atomic(path, head + (out_dir / "comparison.md").read_text(encoding="utf-8"))
        write_text_atomic(path.with_suffix(".csv"), (out_dir / "comparison.csv").read_text(encoding="utf-8"))
    say(f"Comparison of {len(runs)} model(s): {out_dir}/comparison.md")
    return out_dir
