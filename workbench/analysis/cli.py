"""``workbench analyze {attribution,attention,patching,necessity,reliability,monitor}``: registered by :func:`register`."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from ..errors import WorkbenchError


# flag -> (its argparse dest, the analyses that read it): given to another analysis, it is refused, not ignored
ANALYSIS_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "--layer": ("layer", ("attribution", "reliability")),
    "--layers": ("layers", ("attention", "patching", "necessity", "reliability", "monitor")),
    "--direction": ("direction", ("attribution", "necessity", "monitor")),
    "--target": ("target", ("patching", "necessity")),
    "--response-tokens": ("response_tokens", ("attention",)),
    "--n-train": ("n_train", ("attribution", "necessity", "reliability", "monitor")),
    "--n-monitor": ("n_monitor", ("monitor",)),
    "--max-new-tokens": ("monitor_tokens", ("monitor",)),
    "--n-pairs": ("n_pairs", ("attribution", "attention")),
    "--n-patch-pairs": ("n_patch_pairs", ("patching", "necessity")),
    "--layer-stride": ("layer_stride", ("patching", "necessity")),
    "--n-positions": ("n_positions", ("patching",)),
}


def check_analysis_flags(args: argparse.Namespace) -> None:
    """Refuse a flag the chosen analysis does not read (``analyze attention --target x`` would silently ignore it)."""
    for flag, (dest, users) in ANALYSIS_FLAGS.items():
        if getattr(args, dest, None) and args.analysis not in users:
            raise WorkbenchError(f"{flag} is for {', '.join(users)}; analyze {args.analysis} does not use it")
    if args.layers and args.layer_stride:
        raise WorkbenchError("--layer-stride spaces the default layer grid; --layers gives the layers: pass one of them")
    if args.direction and args.n_train and args.analysis != "reliability":
        raise WorkbenchError("--n-train sizes a direction computed from train pairs; --direction FILE gives one: drop one of them")


def cmd_analyze(args: argparse.Namespace) -> int:
    """Load the model, run one analysis, write its figure (HTML, PNG) and JSON record, print a summary."""
    from ..directions import Direction
    from ..figures.export import check_image_export
    from ..models import load_model
    from .run import AnalysisSizes, run_analysis, short_name, write_outputs

    check_analysis_flags(args)
    sizes = AnalysisSizes()
    for field in ("n_train", "n_pairs", "n_patch_pairs", "layer_stride", "n_positions", "n_monitor", "monitor_tokens"):
        value = getattr(args, field)
        if value is not None:
            if value < 1:
                flag = "--max-new-tokens" if field == "monitor_tokens" else f"--{field.replace('_', '-')}"
                raise WorkbenchError(f"{flag} must be >= 1, got {value}")
            sizes = replace(sizes, **{field: value})
    if args.threads is not None:
        if args.threads < 1:
            raise WorkbenchError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    direction = Direction.load(args.direction) if args.direction else None  # read before the slow model load
    if args.images:
        check_image_export()
    from ..cli_types import layers_arg
    from ..data.builtin import family_of

    family_of(args.instruction)  # an unknown id fails before the model loads
    layers = layers_arg(args.layers, args.model)
    if args.layer is not None:
        from ..errors import LayerError
        from ..models.loading import layer_count

        n = layer_count(args.model)
        if n is not None and not 0 <= args.layer < n:
            raise LayerError(f"layer {args.layer} is out of range: this model has layers 0..{n - 1}")
    if args.response_tokens < 0:
        raise WorkbenchError(f"--response-tokens must be >= 0, got {args.response_tokens}")
    model = load_model(args.model, device=args.device)
    _, fig, record = run_analysis(
        args.analysis, model, args.instruction, layer=args.layer, layers=layers, sizes=sizes,
        direction=direction, target=args.target, response_tokens=args.response_tokens,
    )
    stem = f"analysis_{args.analysis}_{short_name(args.instruction)}"
    for path in write_outputs([(fig, stem, record)], args.out, images=args.images):
        print(f"wrote {path}")
    brief = {k: v for k, v in record.items() if k not in ("mean", "labels", "labels_with", "sizes")}
    print(json.dumps(brief, indent=1, default=str)[:4000])
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to the ``workbench`` parser's subparsers."""
    from ..models.registry import DEFAULT_MODEL
    from .run import ANALYSES

    p = subparsers.add_parser(
        "analyze",
        help="where the instruction lives: attribution, attention, patching, necessity, reliability, monitor",
        description="Component attribution of a direction, attention to the instruction's tokens, activation "
        "patching (layer x position), necessity/sufficiency of the direction per layer, and its reliability.",
    )
    p.add_argument("analysis", choices=ANALYSES)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, local folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--instruction", default="detectable_format:title", help="built-in instruction id (default detectable_format:title)")
    p.add_argument("--layer", type=int, help="attribution layer / reliability pair-count curve layer (default 0.7 of the depth)")
    p.add_argument("--layers", help="layers for attention, patching, necessity, reliability, e.g. 0-29 or 0,6,12 (default: all, "
                   "patching and necessity every --layer-stride)")
    p.add_argument("--direction", help="a saved direction file instead of computing one from the train pairs")
    from ..arguments import text_arg

    p.add_argument("--target", type=text_arg, help="patching/necessity metric: teacher-forced log-probability of this continuation (e.g. '<<'); "
                   "default: KL shift of the first response token")
    p.add_argument("--response-tokens", type=int, default=0,
                   help="attention: also from the first N generated tokens of each with-instruction prompt (default 0)")
    p.add_argument("--n-train", type=int, help="train pairs for the direction and reliability (default 64)")
    p.add_argument("--n-pairs", type=int, help="validation pairs for attribution and attention (default 16)")
    p.add_argument("--n-patch-pairs", type=int, help="validation pairs for patching and necessity (default 4)")
    p.add_argument("--layer-stride", type=int, help="patching/necessity layer grid stride (default 3, plus the last layer)")
    p.add_argument("--n-positions", type=int, help="patching: positions from the end (default 12)")
    p.add_argument("--n-monitor", type=int, help="monitor: validation pairs scored (default 40)")
    p.add_argument("--max-new-tokens", dest="monitor_tokens", type=int,
                   help="monitor: new tokens of each unsteered response checked for compliance (default 64)")
    from ..cli_types import device_arg, folder_arg

    p.add_argument("--out", type=folder_arg(), default="figures", help="output folder (default figures)")
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest on a busy shared CPU)")
    p.add_argument("--no-images", dest="images", action="store_false", help="write HTML and JSON only (no PNG)")
    p.set_defaults(func=cmd_analyze)
    return p
