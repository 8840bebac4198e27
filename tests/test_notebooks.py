"""Every notebook in notebooks/ runs top to bottom without error, and is committed executed with PNG figures."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from workbench.errors import WorkbenchError
from workbench.figures import notebooks as nbmod

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# A cell with an unindented call of a figure function draws a figure; one anywhere means the notebook draws.
DRAWS_HERE = re.compile(r"^\S.*\w_figure\(", re.M)
DRAWS = re.compile(r"\w_figure\(|\.show\(\)")


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_with_outputs(path: Path):
    """Committed executed in one run (`make notebooks`): counts 1..n, no errors, figures as PNG, no plotly JSON."""
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size:,} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "re-render: make notebooks"
    for i, cell in enumerate(code, 1):
        assert "execution" not in cell.metadata, f"cell {i} keeps execution timings"
        outputs = cell.get("outputs", [])
        assert not [o for o in outputs if o.output_type == "error"], f"cell {i} has an error output"
        mimes = {m for o in outputs for m in o.get("data", {})}
        assert nbmod.PLOTLY_MIME not in mimes and nbmod.WIDGET_MIME not in mimes, f"cell {i}: {sorted(mimes)}"
        html = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
        assert "plotly-graph-div" not in html and "PlotlyConfig" not in html, f"cell {i} keeps plotly HTML"
        pngs = [o.data[nbmod.PNG_MIME] for o in outputs if nbmod.PNG_MIME in o.get("data", {})]
        assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
        assert pngs or not DRAWS_HERE.search(cell.source), f"cell {i} draws a figure but has no image/png output"
    pngs = [o for c in code for o in c.get("outputs", []) if nbmod.PNG_MIME in o.get("data", {})]
    assert pngs or not any(DRAWS.search(c.source) for c in code), "the notebook draws but has no image/png"


def _tiny_notebook():
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(y=[1, 3, 2]), layout={"title": {"text": "tiny"}, "width": 320, "height": 200})
    spec = json.loads(fig.to_json())
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig", execution_count=1, metadata={"execution": {"iopub.status.busy": "x"}})
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
        nbformat.v4.new_output("display_data", data={"text/html": "<script>window.PlotlyConfig = {}</script>"}),
        nbformat.v4.new_output(
            "display_data", data={nbmod.PLOTLY_MIME: spec, "text/html": '<div class="plotly-graph-div"></div>', "text/plain": "Figure"}
        ),
        nbformat.v4.new_output("display_data", data={nbmod.WIDGET_MIME: {"model_id": "abc"}, "text/plain": "Dropdown()"}),
    ]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"state": {}}
    return nb


def test_strip_volatile():
    nb = nbmod.strip_volatile(_tiny_notebook())
    outputs = nb.cells[0].outputs
    assert "widgets" not in nb.metadata and "execution" not in nb.cells[0].metadata
    assert [o.output_type for o in outputs] == ["stream", "display_data", "display_data"]  # the loader is gone
    assert dict(outputs[2].data) == {"text/plain": "Dropdown()"}


def test_replace_plotly_outputs_with_png(tmp_path: Path):
    try:
        nbmod.require_exporter()
    except WorkbenchError as exc:
        pytest.skip(f"no image exporter: {exc}")
    nb = nbmod.strip_volatile(_tiny_notebook())
    assert nbmod.replace_plotly_outputs(nb) == 1
    nbformat.validate(nb)
    assert nb.cells[0].outputs[0].text == "hello\n"  # text outputs stay
    out = nb.cells[0].outputs[1]
    assert set(out.data) == {nbmod.PNG_MIME, "text/plain"} and out.data["text/plain"] == "<Figure: tiny>"
    assert out.metadata[nbmod.PNG_MIME] == {"width": 320, "height": 200}
    png = base64.b64decode(out.data[nbmod.PNG_MIME])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 30_000
    width, height, depth, colour_type = struct.unpack(">IIBB", png[16:26])
    assert depth == 8 and colour_type == 3  # a 256-colour palette image
    if nbmod.require_exporter() == "kaleido":  # a Chromium screenshot has a margin
        assert (width, height) == (320, 200)


def test_compact_png_keeps_pixels(tmp_path: Path):
    """A palette PNG of an image with few colours decodes to the same pixels (zlib-decoded here)."""
    import numpy as np

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    pixels = colours[rng.integers(0, 5, (12, 9))]
    path = tmp_path / "in.png"
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + nbmod._png_chunk(b"IHDR", struct.pack(">IIBBBBB", 9, 12, 8, 2, 0, 0, 0))
        + nbmod._png_chunk(b"IDAT", zlib.compress(raw, 0)) + nbmod._png_chunk(b"IEND", b"")
    )
    out = nbmod.compact_png(path)
    assert out[25] == 3 and len(out) < path.stat().st_size
    plte_at, idat_at = out.index(b"PLTE"), out.index(b"IDAT")
    palette = np.frombuffer(out[plte_at + 4 : plte_at + 4 + struct.unpack(">I", out[plte_at - 4 : plte_at])[0]], np.uint8)
    data = zlib.decompress(out[idat_at + 4 : idat_at + 4 + struct.unpack(">I", out[idat_at - 4 : idat_at])[0]])
    index = np.frombuffer(data, np.uint8).reshape(12, 10)[:, 1:]
    assert np.array_equal(palette.reshape(-1, 3)[index], pixels)


def test_render_notebook_without_exporter_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "t.ipynb"
    nbformat.write(_tiny_notebook(), path)
    before = path.read_bytes()

    def no_exporter() -> str:
        raise WorkbenchError("cannot write static images: no Chrome/Chromium found")

    monkeypatch.setattr(nbmod, "check_image_export", no_exporter)
    with pytest.raises(WorkbenchError) as info:
        nbmod.render_notebook(path)
    assert "\n" not in str(info.value) and "kaleido" in str(info.value) and "chromium" in str(info.value)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_figures_notebooks_flag_renders_the_notebooks(monkeypatch: pytest.MonkeyPatch):
    from workbench.cli import main

    calls = []
    monkeypatch.setattr(nbmod, "render_notebooks", lambda *a, **k: calls.append((a, k)) or [])
    assert main(["figures", "--notebooks"]) == 0 and calls == [((), {})]
