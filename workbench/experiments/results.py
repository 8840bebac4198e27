"""Result tables as CSV and Markdown (written atomically), and the raw-generation JSONL."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..io import write_text_atomic
from .store import _clean

RATE_COLUMNS = {"accuracy", "loose_accuracy", "strict", "loose", "baseline_accuracy"}


def _fmt(column: str, value: Any) -> str:
    """A Markdown cell: rates as percentages, floats to 3 significant digits, None/NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column in RATE_COLUMNS or column.endswith("_acc") or column.startswith("share_"):
            return f"{100 * value:.0f}%"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header; missing values are empty, NaN is empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if _clean(row.get(c)) is None else _clean(row.get(c)) for c in columns])
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str], headers: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table."""
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(
    path_stem: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "", note: str = ""
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (with an optional title and note) atomically."""
    stem = Path(path_stem)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text_atomic(csv_path, to_csv(rows, columns))
    md = (f"## {title}\n\n" if title else "") + to_markdown(rows, columns) + (f"\n{note}\n" if note else "")
    write_text_atomic(md_path, md)
    return csv_path, md_path


def write_jsonl(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write records as JSON lines atomically (NaN becomes null)."""
    text = "".join(json.dumps(_clean(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    write_text_atomic(path, text)
    return Path(path)
