"""Drivers shared by ``workbench analyze`` and ``workbench figures``: pairs, a direction, each analysis, its files.

The direction is computed on the instruction's train pairs; attribution, attention, patching and
necessity/sufficiency run on validation pairs (other queries); reliability resamples the train pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data import load_pairs
from ..data.builtin import family_of
from ..directions import Direction, compute_direction
from ..errors import WorkbenchError
from ..hooks import check_layer
from ..io import write_json_atomic
from ..models.loading import model_info

ANALYSES = ("attribution", "attention", "patching", "necessity", "reliability", "monitor")


@dataclass(frozen=True)
class AnalysisSizes:
    """How much each analysis computes (the defaults made the committed SmolLM2 figures)."""

    n_train: int = 64  # train pairs for the direction (and the reliability resampling)
    n_pairs: int = 16  # validation pairs for attribution and attention
    n_patch_pairs: int = 4  # validation pairs for patching and necessity/sufficiency
    layer_stride: int = 3  # patching and necessity every this many layers (and always the last)
    n_positions: int = 12  # patching: positions from the end
    depth: float = 0.7  # default attribution layer, as a fraction of the depth
    n_monitor: int = 40  # monitor: validation pairs (their prompts with and without the instruction)
    monitor_tokens: int = 64  # monitor: new tokens of each unsteered response checked for compliance


QUICK_SIZES = AnalysisSizes(n_train=16, n_pairs=4, n_patch_pairs=2, layer_stride=6, n_positions=6, n_monitor=8,
                            monitor_tokens=16)


def default_layer(model: Any, sizes: AnalysisSizes) -> int:
    return int(round(sizes.depth * (int(model.cfg.n_layers) - 1)))


def strided_layers(model: Any, stride: int) -> list[int]:
    n = int(model.cfg.n_layers)
    if stride < 1:
        raise WorkbenchError(f"layer stride must be >= 1, got {stride}")
    return sorted(set(range(0, n, stride)) | {n - 1})


def short_name(instruction: str) -> str:
    return instruction.split(":")[-1]


def analysis_pairs(instruction: str, split: str, n: int) -> Any:
    """The first ``n`` built-in pairs of ``instruction`` in ``split``."""
    pairs = load_pairs(family_of(instruction), instruction, split=split)
    pairs.require_nonempty(f"pairs of {instruction!r} ({split})")
    return pairs.head(n)


def run_analysis(
    name: str,
    model: Any,
    instruction: str,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
    sizes: AnalysisSizes = AnalysisSizes(),
    direction: Direction | None = None,
    target: str | None = None,
    progress: bool = True,
    response_tokens: int = 0,
) -> tuple[Any, Any, dict[str, Any]]:
    """Run one analysis: ``(result, figure, record)``; ``record`` is a JSON-ready summary with the exact settings.

    >>> result, fig, record = run_analysis("attribution", model, "detectable_format:title")
    """
    from . import attention, attribution, monitor, necessity, patching, reliability

    if name not in ANALYSES:
        raise WorkbenchError(f"unknown analysis {name!r}; choose one of {', '.join(ANALYSES)}")
    layer = default_layer(model, sizes) if layer is None else check_layer(model, layer)
    record: dict[str, Any] = dict(analysis=name, model=model_info(model).name, instruction=instruction, sizes=asdict(sizes))
    needs_direction = name in ("attribution", "necessity", "monitor")
    if needs_direction and direction is None:
        train = analysis_pairs(instruction, "train", sizes.n_train)
        direction = compute_direction(model, train, name=instruction, progress=progress)
        record["direction"] = f"{len(train)} train pairs"
    elif needs_direction:
        record["direction"] = f"given ({direction.name}, {direction.n_pairs} pairs)"
    if name == "attribution":
        pairs = analysis_pairs(instruction, "validation", sizes.n_pairs)
        res = attribution.direct_attribution(model, pairs, direction, layer, progress=progress)
        record.update(layer=layer, n_pairs=len(pairs), max_relative_error=res.max_relative_error,
                      total_gap=float(res.mean_diff("total")), embed_gap=float(res.mean_diff("embed")),
                      heads_gap=float(res.mean_diff("heads").sum()), mlp_gap=float(res.mean_diff("mlp").sum()),
                      attn_bias_gap=float(res.mean_diff("attn_bias").sum()),
                      top=res.top_components(12))
        return res, attribution.attribution_figure(res), record
    if name == "attention":
        pairs = analysis_pairs(instruction, "validation", sizes.n_pairs)
        res = attention.instruction_attention(model, pairs, layers, progress=progress, response_tokens=response_tokens)
        record.update(n_pairs=len(pairs), span_share=float(res.span_fraction.mean()), top=res.top_heads(12))
        if response_tokens:
            record.update(response_tokens=response_tokens, top_response=res.top_heads(12, source="response"))
        return res, attention.attention_figure(res), record
    if name == "monitor":
        pairs = analysis_pairs(instruction, "validation", sizes.n_monitor)
        res = monitor.compliance_monitor(model, direction, pairs, layers, max_new_tokens=sizes.monitor_tokens, progress=progress)
        record.update(n_pairs=len(res.followed), n_followed=int(sum(res.followed)), max_new_tokens=sizes.monitor_tokens,
                      best_presence_layer=res.best_layer("presence"), best_compliance_layer=res.best_layer("compliance"),
                      per_layer=res.summary())
        return res, monitor.monitor_figure(res), record
    grid = list(layers) if layers is not None else strided_layers(model, sizes.layer_stride)
    if name == "patching":
        pairs = analysis_pairs(instruction, "validation", sizes.n_patch_pairs)
        res = patching.activation_patching(model, pairs, grid, sizes.n_positions, target, progress=progress)
        record.update(n_pairs=len(pairs), layers=list(res.layers), metric=res.metric, labels=list(res.labels),
                      labels_with=list(res.labels_with),
                      mean=[[round(float(v), 4) for v in row] for row in res.mean])
        return res, patching.patching_figure(res), record
    if name == "necessity":
        pairs = analysis_pairs(instruction, "validation", sizes.n_patch_pairs)
        res = necessity.necessity_sufficiency(model, pairs, direction, grid, target, progress=progress)
        record.update(n_pairs=len(pairs), metric=res.metric, per_layer=res.summary())
        return res, necessity.necessity_figure(res), record
    train = analysis_pairs(instruction, "train", sizes.n_train)
    res = reliability.direction_reliability(model, train, layers, progress=progress)
    record.update(n_pairs=len(train), per_layer=res.summary(), sizes_curve_layer=layer,
                  by_size={int(s): float(res.by_size[res.layers.index(layer), i].mean()) for i, s in enumerate(res.sizes)}
                  if layer in res.layers else {})
    return res, reliability.reliability_figure(res, layer if layer in res.layers else None), record


def analysis_figures(
    model: Any, instruction: str, sizes: AnalysisSizes = AnalysisSizes(), names: Sequence[str] = ANALYSES,
    direction: Direction | None = None, say: Callable[[str], None] = print, progress: bool = True,
) -> list[tuple[Any, str, dict[str, Any]]]:
    """Every analysis for ``instruction``: ``[(figure, file stem, record)]`` (stems ``analysis_<name>_<instruction>``)."""
    out = []
    how = None
    if direction is None and any(n in ("attribution", "necessity") for n in names):
        train = analysis_pairs(instruction, "train", sizes.n_train)
        direction = compute_direction(model, train, name=instruction, progress=progress)
        how = f"{len(train)} train pairs"  # as run_analysis words it when it computes the direction itself
    for name in names:
        say(f"Analysis '{name}' of {instruction} ...")
        _, fig, record = run_analysis(name, model, instruction, sizes=sizes, direction=direction, progress=progress)
        if how and "direction" in record:
            record["direction"] = how
        out.append((fig, f"analysis_{name}_{short_name(instruction)}", record))
    return out


def write_outputs(items: Sequence[tuple[Any, str, dict[str, Any]]], out_dir: str | Path, images: bool) -> list[Path]:
    """Write each figure as HTML (plotly.js beside it), its record as JSON, and a PNG when ``images``."""
    from ..figures.export import save_figure, save_images

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fig, stem, record in items:
        written.append(save_figure(fig, out / f"{stem}.html", plotlyjs="directory"))
        write_json_atomic(out / f"{stem}.json", record)
        written.append(out / f"{stem}.json")
    if images:
        written += save_images([(fig, out / f"{stem}.png") for fig, stem, _ in items])
    return written
