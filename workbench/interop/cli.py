"""``workbench directions export`` and ``workbench directions import``: convert directions to and from other tools' files.

:func:`register` adds both subcommands to the ``directions`` subparsers of ``workbench.cli``.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..arguments import int_list
from ..errors import WorkbenchError


def _span(indices: list[int]) -> str:
    if len(indices) > 1 and indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}..{indices[-1]}"
    return ",".join(map(str, indices))


def cmd_directions_export(args: argparse.Namespace) -> int:
    """Write a workbench direction file as a llama.cpp control-vector GGUF."""
    from ..directions import Direction
    from .gguf_control import export_control_vector

    if args.format != "gguf":
        raise WorkbenchError(f"--format {args.format}: only gguf (llama.cpp control vector) is supported")
    direction = Direction.load(args.file)
    mapping = export_control_vector(
        direction, args.out, layers=int_list(args.layers), coeff=args.coeff,
        normalize=not args.raw, model_hint=args.model_hint,
    )
    indices = sorted(mapping.values())
    skipped = [L for L in direction.layers if L not in mapping]
    what = "raw mean differences" if args.raw else "unit vectors"
    print(f"wrote {args.out}: direction.{_span(indices)} from {direction!r}, {what} x {args.coeff:g}")
    if skipped and args.layers is None:
        print(f"skipped layer(s) {_span(skipped)}: llama.cpp cannot steer there (control-vector indices start at 1)")
    print(
        f"llama.cpp: llama-cli -m MODEL.gguf --control-vector-scaled {args.out}:1.0 "
        f"--control-vector-layer-range {indices[0]} {indices[-1]}"
    )
    return 0


def cmd_directions_import(args: argparse.Namespace) -> int:
    """Read a GGUF control vector, safetensors or torch file (detected by content) into a workbench direction file."""
    from .torch_vectors import detect_format, import_direction

    kind = detect_format(args.file)
    model: Any | None = None
    if args.model:
        from ..models import load_model

        model = load_model(args.model, device=args.device or "cpu")
    direction = import_direction(args.file, model=model, layers=int_list(args.layers), name=args.name)
    direction.save(args.out)
    print(f"wrote {args.out}: {direction!r} (from a {kind} file)")
    return 0


def register(dsub: Any) -> None:
    """Add ``export`` and ``import`` to the ``directions`` subparsers (an ``argparse`` subparsers action)."""
    e = dsub.add_parser("export", help="write a direction as a llama.cpp control vector (GGUF)")
    e.add_argument("file", help="workbench direction file (.safetensors)")
    e.add_argument("--format", default="gguf", choices=("gguf",), help="output format (default gguf)")
    e.add_argument("--out", required=True, help="output file, e.g. title.gguf")
    e.add_argument("--layers", help="layers to write, e.g. 10,12,20-24 (default: every layer llama.cpp can steer)")
    e.add_argument("--coeff", type=float, default=1.0, help="strength folded into the vectors (default 1.0)")
    e.add_argument("--raw", action="store_true", help="write the raw mean differences (times --coeff), not unit vectors")
    e.add_argument("--model-hint", default=None, help="llama.cpp architecture name stored in the file (default llama)")
    e.set_defaults(func=cmd_directions_export)

    i = dsub.add_parser("import", help="read a GGUF control vector, safetensors or torch file into a direction file")
    i.add_argument("file", help="vector file; the format is detected from its content")
    i.add_argument("--out", required=True, help="output workbench direction file (.safetensors)")
    i.add_argument("--model", default=None, help="check d_model and layers against this model and record its name")
    i.add_argument("--device", default=None, help="device for --model (default cpu)")
    i.add_argument("--name", default=None, help="direction name (default: from the file)")
    i.add_argument("--layers", default=None, help="layers of the rows of a plain tensor file, e.g. 20-24")
    i.set_defaults(func=cmd_directions_import)
