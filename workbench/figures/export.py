"""Writing figures: self-contained interactive HTML (works offline) and static PNG/SVG images, written atomically.

Static images come from kaleido (>= 1, which drives an installed Chrome/Chromium such as Debian's
``/usr/bin/chromium``); without kaleido, PNGs fall back to a headless-Chromium screenshot of the
figure's HTML. ``find_chromium`` locates the browser both use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import WorkbenchError
from ..io import refuse_symlink, write_text_atomic

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
)
SETUP_HINT = (
    "static images need kaleido>=1 with a Chromium browser (Debian: apt-get install -y chromium; "
    "pip install 'kaleido>=1,<2')"
)


def save_figure(fig, path: str | Path, plotlyjs: str = "inline") -> Path:
    """Write ``fig`` as an HTML file that opens without network.

    ``plotlyjs="inline"`` embeds plotly.js (about 4.7 MB, a standalone file); ``"directory"``
    references a ``plotly.min.js`` written once next to it, for folders of many figures.
    """
    path = Path(path)
    if path.suffix != ".html":
        path = path.with_suffix(".html")
    if plotlyjs not in ("inline", "directory"):
        raise WorkbenchError(f"plotlyjs must be 'inline' or 'directory', got {plotlyjs!r}")
    if plotlyjs == "directory":
        write_plotlyjs(path.parent)
    write_text_atomic(path, fig.to_html(include_plotlyjs=True if plotlyjs == "inline" else "directory", full_html=True))
    return path


def write_plotlyjs(folder: str | Path) -> Path:
    """Write the installed plotly's ``plotly.min.js`` into ``folder`` (unless an identical copy is there)."""
    from plotly.offline import get_plotlyjs

    target = Path(folder) / "plotly.min.js"
    js = get_plotlyjs()
    if not target.is_file() or target.read_text(encoding="utf-8") != js:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, js)
    return target


def save_html(body: str, path: str | Path, title: str = "figure") -> Path:
    """Write an HTML fragment (e.g. coloured tokens) as a standalone page."""
    import html

    path = Path(path)
    if path.suffix != ".html":
        path = path.with_suffix(".html")
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f'<body style="max-width:1100px;margin:20px auto;font-family:sans-serif">{body}</body></html>\n'
    )
    write_text_atomic(path, page)
    return path


def find_chromium() -> str | None:
    """Path of a Chrome/Chromium binary: ``$BROWSER_PATH`` if set, else the first of the usual names on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def kaleido_available() -> bool:
    """Whether plotly can export images here (kaleido >= 1 installed)."""
    try:
        from plotly.io._kaleido import kaleido_available as available
    except ImportError:  # pragma: no cover - very old plotly
        return False
    return bool(available())


def screenshot_html(
    html_path: str | Path, png_path: str | Path, width: int = 1000, height: int = 700, timeout: float = 60.0
) -> Path:
    """Screenshot a local HTML file with headless Chromium (fresh profile, no network features)."""
    browser = find_chromium()
    if browser is None:
        raise WorkbenchError(f"no Chromium binary found (looked for {', '.join(CHROMIUM_NAMES)}); {SETUP_HINT}")
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wb-chromium-") as profile:
        tmp_png = Path(profile) / "shot.png"
        cmd = [
            browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/profile", f"--screenshot={tmp_png}",
            f"--window-size={int(width)},{int(height)}", "--virtual-time-budget=5000",
            Path(html_path).resolve().as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WorkbenchError(f"Chromium took longer than {timeout:.0f} s to screenshot {html_path}") from None
        if not tmp_png.is_file():
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            raise WorkbenchError(f"Chromium wrote no screenshot of {html_path} (exit {proc.returncode}): {' | '.join(tail)}")
        staged = refuse_symlink(png_path.with_name(f".{png_path.name}.tmp"))  # copyfile would write through a link
        shutil.copyfile(tmp_png, staged)
        os.replace(staged, png_path)
    return png_path


def check_image_export() -> str:
    """How static images will be made here (``"kaleido"`` or ``"chromium screenshot"``); a clear error if they cannot."""
    if kaleido_available():
        try:
            from choreographer.browsers.chromium import Chromium

            if Chromium.find_browser(skip_local=False):  # also finds a Chrome fetched by plotly_get_chrome
                return "kaleido"
        except Exception:  # noqa: BLE001 - a changed choreographer API: fall back to our own search
            pass
    if find_chromium() is None:
        raise WorkbenchError(
            f"cannot write static images: no Chrome/Chromium found ({', '.join(CHROMIUM_NAMES)} or $BROWSER_PATH); "
            f"{SETUP_HINT}; or pass --no-images"
        )
    return "kaleido" if kaleido_available() else "chromium screenshot"


def _size(fig) -> tuple[int, int]:
    return int(fig.layout.width or 1000), int(fig.layout.height or 600)


def save_images(items: Sequence[tuple[Any, str | Path]], scale: float = 1.0) -> list[Path]:
    """Write each ``(fig, path)`` as a static image (format from the suffix: .png or .svg) in one browser session."""
    paths = [Path(p) for _, p in items]
    for path in paths:
        if path.suffix not in (".png", ".svg"):
            raise WorkbenchError(f"{path}: static images are .png or .svg")
        path.parent.mkdir(parents=True, exist_ok=True)
    if not items:
        return []
    if kaleido_available():
        import plotly.io as pio

        tmp = [refuse_symlink(p.with_name(f".{p.stem}.tmp{p.suffix}")) for p in paths]  # kaleido writes through links
        try:
            pio.write_images(
                [fig for fig, _ in items], tmp, width=[_size(f)[0] for f, _ in items],
                height=[_size(f)[1] for f, _ in items], scale=scale,
            )
        except RuntimeError as exc:  # kaleido found no browser
            raise WorkbenchError(f"image export failed: {str(exc).strip().splitlines()[0]}; {SETUP_HINT}") from None
        for (fig, _), t, p in zip(items, tmp, paths):
            if not t.is_file():  # kaleido's batch call logs a failed figure and goes on: redo it to get the error
                try:
                    pio.write_image(fig, t, width=_size(fig)[0], height=_size(fig)[1], scale=scale)
                except Exception as exc:  # noqa: BLE001 - kaleido raises its own error types
                    raise WorkbenchError(f"image export of {p.name} failed: {type(exc).__name__}: {exc}") from None
            os.replace(t, p)
        return paths
    for (fig, _), path in zip(items, paths):
        if path.suffix != ".png":
            raise WorkbenchError(f"{path}: SVG export needs kaleido; {SETUP_HINT}")
        with tempfile.TemporaryDirectory(prefix="wb-fig-") as tmpdir:
            page = Path(tmpdir) / "fig.html"
            page.write_text(fig.to_html(include_plotlyjs=True, full_html=True, config={"staticPlot": True}), encoding="utf-8")
            width, height = _size(fig)
            screenshot_html(page, path, width + 20, height + 20)
    return paths


def save_image(fig, path: str | Path, scale: float = 1.0) -> Path:
    """Write ``fig`` as a static .png or .svg image (see :func:`save_images`)."""
    return save_images([(fig, path)], scale)[0]
