"""``reproduce transfer`` through maps: fit (or load) maps between the two residual streams, transfer the source's
directions, and compare on the target model: unsteered, transferred, its own direction (the reference) and a random
direction of the same norm at the transferred direction's cell (the null)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..data import PairDataset, load_pairs
from ..errors import LayerError, ShapeError, WorkbenchError
from ..experiments.conditions import CONDITIONS
from ..models import model_info
from ..names import safe_name
from .direct import random_like, transfer_cosines, transfer_direction
from .maps import KINDS, MIN_PROMPTS, ResidualMap, check_fit_texts, load_maps, save_maps
from .match import LayerMatch, match_from_activations

STEERED = tuple(c for c in CONDITIONS if c.endswith("_steered"))
MAP_PROMPTS = {True: 120, False: 480}  # fit texts for --quick / full runs (the check used 480)
PAIRING = "target"  # default: for each target layer of the sweep grid, the source layer whose map fits best (held-out R2)
COLUMNS = ["instruction_id", "source", "direction", "condition", "rule", "n", "accuracy", "accuracy_p", "loose_accuracy", "perplexity",
           "degeneration", "layer", "strength", "mode", "map"]
COSINE_COLUMNS = ["instruction_id", "target_layer", "source_layer", "cos_transferred_own", "cos_random_own", "norm_transferred",
                  "norm_own", "map_r2", "map_centred_cosine", "n_fit", "n_heldout"]
MATCH_COLUMNS = ["source_layer", "target_layer", "r2", "cosine", "cka", "n_fit", "n_heldout"]


def check_map_option(value: Any, map_prompts: Any = None) -> None:
    """``--map`` is a kind or an existing file, ``--map-prompts`` a count of at least :data:`MIN_PROMPTS` (one line each)."""
    if value is not None and value not in KINDS and not Path(str(value)).is_file():
        raise WorkbenchError(f"--map {value!r}: not one of {', '.join(KINDS)} and no such map file")
    if map_prompts is not None and (isinstance(map_prompts, bool) or not isinstance(map_prompts, int) or map_prompts < MIN_PROMPTS):
        raise WorkbenchError(f"--map-prompts: a map needs at least {MIN_PROMPTS} fit texts, got {map_prompts!r}")
    if map_prompts is not None and value is not None and value not in KINDS:
        raise WorkbenchError("--map-prompts sets how many texts a map is fitted on; a map file is already fitted")


def check_identity(kind: Any, source: Any, target: Any, layers: Sequence[int]) -> None:
    """``--map identity`` needs equal widths and the target's layers on the source too (one line, before any work)."""
    if kind != "identity":
        return
    s_name, t_name = model_info(source).name, model_info(target).name
    if int(source.cfg.d_model) != int(target.cfg.d_model):
        raise ShapeError(f"--map identity needs equal widths; {s_name} has d_model {source.cfg.d_model}, {t_name} {target.cfg.d_model} "
                         "(use --map affine or orthogonal)")
    deep = [t for t in layers if t >= int(source.cfg.n_layers)]
    if deep:
        raise LayerError(f"--map identity maps each layer to itself; {s_name} has no layer {deep[0]} (layers 0..{int(source.cfg.n_layers) - 1})")


def needs_maps(cfg: Any, source: Any, target: Any) -> bool:
    """Whether this transfer goes through maps: ``--map`` given, or the two models differ in shape."""
    same = (int(source.cfg.d_model), int(source.cfg.n_layers)) == (int(target.cfg.d_model), int(target.cfg.n_layers))
    return getattr(cfg, "map", None) is not None or not same


def fit_texts(ids: Sequence[str], exclude: PairDataset, n: int, seed: int) -> PairDataset:
    """Up to ``n`` train rows of built-in format instructions other than ``ids`` (one row per distinct prompt, seeded
    order), none of whose prompts is a prompt of ``exclude`` (the transferred instructions' pairs, keywords' included)."""
    rows = [r for r in load_pairs("format", split="train") if r.instruction_id not in set(ids)]
    seen = set()
    rows = [r for r in rows if not (r.prompt in seen or seen.add(r.prompt))]
    random.Random(seed).shuffle(rows)
    picked = PairDataset(rows[:n], name="transfer-fit-texts")
    check_fit_texts(picked.prompts(), exclude)  # the leak and too few texts: one line
    return picked


def _maps(run: Any, src_run: Any, source: Any, texts: PairDataset | None) -> tuple[list[ResidualMap], LayerMatch | None]:
    """The maps (one per target layer), fitted on ``texts`` or loaded from ``--map FILE``, and the layer-match table."""
    cfg = run.config
    s_name, t_name = model_info(source).name, model_info(run.model).name
    s_n, t_n = int(source.cfg.n_layers), int(run.model.cfg.n_layers)
    kind = cfg.map or "affine"
    if kind not in KINDS:
        maps = load_maps(kind, source, run.model)
        return [m for m in maps if m.target_layer in (cfg.layers or [])] or maps, None
    prompts = texts.prompts()  # type: ignore[union-attr]
    xs, ys = src_run._acts(prompts), run._acts(prompts)
    t_layers = list(cfg.layers or range(t_n))
    s_layers = t_layers if kind == "identity" else list(range(s_n))
    match = match_from_activations(xs[:, s_layers], ys[:, t_layers], source=(s_name, s_layers, s_n), target=(t_name, t_layers, t_n),
                                   kind=kind, seed=cfg.seed,
                                   extra={"fit_texts": f"{len(prompts)} train prompts of other format instructions"})
    pairs = [(t, t) for t in t_layers] if kind == "identity" else match.pairs(PAIRING)
    return [match.maps[p] for p in pairs], match


def exp_mapped_transfer(run: Any, source: Any) -> dict[str, Any]:
    """Transfer each instruction's source direction through maps and report the four directions' rows on the target."""
    from ..experiments.run import Run, attach_p_values
    from ..experiments.targets import SweepTarget, cell_meta, cell_specs, run_targets

    cfg = run.config
    check_map_option(cfg.map, cfg.map_prompts)
    s_name = model_info(source).name
    items = run_targets(cfg, run.covers, "transfer")  # format instructions and keyword inclusions (--word, add mode)
    ids = [name for name, *_ in items]
    src_run = Run(config=cfg, model=source, reference=source, out_dir=run.out_dir, memo=run.memo, say=run.say, used_rows=run.used_rows)
    trains = {name: run.builtin(fam, iid, "train", cfg.n_train or 0, kw) for name, fam, iid, kw, _ in items}
    vals = {name: run.builtin(fam, iid, "validation", cfg.n_val or 0, kw) for name, fam, iid, kw, _ in items}
    evals = {name: run.eval_rows(fam, iid, kw, name=name) for name, fam, iid, kw, _ in items}  # bad data fails before any activation
    modes = {name: mode for name, *_, mode in items}
    check_identity(cfg.map, source, run.model, cfg.layers or [])
    texts = None
    format_ids = [iid for _, fam, iid, _, _ in items if fam == "format"]
    if (cfg.map or "affine") in KINDS:
        exclude = PairDataset([r for _, fam, iid, kw, _ in items for r in load_pairs(fam, iid, kwargs=kw)], name="transferred")
        texts = fit_texts(format_ids, exclude, cfg.map_prompts or MAP_PROMPTS[bool(cfg.quick)], cfg.seed)
        run.used_rows.extend(texts)
    maps, match = _maps(run, src_run, source, texts)
    kind = maps[0].kind
    layers = sorted(m.target_layer for m in maps)
    if set(layers) != set(cfg.layers or []):
        run.notes.append(f"the maps reach target layers {layers}; the sweep uses those")
        run.config = cfg = replace(cfg, layers=layers)
    if texts is not None:
        pairing = "the same layer" if kind == "identity" else "for each target layer, the source layer with the best held-out R2"
        others = (f"other than {', '.join(format_ids)} (their pairs excluded)" if format_ids
                  else "(no keyword prompt among them, so none of the transferred pairs)")
        run.notes.append(f"transfer through {kind} maps {s_name} -> {model_info(run.model).name}, fitted on the last token of "
                         f"{len(texts)} train prompts of format instructions {others}; pairing: {pairing}")
    else:
        run.notes.append(f"transfer through the maps of {cfg.map} (target layers {layers})")
    save_maps(run.out_dir / "maps.safetensors", maps)
    targets, own, null = [], {}, {}
    for iid in ids:
        mode = modes[iid]
        train = trains[iid]
        d_src = src_run.direction(iid, train)
        pair_acts = (src_run._acts(train.prompts()), src_run._acts(train.prompts_without_instruction()))
        d_tr = transfer_direction(d_src, maps, pair_activations=pair_acts, name=iid)
        d_own = run.direction(f"{iid}.own", train)
        without_b = run._acts(train.prompts_without_instruction())[:, list(d_tr.layers)]
        null[iid] = random_like(d_tr, seed=cfg.seed, without_acts=without_b)
        own[iid] = d_own
        run.directions[iid] = d_tr
        run.directions[f"{iid}.random"] = null[iid]
        d_src.save(run.out_dir / "directions" / "source" / f"{safe_name(iid)}.safetensors")
        targets += [SweepTarget(iid, vals[iid], d_tr, mode), SweepTarget(f"{iid}.own", vals[iid], d_own, mode)]
    sweep = run.sweep(targets)
    plans = []
    for iid in ids:
        plan = []
        for label, d, name, conds in (("transferred", run.directions[iid], iid, CONDITIONS), ("own", own[iid], f"{iid}.own", STEERED),
                                      ("random", null[iid], iid, STEERED)):  # the null steers at the transferred direction's cell
            ours, paper = sweep.selection.get(name), getattr(sweep, "paper_selection", {}).get(name)
            plan.append((label, d, ours, conds, "both" if _same_cell(ours, paper) else "workbench"))
            if paper is not None and not _same_cell(ours, paper):  # the paper's perplexity-only pick beside ours
                plan.append((label, d, paper, STEERED, "paper"))
        plans.append((iid, plan))
    run.prefetch_conditions([(evals[iid], cell_specs(d, sel, modes[iid]), conds) for iid, plan in plans for _, d, sel, conds, _ in plan])
    table: list[dict[str, Any]] = []
    for iid, plan in plans:
        run.say(f"  {iid}: transferred / own / random directions on {len(evals[iid])} evaluation prompts")
        for label, d, sel, conds, rule in plan:
            meta = {"instruction_id": iid, "source": s_name, "direction": label, "rule": rule,
                    "map": kind if label == "transferred" else None, **cell_meta(sel, modes[iid])}
            part = run.conditions_table(evals[iid], cell_specs(d, sel, modes[iid]), meta, conds)
            for r in part:
                if r["condition"] not in STEERED:
                    r["direction"], r["map"], r["rule"] = "none", None, None
            table += part
    attach_p_values(table, ["instruction_id"])
    cosines = cosine_rows(run, ids, own, null, maps)
    extra = {"transfer_cosine": (cosines, COSINE_COLUMNS)}
    if match is not None:
        extra["layer_match"] = (match.rows(), MATCH_COLUMNS)
    _transfer_figures(run, match, cosines, table)
    return {"table": table, "columns": COLUMNS, "sweep": sweep, "selection": sweep.selection, "extra_tables": extra}




def _same_cell(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and (a["layer"], a["coeff"]) == (b["layer"], b["coeff"])


def cosine_rows(run: Any, ids: Sequence[str], own: dict[str, Any], null: dict[str, Any], maps: Sequence[ResidualMap]) -> list[dict[str, Any]]:
    """Per instruction and target layer: cosine of the transferred (and of the random) direction with the target's own."""
    return [row for iid in ids for row in transfer_cosines(run.directions[iid], own[iid], null[iid])]


def _transfer_figures(run: Any, match: LayerMatch | None, cosines: list[dict[str, Any]], table: list[dict[str, Any]]) -> None:
    """The layer-match heatmap, the cosine by layer and the bars of the four directions (a failure is only a note)."""
    try:
        from ..figures import save_figure
        from .figures import cosine_figure, directions_figure
    except Exception as exc:  # noqa: BLE001  (figures are optional)
        run.notes.append(f"transfer figures not written: {exc}")
        return
    jobs = [("transfer_cosine.html", lambda: cosine_figure(cosines)), ("transfer_conditions.html", lambda: directions_figure(table))]
    if match is not None:
        jobs.append(("layer_match.html", match.figure))
    for name, build in jobs:
        try:
            save_figure(build(), run.out_dir / "figures" / name, plotlyjs="directory")
        except Exception as exc:  # noqa: BLE001  (a figure must never sink a finished run)
            run.notes.append(f"figure {name} not written: {exc}")
