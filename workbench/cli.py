"""The ``workbench`` command line: models, directions compute, generate, demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from .arguments import finite_float, int_list, seed_arg, text_arg
from .cli_types import device_arg, folder_arg, layers_arg, optional_output_file, output_file, parse_kwargs, positive_int
from .errors import WorkbenchError
from .models.backends import GENERATION_BACKENDS


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, local folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")


def _load(args: argparse.Namespace):
    from .models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


# --- models -------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .models.inventory import inventory

    if args.check:
        from .models.check import print_checks

        return print_checks(args.check, device=args.device, compiled=not args.no_compiled, max_new_tokens=args.max_new_tokens)
    rows = inventory()
    header = ("name", "installed", "cached", "size", "layers", "d_model", "prompts", "install")
    table = [header] + [
        (r.name, "yes" if r.installed else "no", "yes" if r.cached else "no", r.size, r.layers, r.d_model, r.prompt_style, r.install)
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


# --- directions ---------------------------------------------------------------------------
def cmd_directions_compute(args: argparse.Namespace) -> int:
    from .data import load_pairs
    from .data.builtin import family_of
    from .directions import compute_direction

    kwargs = parse_kwargs(args.kwargs)
    report = None
    if args.pairs:
        from .data.files import read_pairs_file

        pairs, report = read_pairs_file(args.pairs)
        if args.instruction or kwargs:
            pairs = pairs.filter(instruction=args.instruction, kwargs=kwargs)
    else:
        if not args.instruction:
            raise WorkbenchError("give --instruction ID (built-in pairs) or --pairs FILE")
        pairs = load_pairs(args.family or family_of(args.instruction), args.instruction, split=args.split, kwargs=kwargs)
    pairs.require_nonempty("directions compute")
    from .directions import check_distinct_layers, check_pairs_differ

    layers = layers_arg(args.layers, args.model)
    if layers is not None:
        check_distinct_layers(layers)
    if report is not None:
        _check_rewrites(pairs, report, args.pairs)
    check_pairs_differ(pairs)
    ids = pairs.instruction_ids()
    if len(ids) > 1 and not args.pool:
        raise WorkbenchError(
            f"the pairs hold {len(ids)} instructions ({', '.join(ids[:5])}{'...' if len(ids) > 5 else ''}); "
            "pick one with --instruction, or pass --pool to compute one pooled direction"
        )
    model = _load(args)
    direction = compute_direction(model, pairs, layers=layers, hook=args.hook, batch_size=args.batch_size, truncate=args.truncate)
    direction.save(args.out)
    best = int(direction.norms.argmax())
    print(f"wrote {args.out}: {direction!r}; largest mean difference at layer {direction.layers[best]}")
    return 0


def _check_rewrites(pairs, report, path: str) -> None:
    """Name the cause when every pair lost its twin because ``prompt_without_instruction`` equals ``prompt``."""
    failed = set(report.failed_rewrites)
    lacking = [r.base_id for r in pairs if r.prompt_without_instruction is None]
    if lacking and all(b in failed for b in lacking):
        raise WorkbenchError(
            f"--pairs {path}: {len(lacking)} of {len(pairs)} pairs have a prompt_without_instruction equal to their prompt "
            f"(first: base_id {lacking[0]!r}), so the instruction was never removed; a direction needs pairs that differ"
        )


# --- generate -----------------------------------------------------------------------------
def _broadcast(values: list | None, n: int, name: str, default):
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise WorkbenchError(f"{name}: give one value or one per --steer ({n}), got {len(values)}")
    return values


def cmd_generate(args: argparse.Namespace) -> int:
    import contextlib

    from .directions import Direction
    from .generation import generate
    from .steering import make_spec, steer

    n = len(args.steer or [])
    if n == 0 and any(v for v in (args.layer, args.coeff, args.target)):
        raise WorkbenchError("--layer/--coeff/--target need --steer FILE")
    plan = list(zip(
        [Direction.load(path) for path in args.steer or []],  # read files before the slow model load
        _broadcast(args.layer, n, "--layer", None),
        _broadcast(args.coeff, n, "--coeff", 1.0),
        _broadcast(args.target, n, "--target", None),
    ))
    for direction, layer, _, _ in plan:
        if layer is None:
            raise WorkbenchError(f"--steer {direction.name}: give --layer (the direction covers layers {direction.layers[0]}..{direction.layers[-1]})")
    specs = [make_spec(direction, layer, coeff, args.mode, args.positions, target)  # a bad strength fails before the load
             for direction, layer, coeff, target in plan]
    model = _load(args)
    for direction, _, _, _ in plan:
        direction.check_compatible(model)
    ctx = steer(model, *specs) if specs else contextlib.nullcontext()
    with ctx:
        texts = generate(
            model, args.prompt, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            use_cache=not args.no_cache, do_sample=args.sample, temperature=args.temperature, seed=args.seed,
            progress=len(args.prompt) > args.batch_size, backend=args.backend, truncate=args.truncate,
            parse_special_tokens=args.parse_special_tokens,
        )
    for prompt, text in zip(args.prompt, texts):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text)
        if len(args.prompt) > 1:
            print()
    return 0


# --- demo ---------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(model_name=args.model, device=args.device, n_eval=args.n_eval, n_train=args.n_train, out_dir=Path(args.out))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    from .bench_options import check_bench_options

    check_bench_options(args.twin, args.twin_layers, args.dtype, args.device, getattr(args, "given", None))  # before any load
    run_bench(model_name=args.model, device=args.device, n_extract=args.n_extract, repeats=args.repeats,
              lengths=tuple(args.lengths), out=_bench_out(args, "bench"), peers=not args.no_peers,
              batches=tuple(args.batches), dtype=args.dtype, twin=args.twin, twin_layers=args.twin_layers,
              compiled=not args.no_compiled)
    return 0


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    from .arguments import float_list
    from .data.builtin import family_of
    from .experiments.bench_sweep import run_sweep_bench

    from .bench_options import check_bench_options

    family_of(args.instruction)  # an unknown id fails before the model loads
    check_bench_options(args.twin, args.twin_layers, args.dtype, args.device, getattr(args, "given", None))
    if args.twin:  # --layers against the twin's layer count
        from .models.twins import SHAPES

        layers = int_list(args.layers, limit=args.twin_layers or SHAPES[args.twin].n_layers)
    else:
        layers = layers_arg(args.layers, args.model)
    run_sweep_bench(model_name=args.model, device=args.device, instruction=args.instruction, layers=layers,
                    strengths=float_list(args.strengths), n_val=args.n_val, max_new_tokens=args.max_new_tokens,
                    max_batch=args.max_batch, search_keep=args.search_keep, threads=args.threads,
                    out=_bench_out(args, "bench-sweep"), dtype=args.dtype, twin=args.twin, twin_layers=args.twin_layers)
    return 0


def _bench_out(args: argparse.Namespace, stem: str) -> Path | None:
    """The report's path: ``--out`` ('' for none); a twin's run by default goes beside, not over, the real model's report."""
    if args.twin and "out" not in getattr(args, "given", ()):
        return Path(f"docs/{stem}-twin-{args.twin}.json")
    return Path(args.out) if args.out else None


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from .gpu_check import STEPS, check_settings, run_gpu_check

    steps = tuple(x.strip() for x in args.steps.split(","))
    unknown = [x for x in steps if x not in STEPS]
    if unknown:
        raise WorkbenchError(f"--steps: unknown step {unknown[0]!r}; choose from {','.join(STEPS)}")
    settings = check_settings(args.device, args.twin, args.twin_layers, args.dtype, args.quick)  # before any model
    return 0 if run_gpu_check(args.out, settings, steps)["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list built-in models: installed, cached, size, layers, d_model")
    p.add_argument("--check", metavar="PATH", help="check a checkpoint (folder or name): steered greedy tokens equal on every "
                   "generation path, plain extraction equal to the bridge's; one pass/fail line per path")
    p.add_argument("--device", type=device_arg, default=None, help="device for --check (default: cuda when available)")
    p.add_argument("--no-compiled", action="store_true", help="--check: skip the compiled path (torch.compile is slow on CPUs)")
    p.add_argument("--max-new-tokens", type=positive_int, default=10, help="--check: greedy tokens per prompt (default 10)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("directions", help="compute or convert instruction directions")
    dsub = p.add_subparsers(dest="directions_command", required=True)
    c = dsub.add_parser("compute", help="compute a direction from built-in pairs or a pairs file")
    _add_model_args(c)
    c.add_argument("--instruction", help="IFEval instruction id, e.g. detectable_format:title")
    c.add_argument("--family", choices=("format", "length", "keywords"), help="built-in family (default: from the id)")
    c.add_argument("--split", default="train", choices=("train", "validation", "test", "all"))
    c.add_argument("--kwargs", help="JSON filter on the instruction's kwargs, e.g. '{\"keywords\": [\"ocean\"]}'")
    c.add_argument("--pairs", help="IFEval or paired jsonl file instead of built-in pairs")
    c.add_argument("--pool", action="store_true", help="pool several instructions into one direction")
    c.add_argument("--layers", help="layers to compute, e.g. 10,12,20-24 (default all)")
    c.add_argument("--hook", default="resid_post", choices=("resid_pre", "resid_mid", "resid_post"))
    c.add_argument("--batch-size", type=positive_int, default=16)
    c.add_argument("--truncate", choices=("left",), default=None,
                   help="prompts longer than the model's context: drop their earliest tokens (default: refuse them)")
    c.add_argument("--out", type=output_file, required=True, help="output .safetensors file")
    c.set_defaults(func=cmd_directions_compute)

    g = sub.add_parser("generate", help="generate (optionally steered) responses")
    _add_model_args(g)
    g.add_argument("--prompt", type=text_arg, action="append", required=True, help="user text (repeat for several)")
    g.add_argument("--steer", action="append", help="direction file (repeat to compose several)")
    g.add_argument("--layer", type=int, action="append", help="layer for each --steer")
    g.add_argument("--coeff", type=finite_float, action="append", help="strength for add mode (per --steer)")
    g.add_argument("--target", type=finite_float, action="append", help="projection target for project mode")
    g.add_argument("--mode", default="add", choices=("add", "project", "ablate"))
    g.add_argument("--positions", default="all", choices=("all", "prompt", "generated"))
    g.add_argument("--max-new-tokens", type=positive_int, default=96)
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--truncate", choices=("left",), default=None,
                   help="a prompt past the context (with the new tokens): drop its earliest tokens (default: refuse it)")
    g.add_argument("--parse-special-tokens", action="store_true",
                   help="parse control tokens such as <|im_start|> written in --prompt (default: they are plain text)")
    g.add_argument("--no-cache", action="store_true", help="reference loop: re-run the full sequence per token")
    g.add_argument("--backend", default="auto", choices=GENERATION_BACKENDS,
                   help="KV-cached decoding path; 'compiled' compiles the decoding step once (faster long batch-1 runs)")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=finite_float, default=1.0)
    g.add_argument("--seed", type=seed_arg, default=0)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="compute three instruction directions on SmolLM2 and steer with them")
    d.add_argument("--model", default="smollm2-135m-instruct")
    d.add_argument("--device", type=device_arg, default=None)
    d.add_argument("--n-eval", type=positive_int, default=20, help="validation prompts per instruction")
    d.add_argument("--n-train", type=positive_int, default=120, help="training pairs per instruction")
    d.add_argument("--out", type=folder_arg(), default="figures", help="folder for the figure")
    d.set_defaults(func=cmd_demo)

    from .arguments import RecordGiven
    from .bench_options import add_bench_options

    b = sub.add_parser("bench", help="benchmark steered generation and activation extraction")
    b.add_argument("--model", default="smollm2-135m-instruct", action=RecordGiven)
    b.add_argument("--device", type=device_arg, default=None)
    b.add_argument("--lengths", type=positive_int, nargs="+", default=[128, 256], help="new tokens per generation")
    b.add_argument("--n-extract", type=positive_int, default=200, help="prompts for the extraction rows")
    b.add_argument("--repeats", type=positive_int, default=3, help="rounds of the batch-1 rows (the fastest of each is kept)")
    b.add_argument("--out", type=optional_output_file, default="docs/bench.json", action=RecordGiven,
                   help="JSON report ('' for none; with --twin NAME the default is docs/bench-twin-NAME.json)")
    b.add_argument("--no-peers", action="store_true", help="skip the steering-vectors and repeng rows")
    b.add_argument("--no-compiled", action="store_true", help="skip the compiled step's rows (torch.compile takes 10-60 s "
                   "per batch size and length)")
    add_bench_options(b)
    b.set_defaults(func=cmd_bench)

    bs = sub.add_parser("bench-sweep", help="benchmark the sweep: one unit at a time, packed, and the fast search")
    bs.add_argument("--model", default="smollm2-135m-instruct", action=RecordGiven)
    add_bench_options(bs, batches=False)
    bs.add_argument("--device", type=device_arg, default=None)
    bs.add_argument("--instruction", default="detectable_format:title")
    bs.add_argument("--layers", help="layers of the grid, e.g. 14,18,22,26 (default: the paper's grid)")
    bs.add_argument("--strengths", default="1.0", help="comma-separated strengths (project mode)")
    bs.add_argument("--n-val", type=positive_int, default=40)
    bs.add_argument("--max-new-tokens", type=positive_int, default=128)
    bs.add_argument("--max-batch", type=positive_int, help="rows per packed decode batch (default: from the device)")
    bs.add_argument("--search-keep", type=positive_int, default=3)
    bs.add_argument("--threads", type=positive_int, help="torch CPU threads (default on CPU: 1, as reproduce)")
    bs.add_argument("--out", type=optional_output_file, default="docs/bench-sweep.json", action=RecordGiven,
                    help="JSON report ('' for none; with --twin NAME the default is docs/bench-sweep-twin-NAME.json)")
    bs.set_defaults(func=cmd_bench_sweep)

    gc = sub.add_parser("gpu-check", help="check a GPU machine end to end: pinned packages, twin bench (bfloat16), "
                        "bench-sweep and reproduce format --quick on a twin; one JSON and one Markdown page")
    gc.add_argument("--device", type=device_arg, default=None, help="cuda (default when available) or cpu")
    add_bench_options(gc, batches=False, defaults="bfloat16; --twin: llama3-3b, smollm2 with --quick")
    gc.add_argument("--quick", action="store_true", help="tiny sizes (a 2-layer twin, a few prompts and tokens): "
                    "the whole check on a CPU in under a minute")
    gc.add_argument("--steps", default="versions,bench,bench-sweep,reproduce", help="steps to run, comma-separated "
                    "(default: all)")
    gc.add_argument("--out", type=folder_arg(), default="results/gpu-check", help="folder for gpu-check.json, "
                    "gpu-check.md and the reproduce run (default results/gpu-check)")
    gc.set_defaults(func=cmd_gpu_check)

    from .interop.cli import register as register_interop, register_top as register_interop_top

    register_interop(dsub)
    register_interop_top(sub)

    from .experiments.cli import register as register_experiments

    register_experiments(sub)

    from .figures.cli import register as register_figures

    register_figures(sub)

    from .analysis.cli import register as register_analysis

    register_analysis(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one-line errors and a non-zero exit status for bad input, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        from .arguments import check_given_flags

        check_given_flags(args)
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return status
    except WorkbenchError as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `workbench generate ... | head -1`: the reader left; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit: let that go nowhere
        return 141


if __name__ == "__main__":
    sys.exit(main())
