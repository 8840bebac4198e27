"""``workbench reproduce`` and ``workbench sweep``: registered on the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..arguments import float_list, int_list, text_arg
from ..cli_types import folder_arg, positive_int
from ..errors import WorkbenchError
from .sweep import DEFAULT_MAX_DEGENERATION_GAIN


def _ratio(text: str) -> float | None:
    """A float, or None for 'none' / 'off' (a rule switched off)."""
    from ..arguments import finite_float

    return None if text.lower() in ("none", "off") else finite_float(text)  # 'inf' would write Infinity to config.json


def _common(p: argparse.ArgumentParser) -> None:
    from ..models.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, local folder or hub id (default {DEFAULT_MODEL}); "
                   "reproduce: 'all' runs the built-in real models in turn and writes a comparison")
    from ..cli_types import device_arg

    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--mode", choices=("project", "add"), help="steering mode (default: project for format, add for length/keywords)")
    p.add_argument("--layers", help="layers to sweep, e.g. 16,20,24-26 (default: every other layer from n_layers//5)")
    from ..arguments import RecordGiven

    p.add_argument("--layer-stride", type=positive_int, default=2, action=RecordGiven, help="stride of the default layer grid (default 2)")
    p.add_argument("--strengths", help="comma-separated strengths (add: multiples of the direction's norm; project: of the target)")
    p.add_argument("--n-train", type=positive_int, help="training pairs per direction")
    p.add_argument("--n-val", type=positive_int, help="validation prompts per sweep target")
    p.add_argument("--max-new-tokens", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--max-ppl-ratio", type=_ratio, default=2.0,
                   help="quality rule: steered perplexity <= this x unsteered (default 2.0; 'none' turns it off)")
    p.add_argument("--max-degeneration-gain", type=_ratio, default=DEFAULT_MAX_DEGENERATION_GAIN,
                   help=f"quality rule: steered mean degeneration (share of repeated 3-grams) <= the unsteered responses' "
                        f"+ this (default {DEFAULT_MAX_DEGENERATION_GAIN:g}; 'none' turns it off; docs/reproduce.md)")
    p.add_argument("--rule", choices=("workbench", "paper"), default="workbench",
                   help="selection rule: workbench (default: the perplexity and repetition limits, and validation accuracy "
                        "above no steering) or paper (the perplexity limit alone); the paper rule's cell is reported beside")
    p.add_argument("--max-degeneration", type=_ratio, default=None,
                   help="quality rule: also cap steered mean degeneration at this absolute share (default: no cap)")
    p.add_argument("--max-batch", type=positive_int, help="rows per packed decode batch: sweep units and conditions "
                   "share batches, each row steered on its own (default: chosen from the device, 80 on a CPU)")
    p.add_argument("--no-pack", action="store_true", help="decode sweep units and conditions one at a time (the pre-packing path)")
    p.add_argument("--search", choices=("full", "fast"), default="full",
                   help="full: decode every layer x strength of the grid (the paper's); fast: score every cell with one "
                        "forward pass per validation prompt, then decode only the best --search-keep layers")
    p.add_argument("--search-keep", type=positive_int, default=3, action=RecordGiven, help="--search fast: layers decoded per target (default 3)")
    from ..arguments import seed_arg

    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default on CPU: 1, for the same numbers on any machine and no oversubscription)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where sweep units run: local (this process, default) or ray (Ray actors; docs/ray.md)")
    p.add_argument("--address", help="ray: join the Ray cluster at this address (default: start a local one)")
    p.add_argument("--workers", type=positive_int, help="ray: number of actors (default: as many as the cluster's CPUs or GPUs fit)")


def _words(words: list[str] | None, words_file: str | None) -> list[str] | None:
    """``--word`` values and the lines of ``--words-file``, in order, each checked (no empty words)."""
    out = list(words or [])
    if words_file:
        path = Path(words_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkbenchError(f"--words-file {path}: cannot read ({exc})") from None
        out += [line.strip() for line in lines if line.strip()]
        if not any(line.strip() for line in lines):
            raise WorkbenchError(f"--words-file {path}: no words in the file")
    bad = [w for w in out if not w.strip()]
    if bad:
        raise WorkbenchError("--word: a keyword must be a non-empty word or phrase")
    return out or None


def _names(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated list of names (``mean,pca``); an empty entry is an error."""
    if text is None:
        return None
    names = [x.strip() for x in text.split(",")]
    if not all(names):
        raise WorkbenchError(f"{flag}: an empty name in {text!r}")
    return names


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run one experiment of the paper and write its tables."""
    from .reproduce import ReproduceConfig, run_reproduce

    cfg = ReproduceConfig(
        experiment=args.experiment, model=args.model, quick=args.quick, eval_data=args.eval_data, device=args.device,
        out=args.out, seed=args.seed, mode=args.mode, instructions=args.instruction, targets=int_list(args.targets, "--targets"),
        words=_words(args.word, args.words_file), include_only=args.include_only, exclude_only=args.exclude_only,
        methods=_names(args.methods, "--methods"), sizes=int_list(args.sizes, "--sizes"),
        layers=int_list(args.layers), layer_stride=args.layer_stride, strengths=float_list(args.strengths),
        n_train=args.n_train, n_val=args.n_val, n_eval=args.n_eval, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, max_ppl_ratio=args.max_ppl_ratio, max_degeneration=args.max_degeneration,
        max_degeneration_gain=args.max_degeneration_gain, rule=args.rule,
        reference_model=args.reference_model,
        source_model=args.source_model, map=args.map, map_prompts=args.map_prompts, threads=args.threads, publish=args.publish,
        executor=args.executor, address=args.address, workers=args.workers, fields=args.fields, convention=args.convention,
        max_batch=args.max_batch, pack=not args.no_pack, search=args.search, search_keep=args.search_keep,
    )
    if args.fields and not args.eval_data:
        raise WorkbenchError("--fields maps the fields of an --eval-data file; pass --eval-data too")
    if args.model == "all":  # the built-in real models in turn, then a comparison table
        from .across import run_across_models

        out = run_across_models(cfg)
        print((out / "comparison.md").read_text(encoding="utf-8"))
        return 0
    out = run_reproduce(cfg)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the paired comparison of two finished runs."""
    from .compare import compare_runs, render

    print(render(compare_runs(args.run_a, args.run_b), args.run_a, args.run_b))
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
    from .sweep import (SweepSettings, SweepTarget, default_layers, describe_selection, heatmap_records, rule_settings,
                        run_sweep)

    import torch

    from .reproduce import cpu_threads

    from .lock import hold_run_folder

    from ..cli_types import layers_arg, parse_kwargs

    family = family_of(args.instruction)  # bad input fails before the run folder is made or the model loads
    kwargs = parse_kwargs(args.kwargs)
    if args.direction and args.n_train:
        raise WorkbenchError("--n-train sizes a direction computed from train pairs; --direction FILE gives one: drop one of them")
    from ..models.loading import layer_count

    layer_count(args.model)  # an unknown model name fails here, before the run folder and its lock are made
    layers, strengths = layers_arg(args.layers, args.model), float_list(args.strengths)
    direction = Direction.load(args.direction) if args.direction else None
    _lock = hold_run_folder(args.out)  # noqa: F841  one writer per run folder, before any work; freed on return
    from .store import UnitStore

    UnitStore(Path(args.out) / "sweep.jsonl").load()  # a bad line of an earlier run fails now, not after the direction
    torch.set_num_threads(cpu_threads(args.threads, args.device))
    executor = make_executor(args.executor, address=args.address, workers=args.workers, model=args.model, device=args.device,
                             threads=args.threads)  # before loading: without Ray installed, fail at once
    model = load_model(args.model, device=args.device)
    n = int(model.cfg.n_layers)
    if direction is None:
        train = load_pairs(family, args.instruction, "train", kwargs).head(args.n_train or 120)
        direction = compute_direction(model, train, name=args.instruction, progress=False)
    direction.check_compatible(model)
    val = load_pairs(family, args.instruction, "validation", kwargs).head(args.n_val or 40)
    mode = args.mode or ("project" if family == "format" else "add")
    settings = SweepSettings(
        layers=layers or default_layers(n, args.layer_stride), strengths=strengths or [1.0],
        max_new_tokens=args.max_new_tokens or 48, batch_size=args.batch_size or 20, unit_size=args.batch_size or 20,
        max_ppl_ratio=args.max_ppl_ratio, **rule_settings(args.rule, args.max_degeneration, args.max_degeneration_gain), seed=args.seed,
        max_batch=args.max_batch, pack=not args.no_pack, search=args.search, search_keep=args.search_keep,
    )
    out = Path(args.out)
    start = time.time()
    result = run_sweep(model, [SweepTarget(args.instruction, val, direction, mode)], settings, out / "sweep.jsonl", say=print,
                       executor=executor)
    sel: dict[str, Any] | None = result.selection.get(args.instruction)
    replace(direction, extra={**direction.extra, "selection": sel}).save(out / "direction.safetensors")
    write_json_atomic(out / "selection.json", result.selection)
    write_json_atomic(out / "heatmap.json", heatmap_records(result))
    if result.search:
        write_json_atomic(out / "search.json", result.search)
    write_table(out / "sweep", [*result.baselines.values(), *result.records], SWEEP_COLUMNS, f"sweep {args.instruction}")
    print((out / "sweep.md").read_text(encoding="utf-8"))
    paper = result.paper_selection.get(args.instruction)
    for note in result.notes:
        print(note)
    print(f"selected: {describe_selection(sel)}; the paper's perplexity-only rule: {describe_selection(paper)}")
    print(f"selection: {sel if sel else 'none'}; "
          f"{result.units_run} units run, {result.units_skipped} resumed, {time.time() - start:.0f} s; wrote {out}/")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``reproduce`` and ``sweep`` subcommands (each sets ``func(args) -> int``)."""
    from .reproduce import EXPERIMENTS

    r = subparsers.add_parser("reproduce", help="run one of the paper's experiments end to end and write tables")
    r.add_argument("experiment", choices=EXPERIMENTS)
    _common(r)
    r.add_argument("--quick", action="store_true", help="small sizes (SmolLM2 format: about 15 min on 2 CPU cores)")
    r.add_argument("--eval-data", help="evaluate on this IFEval / paired jsonl instead of the built-in test split; "
                   "'ifeval' is IFEval's 541 prompts, shipped with the package (docs/data.md)")
    r.add_argument("--fields", help="for --eval-data files that name fields differently: OURS=THEIRS,... "
                   "(e.g. prompt=original_prompt,prompt_without_instruction=model_output)")
    r.add_argument("--convention", choices=("auto", "eval", "steering"), default="auto",
                   help="how --eval-data's instruction_id_list_for_eval is read: ids to check (eval), the steering "
                        "direction's key with instruction_id_list checked (steering, the paper authors' files), or "
                        "detected (auto, default: steering when some id is not an IFEval id)")
    r.add_argument("--out", type=folder_arg(), default="results", help="results folder (default results/): writes <out>/<model>/<experiment>/")
    r.add_argument("--publish", type=folder_arg("--publish"), help="also write one Markdown page to <PUBLISH>/<model>/<experiment>.md (e.g. docs/results; "
                   "<experiment>-<word>.md for a --word run of an experiment other than keywords)")
    r.add_argument("--instruction", action="append", help="instruction id (repeat; format, composition, transfer)")
    r.add_argument("--targets", help="sentence targets N for length/composition, e.g. 1,3")
    r.add_argument("--word", type=text_arg, action="append",
                   help="keyword or phrase, any (repeat; keywords; estimators, conditional and transfer: its inclusion, add mode)")
    r.add_argument("--words-file", help="keywords experiment: a text file of words or phrases, one per line")
    r.add_argument("--methods", help="estimators experiment: direction estimators to compare, e.g. mean,pca,probe,whitened,random")
    r.add_argument("--sizes", help="estimators experiment: training pairs of the sample-efficiency curve, e.g. 8,16,32,64,120")
    r.add_argument("--include-only", action="store_true", help="keywords experiment: evaluate inclusion only (no exclusion)")
    r.add_argument("--exclude-only", action="store_true", help="keywords experiment: evaluate exclusion only (no inclusion)")
    r.add_argument("--n-eval", type=positive_int, help="evaluation prompts per instruction")
    r.add_argument("--reference-model", help="model that scores perplexity (default: the unsteered model itself)")
    r.add_argument("--source-model", help="transfer: model the directions are computed on (another width needs --map or gets affine maps)")
    r.add_argument("--map", help="transfer: maps between the residual streams: affine, orthogonal, identity or a map file "
                   "(default: none for models of the same shape, else affine)")
    r.add_argument("--map-prompts", type=positive_int, help="transfer: texts the maps are fitted on (default 120 with --quick, else 480)")
    r.set_defaults(func=cmd_reproduce)

    c = subparsers.add_parser("compare", help="two finished reproduce runs side by side, paired by prompt (McNemar)")
    c.add_argument("run_a", help="a results folder <out>/<model>/<experiment>")
    c.add_argument("run_b", help="another run of the same experiment (e.g. another selection rule)")
    c.set_defaults(func=cmd_compare)

    s = subparsers.add_parser("sweep", help="layer x strength sweep of one instruction on validation prompts (resumable)")
    s.add_argument("--instruction", required=True, help="built-in instruction id")
    s.add_argument("--kwargs", help="JSON filter on the instruction's kwargs, e.g. '{\"keywords\": [\"ocean\"]}'")
    s.add_argument("--direction", help="direction file (default: compute from train pairs)")
    _common(s)
    s.add_argument("--out", type=folder_arg(), required=True, help="folder for sweep.jsonl (resumable), tables, selection and direction")
    s.set_defaults(func=cmd_sweep)
