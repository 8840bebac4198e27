"""``workbench figures``: regenerate every analysis figure for a model into a folder (HTML + PNG)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_figures(args: argparse.Namespace) -> int:
    """Run :func:`workbench.figures.regenerate.regenerate_figures` with the parsed options."""
    if args.notebooks:
        from .notebooks import render_notebooks

        render_notebooks()
        return 0
    from .regenerate import regenerate_figures

    regenerate_figures(
        model_name=args.model, out_dir=args.out, quick=args.quick, device=args.device, images=not args.no_images,
    )
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``figures`` subcommand to the ``workbench`` parser's subparsers."""
    from ..models.registry import DEFAULT_MODEL

    p = subparsers.add_parser(
        "figures",
        help="regenerate every analysis figure (HTML + PNG) for a model",
        description="Compute directions, projections, similarities, PCA, vocabulary projections, per-token "
        "projections and a small real steering sweep, and write each figure as interactive HTML and a PNG.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, local folder or hub id (default {DEFAULT_MODEL})")
    from ..cli_types import device_arg, folder_arg

    p.add_argument("--out", type=folder_arg(), default="figures", help="output folder (default figures)")
    p.add_argument("--quick", action="store_true", help="fewer pairs, prompts and sweep cells (a smoke run, minutes less)")
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-images", action="store_true", help="write HTML only (no kaleido/Chromium needed)")
    p.add_argument(
        "--notebooks", action="store_true",
        help="instead: execute notebooks/*.ipynb and write them back with outputs, figures as PNGs (as make notebooks)",
    )
    p.set_defaults(func=cmd_figures)
    return p
