"""Result tables as CSV and Markdown (written atomically), and the raw-generation JSONL."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import DatasetError
from ..io import read_jsonl, write_text_atomic
from .store import _clean

RATE_COLUMNS = {"accuracy", "loose_accuracy", "strict", "loose", "baseline_accuracy"}
P_SUFFIX = "_p"  # a column ``<rate>_p`` holds McNemar's p-value of that rate against its unsteered twin
STATS_NOTE = ("Rates: share of prompts, with the 95% Wilson score interval in parentheses and n the number of prompts. "
              "p: McNemar's exact test against the same prompts without steering; n.s. marks a difference that is not "
              "significant at the 5% level.")


def _is_rate(column: str) -> bool:
    return column in RATE_COLUMNS or column.endswith("_acc") or column.startswith("share_") or column.endswith("_accuracy")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(column: str, value: Any, row: dict[str, Any] | None = None) -> str:
    """A Markdown cell: rates as percentages (with their interval when the row has one), p-values marked
    n.s. when >= 0.05, floats to 3 significant digits, None/NaN as a dash."""
    if _missing(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column.endswith(P_SUFFIX):
            return f"{value:.2g}" + (" n.s." if value >= 0.05 else "")
        if _is_rate(column):
            row = row or {}
            lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
            if _missing(lo) or _missing(hi):
                return f"{100 * value:.0f}%"
            return f"{100 * value:.0f}% ({100 * lo:.0f}–{100 * hi:.0f})"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def csv_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """``columns`` with each rate's interval bounds (``<rate>_lo``, ``<rate>_hi``) after it where rows carry them."""
    out: list[str] = []
    for c in columns:
        out.append(c)
        if _is_rate(c) and any(f"{c}_lo" in r for r in rows):
            out += [f"{c}_lo", f"{c}_hi"]
    return out


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header (rates followed by their interval bounds); missing values and NaN are empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = csv_columns(rows, columns)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if _clean(row.get(c)) is None else _clean(row.get(c)) for c in columns])
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str], headers: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table; rates show their 95% interval when the row carries ``<rate>_lo/_hi``."""
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(c, row.get(c), row) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(
    path_stem: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "", note: str = ""
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (with an optional title and note) atomically."""
    stem = Path(path_stem)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text_atomic(csv_path, to_csv(rows, columns))
    if any(f"{c}_lo" in r for r in rows for c in columns) and STATS_NOTE not in note:
        note = f"{note} {STATS_NOTE}".strip()
    md = (f"## {title}\n\n" if title else "") + to_markdown(rows, columns) + (f"\n{note}\n" if note else "")
    write_text_atomic(md_path, md)
    return csv_path, md_path


def write_jsonl(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write records as JSON lines atomically (NaN becomes null)."""
    text = "".join(json.dumps(_clean(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    write_text_atomic(path, text)
    return Path(path)


def read_generations(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``generations.jsonl`` file; a missing file or bad line is a ``DatasetError`` naming it."""
    path = Path(path)
    records = []
    for i, rec in read_jsonl(path).records:
        if not isinstance(rec.get("response"), str):
            raise DatasetError(f"{path}:{i}: a generations record needs a string 'response'")
        records.append(rec)
    if not records:
        raise DatasetError(f"{path}: no generations")
    return records
