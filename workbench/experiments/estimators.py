"""``workbench reproduce estimators``: which estimator of an instruction direction steers best, and does any beat the prompt?

Every method (``workbench.estimators``) gets its direction from the same train pairs (one activation pass), the same
layer x strength selection on validation prompts and the same test prompts, decoded in shared packed batches. The
table has the unsteered conditions once and each method's steered conditions, with McNemar p against no steering,
against the ``mean`` method's same condition, and (without the instruction) against the instruction written in the
prompt. A sample-efficiency curve re-estimates each method from fewer pairs at its selected cell.
"""

from __future__ import annotations

from typing import Any

from ..evaluation.stats import rate_cell
from .run import Run, attach_p_values
from .targets import SweepTarget, cell_meta, cell_specs, run_targets, steering_spec

COLUMNS = ["instruction_id", "method", "condition", "n", "accuracy", "accuracy_p", "vs_mean_p", "vs_prompt_p",
           "loose_accuracy", "perplexity", "degeneration", "layer", "strength", "mode"]
CURVE_COLUMNS = ["instruction_id", "method", "n_pairs", "n", "accuracy", "layer", "strength"]
COSINE_COLUMNS = ["instruction_id", "method", "layer", "cosine_with_mean"]
STEERED = ("no_instruction_steered", "instruction_steered")


def _targets(run: Run) -> list[tuple[str, str, str, dict[str, Any] | None, str]]:
    """``(name, family, instruction id, kwargs, mode)`` of every instruction the run compares estimators on."""
    return run_targets(run.config, run.covers, "estimators")


def exp_estimators(run: Run) -> dict[str, Any]:
    """Each estimator's direction selected and evaluated alike, against the mean and against the prompt."""
    cfg = run.config
    methods = list(cfg.methods or [])
    items, sweep_targets = [], []
    for name, family, iid, kwargs, mode in _targets(run):
        train = run.builtin(family, iid, "train", cfg.n_train or 0, kwargs)
        val = run.builtin(family, iid, "validation", cfg.n_val or 0, kwargs)
        dirs = {m: run.direction(f"{name}@{m}", train, method=m) for m in methods}
        evals = run.eval_rows(family, iid, kwargs, name=name)
        items.append((name, family, iid, kwargs, mode, train, dirs, evals))
        sweep_targets += [SweepTarget(f"{name}@{m}", val, d, mode) for m, d in dirs.items()]
    sweep = run.sweep(sweep_targets)
    specs = {(it[0], m): cell_specs(d, sweep.selection.get(f"{it[0]}@{m}"), it[4]) for it in items for m, d in it[6].items()}
    run.prefetch_conditions([(it[7], None) for it in items] + [(it[7], s, STEERED) for it in items for m in methods
                                                               if (s := specs[(it[0], m)])])
    table: list[dict[str, Any]] = []
    for name, family, iid, kwargs, mode, train, dirs, evals in items:
        run.say(f"  {name}: {len(methods)} estimators on {len(evals)} evaluation prompts")
        table += run.conditions_table(evals, None, {"instruction_id": name, "method": None, **cell_meta(None, mode)})
        for m in methods:
            sel = sweep.selection.get(f"{name}@{m}")
            if sel is None:
                continue
            table += run.conditions_table(evals, specs[(name, m)], {"instruction_id": name, "method": m, **cell_meta(sel, mode)},
                                          STEERED)
    attach_p_values(table, ["instruction_id"])  # each steered cell against the same prompts unsteered
    attach_p_values(table, ["instruction_id", "condition"], key="method", twins={m: "mean" for m in methods if m != "mean"},
                    column="vs_mean_p")
    attach_p_values(table, ["instruction_id"], twins={"no_instruction_steered": "instruction"}, column="vs_prompt_p")
    curve = _sample_efficiency(run, items, sweep)
    cosine = [{"instruction_id": it[0], "method": m, "layer": layer, "cosine_with_mean": float(c)}
              for it in items if "mean" in it[6] for m, d in it[6].items() if m != "mean"
              for layer, c in zip(d.layers, (d.units.double() * it[6]["mean"].units.double()).sum(-1).tolist())]
    _figures(run, items, curve)
    return {"table": table, "columns": COLUMNS, "sweep": sweep, "selection": sweep.selection,
            "extra_tables": {"sample_efficiency": (curve, CURVE_COLUMNS), "method_cosine": (cosine, COSINE_COLUMNS)}}


def _sample_efficiency(run: Run, items: list, sweep: Any) -> list[dict[str, Any]]:
    """Test accuracy without the instruction, steered at each method's selected cell, by direction estimated from the
    first n training pairs (n in ``--sizes``); a method with no selection, or fewer pairs than it needs, has no point."""
    from ..estimators import MIN_PAIRS

    cfg = run.config
    plan = []
    for name, family, iid, kwargs, mode, train, dirs, evals in items:
        rows = evals.with_twin()
        if not rows:
            continue
        for m in dirs:
            sel = sweep.selection.get(f"{name}@{m}")
            for n in cfg.sizes or []:
                if sel is None or n < MIN_PAIRS[m] or n > len(train):
                    continue
                d = dirs[m] if n == len(train) else run.direction(f"{name}@{m}@n{n}", train.head(n), method=m)
                plan.append((name, m, n, sel, rows, [steering_spec(d, sel["layer"], sel["coeff"], mode)]))
    run.memo.generate_many([(p[4].prompts_without_instruction(), p[5]) for p in plan], cfg.max_new_tokens)
    out = []
    for name, m, n, sel, rows, spec in plan:
        texts = run.memo.generate(rows.prompts_without_instruction(), spec, cfg.max_new_tokens)
        cell = run.score(rows, rows.prompts_without_instruction(), texts,
                         {"instruction_id": name, "method": m, "n_pairs": n, "condition": "no_instruction_steered",
                          "experiment_part": "sample_efficiency"})
        out.append({"instruction_id": name, "method": m, "n_pairs": n, "n": cell["n"], **rate_cell(cell["_strict"], "accuracy"),
                    "layer": sel["layer"], "strength": sel["coeff"]})
    return out


def _figures(run: Run, items: list, curve: list[dict[str, Any]]) -> None:
    """The methods' cosine with the mean per layer, and the sample-efficiency curve (a failure is a note, never fatal)."""
    try:
        from ..figures import method_cosine_figure, save_figure
        from ..figures.sweeps import sample_efficiency_figure
    except Exception as exc:  # noqa: BLE001  (figures are optional)
        run.notes.append(f"estimator figures not written: {exc}")
        return
    folder = run.out_dir / "figures"
    for name, _family, _iid, _kwargs, _mode, _train, dirs, _evals in items:
        try:
            if "mean" in dirs and len(dirs) > 1:
                save_figure(method_cosine_figure(dirs), folder / f"method_cosine_{name.replace(':', '_')}.html")
            if any(r["instruction_id"] == name for r in curve):
                save_figure(sample_efficiency_figure([r for r in curve if r["instruction_id"] == name]),
                            folder / f"sample_efficiency_{name.replace(':', '_')}.html")
        except Exception as exc:  # noqa: BLE001  (a figure must never sink a finished run)
            run.notes.append(f"estimator figure for {name} not written: {exc}")
