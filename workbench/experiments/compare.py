"""Two finished ``reproduce`` runs of one experiment side by side, paired by prompt (``workbench compare``).

The runs differ in one setting (for example the selection rule: ``--max-degeneration 0.25`` against
``none``); for every steered cell present in both, the table gives each run's pass count with its
95% interval, its mean repetition (share of repeated 3-grams), how many of its passes are loops
(repetition above ``loop``), and McNemar's exact test between the two on the same prompts.

Example::

    workbench compare results_paper_rule/smollm2-135m-instruct/format results/smollm2-135m-instruct/format
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import WorkbenchError
from ..evaluation.stats import mcnemar_exact, rate_cell
from .results import read_generations

IDENTITY = ("instruction_id", "word", "task", "steering", "target_n", "format")
LOOP = 0.5


def _steered(run_dir: Path) -> dict[tuple, dict[str, dict[str, Any]]]:
    """The steered generations of a run folder, by (identity, condition) and base id."""
    path = Path(run_dir) / "generations.jsonl"
    cells: dict[tuple, dict[str, dict[str, Any]]] = {}
    for g in read_generations(path):
        if "condition" not in g or "base_id" not in g or "strict" not in g:
            raise WorkbenchError(f"{path}: a record lacks condition, base_id or strict (not a reproduce run's generations)")
        if str(g["condition"]).endswith("_steered"):
            cells.setdefault((*(g.get(c) for c in IDENTITY), g["condition"]), {})[str(g["base_id"])] = g
    return cells


def compare_runs(run_a: str | Path, run_b: str | Path, loop: float = LOOP) -> list[dict[str, Any]]:
    """One row per steered cell in both runs: each run's accuracy (with interval), repetition, loops, and McNemar's p."""
    a, b = _steered(Path(run_a)), _steered(Path(run_b))
    rows = []
    for key in sorted(set(a) & set(b), key=str):
        ids = [i for i in a[key] if i in b[key]]
        if not ids:
            continue
        sa = [bool(a[key][i]["strict"]) for i in ids]
        sb = [bool(b[key][i]["strict"]) for i in ids]
        label = " / ".join(str(k) for k in key if k is not None)
        row: dict[str, Any] = {"cell": label, "n": len(ids)}
        for name, run, passes in (("a", a[key], sa), ("b", b[key], sb)):
            reps = [float(run[i].get("degeneration") or 0.0) for i in ids]
            row.update({f"{name}_{k}": v for k, v in rate_cell(passes, "acc").items()})
            row[f"{name}_repetition"] = sum(reps) / len(reps)
            row[f"{name}_loops"] = sum(1 for p, r in zip(passes, reps) if p and r > loop)
            row[f"{name}_layer"], row[f"{name}_strength"] = run[ids[0]].get("layer"), run[ids[0]].get("strength")
        row["p"] = mcnemar_exact(sa, sb).p_value
        rows.append(row)
    if not rows:
        raise WorkbenchError(f"{run_a} and {run_b} share no steered cell on the same prompts")
    return rows


COLUMNS: Sequence[str] = ("cell", "n", "a_layer", "a_strength", "a_acc", "a_repetition", "a_loops",
                          "b_layer", "b_strength", "b_acc", "b_repetition", "b_loops", "p")


def render(rows: Sequence[dict[str, Any]], run_a: str, run_b: str) -> str:
    """The comparison as Markdown, with what a and b are."""
    from .results import to_markdown

    table = to_markdown([{**r, "p_p": r["p"]} for r in rows], [*COLUMNS[:-1], "p_p"],
                        headers={"p_p": "McNemar p (a vs b)", "a_loops": f"a: passes with repetition > {LOOP:g}",
                                 "b_loops": f"b: passes with repetition > {LOOP:g}"})
    return (f"a: `{run_a}`\n\nb: `{run_b}`\n\n{table}\nacc: strict accuracy with its 95% Wilson interval; repetition: mean "
            "share of repeated 3-grams; p: McNemar's exact test between a and b on the same prompts (n.s.: p >= 0.05).\n")
