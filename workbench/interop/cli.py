"""``workbench directions export`` / ``import`` (llama.cpp GGUF, lm-eval steer files, tensor files) and ``workbench interop``.

:func:`register` adds export and import to the ``directions`` subparsers of ``workbench.cli``;
:func:`register_top` adds ``workbench interop ifeval-crosscheck``.
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
    """Write a workbench direction file as a llama.cpp control-vector GGUF or an lm-eval steer file."""
    from ..directions import Direction
    from .gguf_control import export_control_vector

    if args.format == "lm-eval":
        return _export_lm_eval(args)
    if args.mode not in (None, "add") or args.target is not None:
        raise WorkbenchError("--mode/--target: llama.cpp control vectors only add (use --format lm-eval for project/ablate)")
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
    from .importing import import_direction
    from .torch_vectors import detect_format

    from .lm_eval import is_lm_eval_file

    kind = detect_format(args.file)
    if args.format == "lm-eval" or (args.format == "auto" and kind == "torch" and is_lm_eval_file(args.file)):
        kind = "lm-eval"
    model: Any | None = None
    if args.model:
        from ..models import load_model

        model = load_model(args.model, device=args.device or "cpu")
    if kind == "lm-eval":
        return _import_lm_eval(args, model)
    direction = import_direction(args.file, model=model, layers=int_list(args.layers), name=args.name)
    direction.save(args.out)
    print(f"wrote {args.out}: {direction!r} (from a {kind} file)")
    return 0


def _export_lm_eval(args: argparse.Namespace) -> int:
    """``--format lm-eval``: the steer_path file of lm-eval's ``steered`` model."""
    from ..directions import Direction
    from .lm_eval import export_lm_eval

    if args.raw and args.mode not in (None, "add"):
        raise WorkbenchError("--raw applies to add mode (clamp normalises the vector anyway)")
    direction = Direction.load(args.file)
    model: Any | None = None
    if args.model:
        from ..models import load_model

        model = load_model(args.model, device="cpu")
    mapping = export_lm_eval(
        direction, args.out, layers=int_list(args.layers, "--layer"), mode=args.mode or "add", coeff=args.coeff,
        target=args.target, normalize=not args.raw, model=model, model_type=args.model_type,
    )
    hooks = ", ".join(f"blocks.{L}.hook_{direction.hook} -> {hp}" for L, hp in sorted(mapping.items()))
    print(f"wrote {args.out}: {direction!r}, mode {args.mode or 'add'} ({hooks})")
    print(f"lm-eval: lm_eval --model steered --model_args pretrained=MODEL_DIR,steer_path={args.out} --tasks ifeval")
    return 0


def _import_lm_eval(args: argparse.Namespace, model: Any | None) -> int:
    """Read an lm-eval steer file (checked entirely before anything is written)."""
    from .lm_eval import lm_eval_specs, load_lm_eval

    if args.layers is not None:
        raise WorkbenchError("--layers: an lm-eval steer file names its layers in its hookpoints")
    direction = load_lm_eval(args.file, model=model, name=args.name)
    specs = lm_eval_specs(direction)
    direction.save(args.out)
    print(f"wrote {args.out}: {direction!r} (from an lm-eval steer file)")
    for spec in specs:
        how = f"--mode add --coeff {spec.coeff:g}" if spec.mode == "add" else f"--mode project --target {spec.target:g}"
        print(f"  lm-eval's steering at layer {spec.layer}: workbench generate --steer {args.out} --layer {spec.layer} {how}")
    return 0


def register(dsub: Any) -> None:
    """Add ``export`` and ``import`` to the ``directions`` subparsers (an ``argparse`` subparsers action)."""
    e = dsub.add_parser("export", help="write a direction as a llama.cpp control vector (GGUF) or an lm-eval steer file")
    e.add_argument("file", help="workbench direction file (.safetensors)")
    e.add_argument("--format", default="gguf", choices=("gguf", "lm-eval"),
                   help="gguf: llama.cpp control vector (default); lm-eval: steer_path .pt of lm-eval's steered model")
    from ..arguments import finite_float
    from ..cli_types import device_arg, output_file

    e.add_argument("--out", type=output_file, required=True, help="output file, e.g. title.gguf or title.pt")
    e.add_argument("--layers", "--layer", dest="layers",
                   help="layers to write, e.g. 10,12,20-24 (gguf default: every layer llama.cpp can steer; "
                   "lm-eval: required unless the direction has one layer)")
    e.add_argument("--coeff", type=finite_float, default=1.0, help="strength folded into the vectors (default 1.0)")
    e.add_argument("--raw", action="store_true", help="write the raw mean differences (times --coeff), not unit vectors")
    e.add_argument("--model-hint", default=None, help="llama.cpp architecture name stored in the file (default llama)")
    e.add_argument("--mode", default=None, choices=("add", "project", "ablate"),
                   help="lm-eval: add (action add), project (action clamp to --target) or ablate (clamp to 0)")
    e.add_argument("--target", type=finite_float, default=None,
                   help="lm-eval project mode: projection to clamp to (default: the direction's proj_with)")
    e.add_argument("--model", default=None, help="lm-eval: derive hookpoint names from this model and check the direction fits it")
    e.add_argument("--model-type", default=None,
                   help="lm-eval: hookpoint naming of this config.model_type without loading a model (default llama: layers.N)")
    e.set_defaults(func=cmd_directions_export)

    i = dsub.add_parser("import", help="read a GGUF control vector, lm-eval steer file, safetensors or torch file into a direction file")
    i.add_argument("file", help="vector file; the format is detected from its content")
    i.add_argument("--format", default="auto", choices=("auto", "lm-eval"),
                   help="auto: detect from content (default); lm-eval: insist on an lm-eval steer file")
    i.add_argument("--out", type=output_file, required=True, help="output workbench direction file (.safetensors)")
    i.add_argument("--model", default=None, help="check d_model and layers against this model and record its name")
    i.add_argument("--device", type=device_arg, default=None, help="device for --model (default cpu)")
    i.add_argument("--name", default=None, help="direction name (default: from the file)")
    i.add_argument("--layers", default=None, help="layers of the rows of a plain tensor file, e.g. 20-24")
    i.set_defaults(func=cmd_directions_import)


def cmd_interop_ifeval_crosscheck(args: argparse.Namespace) -> int:
    """Score a generations.jsonl with the workbench's and lm-eval's IFEval checkers; print the agreement table."""
    from ..io import write_text_atomic
    from .ifeval_crosscheck import crosscheck, read_generations

    report = crosscheck(read_generations(args.file))
    text = report.markdown()
    bad = report.disagreements()
    for s in bad[: args.show]:
        text += (f"\n- {s.instruction_id}: ours strict {s.ours_strict} / loose {s.ours_loose}, "
                 f"lm-eval strict {s.theirs_strict} / loose {s.theirs_loose}: {s.response[:160]!r}")
    print(f"{args.file}: {report.n_records} records, {len(report.scored)} checks, {len(bad)} disagree\n")
    print(text)
    if args.out:
        write_text_atomic(args.out, text + "\n")
        print(f"wrote {args.out}")
    return 0


def register_top(sub: Any) -> None:
    """Add ``workbench interop ifeval-crosscheck`` to the top-level subparsers."""
    p = sub.add_parser("interop", help="checks against other tools (lm-evaluation-harness IFEval scoring)")
    isub = p.add_subparsers(dest="interop_command", required=True)
    c = isub.add_parser("ifeval-crosscheck", help="score a reproduce run's generations.jsonl with ours and lm-eval's IFEval checkers")
    c.add_argument("file", help="generations.jsonl of a reproduce run")
    from ..cli_types import optional_output_file

    c.add_argument("--out", type=optional_output_file, default=None, help="also write the Markdown table here")
    c.add_argument("--show", type=int, default=10, help="disagreeing responses to print (default 10)")
    c.set_defaults(func=cmd_interop_ifeval_crosscheck)
