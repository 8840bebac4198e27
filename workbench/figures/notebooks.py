"""Execute the notebooks and keep their outputs with every plotly figure as a small static PNG.

A notebook committed this way reads on a forge without running it: text and HTML outputs stay,
each plotly figure (``application/vnd.plotly.v1+json`` and its ``text/html`` twin) becomes an
``image/png`` drawn by :func:`workbench.figures.export.save_images` (kaleido or headless Chromium),
and volatile metadata (execution timings, widget state) is dropped so a re-render diffs cleanly.

Usage: ``python -m workbench.figures.notebooks [NOTEBOOK ...]`` (default: ``notebooks/*.ipynb``),
``workbench figures --notebooks`` or ``make notebooks``.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

from ..errors import WorkbenchError
from .export import SETUP_HINT, check_image_export, save_images

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PNG_MIME = "image/png"
# Figures without their own size are drawn at this size (CSS pixels); with a 256-colour palette
# (compact_png) a PNG is ~15-75 kB, a quarter of the browser's RGBA file.
DEFAULT_WIDTH, DEFAULT_HEIGHT = 800, 500
SCALE = 1.0
PALETTE_COLOURS = 256
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent.parent / "notebooks"


def require_exporter() -> str:
    """The image exporter to use (``"kaleido"`` or ``"chromium screenshot"``); a one-line error naming what to install if none."""
    try:
        return check_image_export()
    except WorkbenchError:
        raise WorkbenchError(f"cannot render notebook figures as PNG: no image exporter here; {SETUP_HINT}") from None


def execute_notebook(nb: Any, cwd: str | Path, timeout: int = 900) -> Any:
    """Run every cell of ``nb`` in a fresh python3 kernel started in ``cwd``; e.g. ``execute_notebook(nb, "notebooks")``."""
    from nbclient import NotebookClient

    # plotly_mimetype: figures come out as their JSON (no 4.7 MB plotly.js loader), which replace_plotly_outputs turns into PNGs
    env = {**os.environ, "PLOTLY_RENDERER": "plotly_mimetype"}
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False, store_widget_state=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)
    return nb


def _figure(spec: dict) -> Any:
    """A plotly figure from a ``application/vnd.plotly.v1+json`` payload, sized for a modest PNG."""
    import plotly.graph_objects as go

    fig = go.Figure(data=spec.get("data", []), layout=spec.get("layout", {}))
    fig.update_layout(width=fig.layout.width or DEFAULT_WIDTH, height=fig.layout.height or DEFAULT_HEIGHT)
    return fig


def _is_plotly_loader(output: Any) -> bool:
    """Whether ``output`` is plotly's notebook-mode loader (a script tag defining plotly.js, no figure)."""
    data = output.get("data", {})
    html = data.get("text/html", "")
    html = "".join(html) if isinstance(html, list) else html
    return set(data) <= {"text/html", "text/plain"} and "PlotlyConfig" in html and "plotly-graph-div" not in html


def strip_volatile(nb: Any) -> Any:
    """Drop execution timings, widget state and views (their text fallback stays) and plotly.js loaders from ``nb``."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") in ("display_data", "execute_result"):
                if _is_plotly_loader(out):
                    continue
                out.data.pop(WIDGET_MIME, None)
                out.metadata.pop(WIDGET_MIME, None)
                if not out.data:
                    continue
            kept.append(out)
        cell.outputs = kept
    return nb


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _nearest(cols: Any, palette: Any) -> tuple[Any, Any]:
    """Index of and squared distance to each colour's nearest palette colour, in blocks to bound memory."""
    import numpy as np

    index, dist = [], []
    for block in np.array_split(cols, -(-len(cols) // 2048)):
        d = ((block[:, None, :] - palette[None]) ** 2).sum(-1)
        index.append(d.argmin(1))
        dist.append(d.min(1))
    return np.concatenate(index), np.concatenate(dist)


def compact_png(path: str | Path, colours: int = PALETTE_COLOURS) -> bytes:
    """Bytes of the opaque PNG at ``path`` re-encoded with a palette of its ``colours`` most frequent colours.

    Other colours (anti-aliased edges) map to the nearest palette colour. An image with transparency,
    or one the palette would not shrink, comes back unchanged. Usage: ``compact_png("fig.png")``.
    """
    import numpy as np

    from .png import read_png

    original = Path(path).read_bytes()
    pixels = read_png(path)
    if pixels.shape[2] not in (3, 4) or (pixels.shape[2] == 4 and (pixels[..., 3] != 255).any()):
        return original
    height, width = pixels.shape[:2]
    rgb = pixels[..., :3].reshape(-1, 3).astype(np.int64)
    uniq, inverse, counts = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2], return_inverse=True, return_counts=True)
    cols = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    if len(uniq) <= colours:
        palette, mapping = cols, np.arange(len(uniq))
    else:
        # the most frequent colours, then farthest-point picks so gradients (colour bars) keep their steps
        chosen = list(np.argsort(-counts, kind="stable")[: colours * 5 // 8])
        nearest = _nearest(cols, cols[chosen])[1]
        while len(chosen) < colours:
            pick = int(nearest.argmax())
            chosen.append(pick)
            nearest = np.minimum(nearest, ((cols - cols[pick]) ** 2).sum(-1))
        palette = cols[chosen]
        mapping = _nearest(cols, palette)[0]
    index = mapping[inverse.reshape(-1)].astype(np.uint8).reshape(height, width)
    raw = b"".join(b"\x00" + row.tobytes() for row in index)  # filter 0 (none) suits palette images
    out = (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _png_chunk(b"PLTE", palette.astype(np.uint8).tobytes()) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )
    return out if len(out) < len(original) else original


def replace_plotly_outputs(nb: Any, scale: float = SCALE, compact: bool = True) -> int:
    """Replace each plotly output of ``nb`` by a PNG of the figure (one browser session; palette PNGs unless
    ``compact=False``); returns how many. Usage: ``replace_plotly_outputs(nbformat.read(path, as_version=4))``."""
    found = [
        (out, _figure(out.data[PLOTLY_MIME]))
        for cell in nb.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []) if PLOTLY_MIME in out.get("data", {})
    ]
    if not found:
        return 0
    require_exporter()
    with tempfile.TemporaryDirectory(prefix="wb-nb-") as tmp:
        paths = save_images([(fig, Path(tmp) / f"fig{i:03d}.png") for i, (_, fig) in enumerate(found)], scale=scale)
        pngs = [base64.b64encode(compact_png(p) if compact else p.read_bytes()).decode("ascii") for p in paths]
    for (out, fig), png in zip(found, pngs):
        title = re.sub(r"<[^>]+>", "", re.sub(r"<br\s*/?>", " - ", fig.layout.title.text or "")) or "plotly figure"
        out.data = {PNG_MIME: png, "text/plain": f"<Figure: {title}>"}
        out.metadata = {PNG_MIME: {"width": int(fig.layout.width), "height": int(fig.layout.height)}}
    return len(found)


def render_notebook(path: str | Path, out_path: str | Path | None = None, timeout: int = 900, scale: float = SCALE) -> Path:
    """Execute ``path`` and write it with outputs and PNG figures to ``out_path`` (default: in place), atomically."""
    import nbformat

    from ..io import write_text_atomic

    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path}: no such notebook")
    require_exporter()  # fail before minutes of execution, not after
    nb = nbformat.read(path, as_version=4)
    try:
        execute_notebook(nb, path.resolve().parent, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - nbclient's CellExecutionError carries the whole traceback
        first = str(exc).strip().splitlines()
        raise WorkbenchError(f"{path}: a cell failed: {first[-1] if first else type(exc).__name__}") from None
    replace_plotly_outputs(nb, scale=scale)
    strip_volatile(nb)
    nbformat.validate(nb)
    target = Path(out_path) if out_path is not None else path
    write_text_atomic(target, nbformat.writes(nb) + "\n")
    return target


def render_notebooks(paths: Sequence[str | Path] | None = None, timeout: int = 900, scale: float = SCALE) -> list[Path]:
    """Render each notebook in place (default: every ``notebooks/*.ipynb``), printing its time and size."""
    paths = [Path(p) for p in paths] if paths else sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not paths:
        raise WorkbenchError(f"no notebooks found in {NOTEBOOK_DIR}")
    require_exporter()
    written = []
    for path in paths:
        start = time.perf_counter()
        written.append(render_notebook(path, timeout=timeout, scale=scale))
        print(f"{path}: {time.perf_counter() - start:.0f} s, {path.stat().st_size:,} bytes", flush=True)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m workbench.figures.notebooks [NOTEBOOK ...] [--timeout S] [--scale X]``."""
    parser = argparse.ArgumentParser(prog="python -m workbench.figures.notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to render in place (default: notebooks/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one cell may run (default 900)")
    parser.add_argument("--scale", type=float, default=SCALE, help=f"PNG pixel scale (default {SCALE})")
    args = parser.parse_args(argv)
    try:
        render_notebooks(args.notebooks, timeout=args.timeout, scale=args.scale)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
