"""``workbench reproduce`` and ``workbench sweep``: registered on the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..arguments import float_list, int_list
from ..errors import WorkbenchError


def _ratio(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def _common(p: argparse.ArgumentParser) -> None:
    from ..models.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, local folder or hub id (default {DEFAULT_MODEL}); "
                   "reproduce: 'all' runs the built-in real models in turn and writes a comparison")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--mode", choices=("project", "add"), help="steering mode (default: project for format, add for length/keywords)")
    p.add_argument("--layers", help="layers to sweep, e.g. 16,20,24-26 (default: every other layer from n_layers//5)")
    p.add_argument("--layer-stride", type=int, default=2, help="stride of the default layer grid (default 2)")
    p.add_argument("--strengths", help="comma-separated strengths (add: multiples of the direction's norm; project: of the target)")
    p.add_argument("--n-train", type=int, help="training pairs per direction")
    p.add_argument("--n-val", type=int, help="validation prompts per sweep target")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-ppl-ratio", type=_ratio, default=2.0,
                   help="quality rule: steered perplexity <= this x unsteered (default 2.0; 'none' turns it off)")
    p.add_argument("--max-degeneration", type=float, help="quality rule: also require mean degeneration <= this (default off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default on CPU: 1, for the same numbers on any machine and no oversubscription)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where sweep units run: local (this process, default) or ray (Ray actors; docs/ray.md)")
    p.add_argument("--address", help="ray: join the Ray cluster at this address (default: start a local one)")
    p.add_argument("--workers", type=int, help="ray: number of actors (default: as many as the cluster's CPUs or GPUs fit)")


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run one experiment of the paper and write its tables."""
    from .reproduce import ReproduceConfig, run_reproduce

    cfg = ReproduceConfig(
        experiment=args.experiment, model=args.model, quick=args.quick, eval_data=args.eval_data, device=args.device,
        out=args.out, seed=args.seed, mode=args.mode, instructions=args.instruction, targets=int_list(args.targets, "--targets"),
        words=args.word, layers=int_list(args.layers), layer_stride=args.layer_stride, strengths=float_list(args.strengths),
        n_train=args.n_train, n_val=args.n_val, n_eval=args.n_eval, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, max_ppl_ratio=args.max_ppl_ratio, max_degeneration=args.max_degeneration,
        reference_model=args.reference_model,
        source_model=args.source_model, threads=args.threads, publish=args.publish,
        executor=args.executor, address=args.address, workers=args.workers,
    )
    if args.model == "all":  # the built-in real models in turn, then a comparison table
        from .across import run_across_models

        out = run_across_models(cfg)
        print((out / "comparison.md").read_text(encoding="utf-8"))
        return 0
    out = run_reproduce(cfg)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Layer x strength sweep of one instruction on validation prompts; writes the selection beside the direction."""
    from ..data import load_pairs
    from ..data.builtin import family_of
    from ..directions import Direction, compute_direction
    from ..io import write_json_atomic
    from ..models import load_model
    from .reproduce import SWEEP_COLUMNS
    from .results import write_table
    from .executors import make_executor
    from .sweep import SweepSettings, SweepTarget, default_layers, heatmap_records, run_sweep

    import torch

    from .reproduce import cpu_threads

    torch.set_num_threads(cpu_threads(args.threads, args.device))
    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else None
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"--kwargs is not JSON ({exc})") from None
    executor = make_executor(args.executor, address=args.address, workers=args.workers, model=args.model, device=args.device,
                             threads=args.threads)  # before loading: without Ray installed, fail at once
    family = family_of(args.instruction)
    direction = Direction.load(args.direction) if args.direction else None
    model = load_model(args.model, device=args.device)
    n = int(model.cfg.n_layers)
    if direction is None:
        train = load_pairs(family, args.instruction, "train", kwargs).head(args.n_train or 120)
        direction = compute_direction(model, train, name=args.instruction, progress=False)
    direction.check_compatible(model)
    val = load_pairs(family, args.instruction, "validation", kwargs).head(args.n_val or 40)
    mode = args.mode or ("project" if family == "format" else "add")
    settings = SweepSettings(
        layers=int_list(args.layers) or default_layers(n, args.layer_stride), strengths=float_list(args.strengths) or [1.0],
        max_new_tokens=args.max_new_tokens or 48, batch_size=args.batch_size or 20, unit_size=args.batch_size or 20,
        max_ppl_ratio=args.max_ppl_ratio, max_degeneration=args.max_degeneration, seed=args.seed,
    )
    out = Path(args.out)
    start = time.time()
    result = run_sweep(model, [SweepTarget(args.instruction, val, direction, mode)], settings, out / "sweep.jsonl", say=print,
                       executor=executor)
    sel: dict[str, Any] | None = result.selection.get(args.instruction)
    replace(direction, extra={**direction.extra, "selection": sel}).save(out / "direction.safetensors")
    write_json_atomic(out / "selection.json", result.selection)
    write_json_atomic(out / "heatmap.json", heatmap_records(result))
    write_table(out / "sweep", [*result.baselines.values(), *result.records], SWEEP_COLUMNS, f"sweep {args.instruction}")
    print((out / "sweep.md").read_text(encoding="utf-8"))
    print(f"selected: {sel if sel else 'none (no layer passed the quality rule)'}; "
          f"{result.units_run} units run, {result.units_skipped} resumed, {time.time() - start:.0f} s; wrote {out}/")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``reproduce`` and ``sweep`` subcommands (each sets ``func(args) -> int``)."""
    from .reproduce import EXPERIMENTS

    r = subparsers.add_parser("reproduce", help="run one of the paper's experiments end to end and write tables")
    r.add_argument("experiment", choices=EXPERIMENTS)
    _common(r)
    r.add_argument("--quick", action="store_true", help="small sizes (SmolLM2 format: about 15 min on 2 CPU cores)")
    r.add_argument("--eval-data", help="evaluate on this IFEval / paired jsonl instead of the built-in test split")
    r.add_argument("--out", default="results", help="results folder (default results/): writes <out>/<model>/<experiment>/")
    r.add_argument("--publish", help="also write one Markdown page to <PUBLISH>/<model>/<experiment>.md (e.g. docs/results)")
    r.add_argument("--instruction", action="append", help="instruction id (repeat; format, composition, transfer)")
    r.add_argument("--targets", help="sentence targets N for length/composition, e.g. 1,3")
    r.add_argument("--word", action="append", help="keyword (repeat; keywords experiment)")
    r.add_argument("--n-eval", type=int, help="evaluation prompts per instruction")
    r.add_argument("--reference-model", help="model that scores perplexity (default: the unsteered model itself)")
    r.add_argument("--source-model", help="transfer: model the directions are computed on (same d_model and layers)")
    r.set_defaults(func=cmd_reproduce)

    s = subparsers.add_parser("sweep", help="layer x strength sweep of one instruction on validation prompts (resumable)")
    s.add_argument("--instruction", required=True, help="built-in instruction id")
    s.add_argument("--kwargs", help="JSON filter on the instruction's kwargs, e.g. '{\"keywords\": [\"ocean\"]}'")
    s.add_argument("--direction", help="direction file (default: compute from train pairs)")
    _common(s)
    s.add_argument("--out", required=True, help="folder for sweep.jsonl (resumable), tables, selection and direction")
    s.set_defaults(func=cmd_sweep)
