"""Regenerate every analysis figure for one model into a folder: interactive HTML plus a static PNG each.

Layers are chosen as fractions of the model's depth, so the same plan runs on SmolLM2 (30 layers)
and on the 4-layer test model. The sweep and four-condition figures come from a small real run
(:mod:`workbench.figures.steering_runs`); their records are saved next to the figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..data import load_pairs
from ..data.builtin import family_of
from ..errors import WorkbenchError
from ..decoding import generate
from ..io import write_json_atomic
from ..models import load_model, model_info
from ..steering import steer
from ..version import __version__
from .export import check_image_export, save_figure, save_html, save_images
from .inputs import directions_from, instruction_activations
from .logit_lens import logit_lens_figure
from .pca import pca_figure
from .projections import projection_figure
from .similarity import instruction_cosine_figure, layer_cosine_figure
from .steering_runs import run_conditions, run_sweep
from .sweeps import conditions_figure, strength_figure, sweep_heatmap_figure
from .tokens import token_html, token_projection_figure, token_projections

MAIN_INSTRUCTION = "detectable_format:title"
ANALYSIS_INSTRUCTIONS = (
    "detectable_format:title",
    "change_case:english_lowercase",
    "change_case:english_capital",
    "punctuation:no_comma",
    "detectable_format:json_format",
    "detectable_format:number_bullet_lists",
    "detectable_format:multiple_sections",
    "startend:quotation",
)


@dataclass(frozen=True)
class FigurePlan:
    """How much to compute: pairs per instruction, evaluation prompts, sweep cells, tokens per response."""

    n_pairs: int = 32
    instructions: tuple[str, ...] = ANALYSIS_INSTRUCTIONS
    analysis_depth: float = 0.7  # layer for the between-instruction cosine and the PCA
    steer_depth: float = 0.9  # layer for projection steering (26 of SmolLM2's 30, as in the demo)
    sweep_depths: tuple[float, ...] = (0.5, 0.7, 0.9)
    sweep_strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    n_eval: int = 8
    condition_instructions: tuple[str, ...] = ("detectable_format:title", "change_case:english_lowercase")
    max_new_tokens: int = 32
    logit_lens_k: int = 8


FULL = FigurePlan()
QUICK = FigurePlan(
    n_pairs=8, instructions=ANALYSIS_INSTRUCTIONS[:4], sweep_depths=(0.7, 0.9), sweep_strengths=(0.0, 0.5),
    n_eval=4, condition_instructions=("detectable_format:title",), max_new_tokens=16, logit_lens_k=6,
)


def depth_layer(n_layers: int, fraction: float) -> int:
    """The layer at ``fraction`` of the model's depth (0 = first block, 1 = last)."""
    return int(round(fraction * (n_layers - 1)))


def _json_safe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]


def regenerate_figures(
    model_name: str = "smollm2-135m-instruct",
    out_dir: str | Path = "figures",
    quick: bool = False,
    device: str | None = None,
    images: bool = True,
    plan: FigurePlan | None = None,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Compute and write every figure; returns the paths written (HTML, PNG, records JSON)."""
    plan = plan or (QUICK if quick else FULL)
    missing = [i for i in (MAIN_INSTRUCTION, *plan.condition_instructions) if i not in plan.instructions]
    if missing:
        raise WorkbenchError(f"figure plan: instructions {missing} must also be in plan.instructions")
    if images:
        check_image_export()  # fail before the long computation, not after it
    from ..io import check_output_dir

    out = check_output_dir(out_dir, "--out")  # a file there fails now, not after the figures are computed
    start = time.time()
    say(f"Loading {model_name} ...")
    model = load_model(model_name, device=device)
    out.mkdir(parents=True, exist_ok=True)  # after the load: an unknown model leaves no empty folder
    name = model_info(model).name
    n_layers = int(model.cfg.n_layers)
    analysis_layer = depth_layer(n_layers, plan.analysis_depth)
    steer_layer = depth_layer(n_layers, plan.steer_depth)
    figs: list[tuple[Any, str]] = []

    say(f"Activations of {plan.n_pairs} train pairs for {len(plan.instructions)} instructions, all {n_layers} layers ...")
    sets = {iid: load_pairs(family_of(iid), iid, split="train").head(plan.n_pairs) for iid in plan.instructions}
    acts = instruction_activations(model, sets, progress=True)
    dirs = directions_from(model, acts, pair_sets=sets)
    main = dirs[MAIN_INSTRUCTION]
    short = MAIN_INSTRUCTION.split(":")[-1]
    w, wo = acts[MAIN_INSTRUCTION]

    figs.append((projection_figure(main, w, wo), f"01_projections_{short}"))
    figs.append((layer_cosine_figure(main), f"02_layer_cosine_{short}"))
    figs.append((instruction_cosine_figure(dirs, analysis_layer), f"03_instruction_cosine_layer{analysis_layer}"))
    i = main.layers.index(analysis_layer)
    groups = {iid: (a[:, i], b[:, i]) for iid, (a, b) in acts.items()}
    figs.append((pca_figure(groups, layer=analysis_layer, model_name=name), f"04_pca_layer{analysis_layer}"))
    figs.append((logit_lens_figure(model, main, k=plan.logit_lens_k), f"05_logit_lens_{short}"))

    say(f"Per-token projections (layer {analysis_layer}) of an instructed prompt and of a steered response ...")
    evals = load_pairs(family_of(MAIN_INSTRUCTION), MAIN_INSTRUCTION, split="validation").head(plan.n_eval)
    row = evals[0]
    instructed = generate(model, [row.prompt], max_new_tokens=plan.max_new_tokens, return_tokens=True)[0]
    with steer(model, main, layer=steer_layer, mode="project"):
        steered = generate(model, [row.prompt_without_instruction], max_new_tokens=plan.max_new_tokens, return_tokens=True)[0]
    tp_instr = token_projections(model, main, row.prompt, instructed, layer=analysis_layer)
    tp_steer = token_projections(model, main, row.prompt_without_instruction, steered, layer=analysis_layer)
    figs.append((token_projection_figure(tp_instr), f"06_token_projections_{short}"))
    page = (
        f"<h3>Instruction in the prompt, unsteered response</h3>{token_html(tp_instr)}"
        f"<h3>No instruction, response steered at layer {steer_layer} (project mode); projections read unsteered</h3>"
        f"{token_html(tp_steer)}"
    )
    token_page = save_html(page, out / f"06_token_projections_{short}_tokens.html", title="per-token projections")

    sweep_layers = sorted({depth_layer(n_layers, f) for f in plan.sweep_depths})
    say(f"Sweep: layers {sweep_layers} x strengths {list(plan.sweep_strengths)} on {len(evals)} validation prompts ...")
    sweep = run_sweep(
        model, main, evals, sweep_layers, plan.sweep_strengths, max_new_tokens=plan.max_new_tokens, say=say,
    )
    label = "strength (multiples of the direction's norm at that layer, add mode)"
    how = f"{name}: {len(evals)} validation prompts without the instruction, {plan.max_new_tokens} new tokens, greedy"
    figs.append((sweep_heatmap_figure(sweep, coeff_label=label, subtitle=how), f"07_sweep_accuracy_{short}"))
    figs.append((
        strength_figure(sweep, layer=max(sweep_layers), coeff_label=label, subtitle=how + "; perplexity under the unsteered model"),
        f"07_strength_{short}_layer{max(sweep_layers)}",
    ))

    say(f"Four conditions at layer {steer_layer} (project mode) ...")
    conditions: list[dict[str, Any]] = []
    for iid in plan.condition_instructions:
        rows = load_pairs(family_of(iid), iid, split="validation").head(plan.n_eval)
        conditions += run_conditions(model, dirs[iid], rows, steer_layer, max_new_tokens=plan.max_new_tokens, say=say)
    how = f"{name}: {plan.n_eval} validation prompts each, project-mode steering at layer {steer_layer}, {plan.max_new_tokens} new tokens"
    figs.append((conditions_figure(conditions, subtitle=how), "08_conditions"))

    from ..analysis.run import QUICK_SIZES, AnalysisSizes, analysis_figures  # where the instruction lives (#14)

    small = quick or plan.n_pairs <= QUICK.n_pairs  # a plan no larger than QUICK gets the quick analysis sizes too
    analyses = analysis_figures(model, MAIN_INSTRUCTION, QUICK_SIZES if small else AnalysisSizes(), say=say, progress=False)
    figs += [(fig, stem) for fig, stem, _ in analyses]

    meta = dict(model=name, workbench_version=__version__, plan=asdict(plan), quick=quick)
    written: list[Path] = [save_figure(fig, out / f"{stem}.html", plotlyjs="directory") for fig, stem in figs]
    written += [token_page, out / "plotly.min.js"]
    for _, stem, record in analyses:
        write_json_atomic(out / f"{stem}.json", record)
        written.append(out / f"{stem}.json")
    for fname, recs in (("sweep_records.json", sweep), ("condition_records.json", conditions)):
        write_json_atomic(out / fname, {**meta, "records": _json_safe(recs)})
        written.append(out / fname)
    if images:
        say(f"Static images of {len(figs)} figures ...")
        written += save_images([(fig, out / f"{stem}.png") for fig, stem in figs])
    say(f"Wrote {len(written)} files to {out}/ in {time.time() - start:.0f} s.")
    return written


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``sweep_records.json`` / ``condition_records.json`` file (None perplexity read as NaN)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    recs = data["records"] if isinstance(data, dict) else data
    return [{k: (math.nan if k == "perplexity" and v is None else v) for k, v in r.items()} for r in recs]
