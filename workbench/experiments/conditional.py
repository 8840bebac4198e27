"""``workbench reproduce conditional``: steer only the prompts that carry the instruction, leave the others alone.

For each instruction: the direction and its steering cell (layer, strength) are chosen as in ``reproduce format``; a
gate (:class:`workbench.Condition` on the same direction: condition layer, threshold and side) is chosen on the mixed
validation set (prompts with and without the instruction) by Youden's J (hit rate - false-trigger rate), ties broken
by the wider standardised margin. On the test split, the instructed and the uninstructed prompts are each decoded
unsteered, always steered and conditionally steered (one ``generate`` call in a ``steer(..., condition=...)`` block),
and the table reports accuracy (McNemar p against unsteered and against always steered), the share of responses that
changed from unsteered, the share the gate steered (hit rate on instructed prompts, false-trigger rate on the others),
perplexity and repetition. A row decodes the same tokens whatever batch it sits in, so each conditional response must
equal the always-steered or the unsteered one by its gate decision: the run checks it and says so.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import DatasetError
from ..evaluation.stats import rate_cell
from ..decoding import generate
from ..steering import Condition, steer
from ..steering.condition import choose_gate
from .conditions import pack_size
from .run import Run, attach_p_values
from .targets import SweepTarget, cell_meta, cell_specs, run_targets

COLUMNS = ["instruction_id", "prompts", "steering", "n", "accuracy", "accuracy_p", "vs_always_p", "share_changed",
           "share_gated", "perplexity", "degeneration", "layer", "strength", "mode", "gate"]
GATE_COLUMNS = ["instruction_id", "gate_layer", "compare", "threshold", "youden_j", "share_hit", "share_false_trigger",
                "margin", "n_instructed", "n_uninstructed", "chosen"]
CONDITION_OF = {("instructed", "none"): "instruction", ("instructed", "always"): "instruction_steered",
                ("uninstructed", "none"): "no_instruction", ("uninstructed", "always"): "no_instruction_steered"}


def _targets(run: Run) -> list[tuple[str, str, str, dict[str, Any] | None, str]]:
    """``(name, family, instruction id, kwargs, mode)`` of every instruction the run gates."""
    return run_targets(run.config, run.covers, "conditional")


def exp_conditional(run: Run) -> dict[str, Any]:
    """Unsteered, always steered and conditionally steered responses to instructed and uninstructed test prompts."""
    cfg = run.config
    items, sweep_targets = [], []
    for name, family, iid, kwargs, mode in _targets(run):
        train = run.builtin(family, iid, "train", cfg.n_train or 0, kwargs)
        val = run.builtin(family, iid, "validation", cfg.n_val or 0, kwargs)
        d = run.direction(name, train)
        evals = run.eval_rows(family, iid, kwargs, name=name)
        items.append((name, mode, val, d, evals))
        sweep_targets.append(SweepTarget(name, val, d, mode))
    sweep = run.sweep(sweep_targets)
    specs = {name: cell_specs(d, sweep.selection.get(name), mode) for name, mode, _, d, _ in items}
    run.prefetch_conditions([(evals, specs[name]) for name, _, _, _, evals in items])
    table: list[dict[str, Any]] = []
    gates: list[dict[str, Any]] = []
    seen: dict[str, tuple[list[float], list[bool]]] = {}  # test projections at the gate layer and instructed or not
    for name, mode, val, d, evals in items:
        layers = list(d.layers)
        twins = val.with_twin()
        if not twins:
            raise DatasetError(f"conditional {name}: no validation prompt has an instruction-free twin to choose a gate on")
        proj_in = _projections(run, val.prompts(), d)
        proj_out = _projections(run, twins.prompts_without_instruction(), d)
        per_layer, chosen = choose_gate(name, proj_in, proj_out, layers)
        gates += per_layer
        gate = Condition(d, layer=chosen["gate_layer"], threshold=chosen["threshold"], compare=chosen["compare"])
        sel = sweep.selection.get(name)
        run.say(f"  {name}: gate {gate} (validation J {chosen['youden_j']:.2f}, hit {chosen['share_hit']:.0%}, "
                f"false trigger {chosen['share_false_trigger']:.0%}); steering "
                + ("none selected" if sel is None else f"layer {sel['layer']}, strength {sel['coeff']:g}"))
        meta = {"instruction_id": name, **cell_meta(sel, mode), "gate": _gate_label(chosen)}
        cells = {c["condition"]: c for c in run.conditions_table(evals, specs[name], meta)}
        rows = _rows(cells, meta)
        if specs[name] is not None:
            rows += _conditional_rows(run, evals, specs[name], gate, cells, meta, seen)
        table += rows
    attach_p_values(table, ["instruction_id", "prompts"], key="steering", twins={"always": "none", "conditional": "none"})
    attach_p_values(table, ["instruction_id", "prompts"], key="steering", twins={"conditional": "always"}, column="vs_always_p")
    _figures(run, gates, seen)
    return {"table": table, "columns": COLUMNS, "sweep": sweep, "selection": sweep.selection,
            "extra_tables": {"gates": (gates, GATE_COLUMNS)}}


def _gate_label(g: dict[str, Any]) -> str:
    return f"L{g['gate_layer']} {g['compare']} {g['threshold']:.3g}"


def _projections(run: Run, prompts: list[str], d: Any) -> torch.Tensor:
    """Last-prompt-token projections on ``d``'s unit vector at each of its layers: ``[n, n_layers]`` (what the gate reads,
    from the run's cached unsteered activations)."""
    acts = run._acts(prompts)[:, list(d.layers)]
    return torch.einsum("nld,ld->nl", acts.double(), d.units.double())


def _rows(cells: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The unsteered and always-steered cells as table rows (instructed and uninstructed prompts)."""
    out = []
    for (prompts, steering), cond in CONDITION_OF.items():
        cell = cells.get(cond)
        if cell is None:
            continue
        row = {**cell, "prompts": prompts, "steering": steering}
        base = cells.get(CONDITION_OF[(prompts, "none")])
        texts, base_texts = cell.get("_texts"), None if base is None else base.get("_texts")
        if texts is not None and base_texts is not None:
            row.update(rate_cell([a != b for a, b in zip(texts, base_texts)], "share_changed"))
        row.update(rate_cell([steering == "always"] * cell["n"], "share_gated"))
        if steering == "none":
            row["gate"] = None
        out.append(row)
    return out


def _conditional_rows(run: Run, evals: Any, specs: list, gate: Condition, cells: dict[str, dict[str, Any]],
                      meta: dict[str, Any], seen: dict[str, tuple[list[float], list[bool]]]) -> list[dict[str, Any]]:
    """Decode instructed and uninstructed test prompts in one conditional block and score each set."""
    cfg = run.config
    twins = evals.with_twin()
    sets = [("instructed", evals, evals.prompts())]
    if twins:
        sets.append(("uninstructed", twins, twins.prompts_without_instruction()))
    prompts = [p for _, _, ps in sets for p in ps]
    with steer(run.model, *specs, condition=gate) as block:
        texts = generate(run.model, prompts, max_new_tokens=cfg.max_new_tokens or 48, seed=cfg.seed,
                         batch_size=cfg.max_batch or pack_size(run.model))
    decisions = block.last.steered.tolist()
    seen[meta["instruction_id"]] = (block.last.projections.tolist(), [label == "instructed" for label, _, ps in sets for _ in ps])
    out, pos, mismatches = [], 0, 0
    for label, rows, ps in sets:
        got, gated = texts[pos:pos + len(ps)], decisions[pos:pos + len(ps)]
        pos += len(ps)
        always = cells[CONDITION_OF[(label, "always")]]["_texts"]
        none = cells[CONDITION_OF[(label, "none")]]["_texts"]
        mismatches += sum(t != (a if g else n) for t, a, n, g in zip(got, always, none, gated))
        cell = run.score(rows, ps, got, {**meta, "condition": f"{CONDITION_OF[(label, 'none')]}_conditional"})
        out.append({**cell, "prompts": label, "steering": "conditional",
                    **rate_cell([a != b for a, b in zip(got, none)], "share_changed"), **rate_cell(gated, "share_gated")})
    name = meta["instruction_id"]
    if mismatches:
        run.notes.append(f"{name}: {mismatches} conditional responses differ from the unsteered or always-steered response "
                         "their gate decision picks (expected 0: check the decoding paths)")
    else:
        run.notes.append(f"{name}: every conditional response equals the always-steered or the unsteered one, as its gate "
                         f"decided ({len(prompts)} rows)")
    return out


def _figures(run: Run, gates: list[dict[str, Any]], seen: dict[str, tuple[list[float], list[bool]]]) -> None:
    """The gate's validation J by layer and the test projections at the chosen layer (a failure is a note)."""
    try:
        from ..figures import save_figure
        from ..figures.gates import gate_figure
    except Exception as exc:  # noqa: BLE001  (figures are optional)
        run.notes.append(f"gate figures not written: {exc}")
        return
    for name in dict.fromkeys(g["instruction_id"] for g in gates):
        try:
            projections, instructed = seen.get(name, ([], []))
            save_figure(gate_figure([g for g in gates if g["instruction_id"] == name], projections, instructed),
                        run.out_dir / "figures" / f"gate_{name.replace(':', '_')}.html")
        except Exception as exc:  # noqa: BLE001  (a figure must never sink a finished run)
            run.notes.append(f"gate figure for {name} not written: {exc}")
