"""Writing figures: self-contained interactive HTML (works offline), written atomically."""

from __future__ import annotations

from pathlib import Path

from ..io import write_text_atomic


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a standalone HTML file (plotly.js embedded, so it opens without network)."""
    path = Path(path)
    if path.suffix != ".html":
        path = path.with_suffix(".html")
    write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
