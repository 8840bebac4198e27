"""Run configuration: the experiments, their full and --quick presets, and small shared rules (the default layer
grid, the repetition rule's default, torch threads)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from ..errors import WorkbenchError
from ..models import DEFAULT_MODEL

EXPERIMENTS: tuple[str, ...] = ("format", "length", "keywords", "composition", "transfer", "estimators", "conditional")
LENGTH_ID = "length_constraints:number_sentences"
TITLE_ID = "detectable_format:title"

# Selection rule (docs/reproduce.md, "Why a relative repetition limit"): steered validation responses may repeat at
# most this much more of their 3-grams than the unsteered responses of the same condition and length. Measured on
# SmolLM2-135M: unsteered responses repeat 0.02 of their 3-grams at 48 new tokens and 0.19 at 128, so a fixed cap
# that fits one length rejects the paper's settings at the other.
DEFAULT_MAX_DEGENERATION_GAIN = 0.25


def default_layers(n_layers: int, stride: int = 2, start: int | None = None) -> list[int]:
    """Every ``stride``-th layer from ``n_layers // 5`` (the paper's range), up to the last layer."""
    if stride < 1:
        raise WorkbenchError(f"layer stride must be >= 1, got {stride}")
    first = n_layers // 5 if start is None else start
    return list(range(first, n_layers, stride))


# Full runs follow the paper's protocol on the built-in data. --quick runs a 3-layer grid on 10 validation prompts but
# evaluates on the whole 40-query test split (95% intervals at most +-15 points); lower strengths are in the grids so
# that the repetition rule can pick a milder setting. `reproduce format --quick` on SmolLM2-135M: about 13 min on a
# busy 2-core CPU.
PRESETS: dict[str, dict[bool, dict[str, Any]]] = {
    "format": {
        False: dict(instructions=["change_case:english_lowercase", "change_case:english_capital", "punctuation:no_comma",
                                  "detectable_format:json_format", TITLE_ID, "detectable_format:number_bullet_lists",
                                  "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
                                  "detectable_format:constrained_response", "startend:quotation", "startend:end_checker"],
                    n_train=120, n_val=40, n_eval=40, max_new_tokens=128, strengths=[1.0]),
        True: dict(instructions=[TITLE_ID, "detectable_format:number_highlighted_sections"],
                   n_train=20, n_val=10, n_eval=40, max_new_tokens=48, strengths=[0.5, 0.75, 1.0]),
    },
    "length": {
        False: dict(targets=[1, 2, 3, 4, 5], n_train=120, n_val=40, n_eval=40, max_new_tokens=128, strengths=[0.5, 1.0, 2.0, 4.0]),
        True: dict(targets=[1, 3], n_train=20, n_val=10, n_eval=40, max_new_tokens=64, strengths=[1.0, 2.0]),
    },
    "keywords": {
        False: dict(words=["ocean", "light", "future", "garden", "music", "journey"], n_train=120, n_val=40, n_eval=40,
                    max_new_tokens=128, strengths=[1.0, 2.0, 4.0, 8.0]),
        True: dict(words=["ocean", "music"], n_train=20, n_val=10, n_eval=40, max_new_tokens=48, strengths=[1.0, 2.0, 4.0]),
    },
    "composition": {
        False: dict(instructions=[TITLE_ID, "detectable_format:number_highlighted_sections"], targets=[1, 3, 5],
                    n_train=120, n_val=40, n_eval=40, max_new_tokens=128, strengths=[0.5, 1.0, 2.0, 4.0]),
        True: dict(instructions=[TITLE_ID], targets=[2], n_train=20, n_val=10, n_eval=40, max_new_tokens=64,
                   strengths=[0.5, 1.0, 2.0]),
    },
    "transfer": {
        False: dict(instructions=None, n_train=120, n_val=40, n_eval=40,
                    max_new_tokens=128, strengths=[1.0]),
        True: dict(instructions=[TITLE_ID], n_train=20, n_val=10, n_eval=20, max_new_tokens=48, strengths=[1.0]),
    },
}
PRESETS["transfer"][False]["instructions"] = list(PRESETS["format"][False]["instructions"])
# estimators: every method's direction selected and evaluated alike; sizes: training pairs of the sample-efficiency curve
PRESETS["estimators"] = {
    False: dict(instructions=[TITLE_ID], n_train=120, n_val=40, n_eval=40, max_new_tokens=128, strengths=[0.5, 1.0],
                methods=["mean", "pca", "probe", "whitened", "random"], sizes=[8, 16, 32, 64, 120]),
    True: dict(instructions=[TITLE_ID], n_train=32, n_val=10, n_eval=40, max_new_tokens=48, strengths=[0.5, 1.0],
               methods=["mean", "pca", "probe", "whitened", "random"], sizes=[8, 16, 32]),
}
# conditional: steer only prompts whose projection passes a gate chosen on validation (format instructions; --word for a
# keyword's inclusion, in add mode: pass --strengths 1,2,4 as the keywords experiment does)
PRESETS["conditional"] = {
    False: dict(instructions=[TITLE_ID, "detectable_format:number_highlighted_sections"], n_train=120, n_val=40, n_eval=40,
                max_new_tokens=128, strengths=[0.5, 1.0]),
    True: dict(instructions=[TITLE_ID, "detectable_format:number_highlighted_sections"], n_train=20, n_val=10, n_eval=40,
               max_new_tokens=48, strengths=[0.5, 0.75, 1.0]),
}


# experiments that take keyword inclusions (--word) beside format instructions; --word alone runs the words only
WORD_EXPERIMENTS: tuple[str, ...] = ("estimators", "conditional", "transfer")

SEARCHES: tuple[str, ...] = ("full", "fast")
RULES: tuple[str, ...] = ("workbench", "paper")


@dataclass
class ReproduceConfig:
    """Everything that defines a run; ``None`` fields take the experiment's (quick) preset."""

    experiment: str
    model: str = DEFAULT_MODEL
    quick: bool = False
    eval_data: str | None = None  # a pair file, or "ifeval" for the packaged IFEval prompts
    fields: str | None = None  # --fields: OURS=THEIRS,... for an eval file that names its fields differently
    convention: str = "auto"  # how to read instruction_id_list_for_eval: auto, eval (ids to check) or steering (keys)
    device: str | None = None
    out: str = "results"
    seed: int = 0
    mode: str | None = None
    instructions: list[str] | None = None
    targets: list[int] | None = None
    words: list[str] | None = None
    methods: list[str] | None = None  # estimators: direction estimators compared (workbench.estimators.METHODS)
    sizes: list[int] | None = None  # estimators: training-pair counts of the sample-efficiency curve
    include_only: bool = False  # keywords: evaluate inclusion only (--include-only)
    exclude_only: bool = False  # keywords: evaluate exclusion only (--exclude-only)
    layers: list[int] | None = None
    layer_stride: int = 2
    strengths: list[float] | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_eval: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    max_ppl_ratio: float | None = 2.0
    max_degeneration: float | None = None  # an absolute cap on steered degeneration (off by default)
    max_degeneration_gain: float | None = DEFAULT_MAX_DEGENERATION_GAIN  # steered degeneration <= unsteered + this
    rule: str = "workbench"  # workbench: the quality rule above and accuracy > unsteered; paper: perplexity only
    reference_model: str | None = None
    source_model: str | None = None
    map: str | None = None  # transfer: affine, orthogonal, identity or a map file (default: none for same shapes, else affine)
    map_prompts: int | None = None  # transfer: texts the maps are fitted on (default 120 with --quick, else 480)
    threads: int | None = None
    publish: str | None = None
    executor: str = "local"  # where sweep units run: local (this process) or ray
    address: str | None = None  # ray: join this cluster (default: start a local one)
    workers: int | None = None  # ray: actors (default: as many as the cluster's CPUs or GPUs fit)
    max_batch: int | None = None  # rows per packed decode batch (default: chosen from the device)
    pack: bool = True  # False: sweep units and conditions one at a time, each in its own batches
    search: str = "full"  # full: decode every grid cell (the paper); fast: score cells by forward passes, decode the best layers
    search_keep: int = 3  # --search fast: layers decoded per target

    def resolved(self, n_layers: int) -> "ReproduceConfig":
        """A copy with every preset field filled in for a model with ``n_layers`` layers."""
        if self.experiment not in EXPERIMENTS:
            raise WorkbenchError(f"unknown experiment {self.experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
        if self.rule not in RULES:
            raise WorkbenchError(f"unknown selection rule {self.rule!r}; choose one of {', '.join(RULES)}")
        if self.search not in SEARCHES:
            raise WorkbenchError(f"unknown search {self.search!r}; choose one of {', '.join(SEARCHES)}")
        for name in ("n_train", "n_val", "n_eval", "max_new_tokens", "batch_size", "threads", "workers", "max_batch", "search_keep"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise WorkbenchError(f"{name} must be a positive integer (or None for the preset), got {value!r}")
        for name in ("max_degeneration", "max_degeneration_gain"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise WorkbenchError(f"{name} is a share of repeated 3-grams in [0, 1] (or None), got {value}")
        preset = PRESETS[self.experiment][self.quick]
        filled = {k: v for k, v in preset.items() if getattr(self, k) is None}
        if self.experiment in WORD_EXPERIMENTS and self.words and self.instructions is None:
            filled.pop("instructions", None)  # --word alone compares the words' estimators, without the preset's title
        if self.eval_data and self.n_eval is None:
            filled.pop("n_eval", None)  # an evaluation file is used whole unless --n-eval caps it
        cfg = replace(self, **filled)
        if cfg.batch_size is None:
            cfg.batch_size = 40 if self.quick else 20  # fewer, larger batches: decoding on CPU is step-bound
        if cfg.mode is None:
            cfg.mode = "add" if self.experiment in ("length", "keywords") else "project"
        if cfg.sizes:
            cfg.sizes = sorted({min(n, cfg.n_train or n) for n in cfg.sizes})  # a curve point never needs more pairs than trained
        if cfg.layers is None:
            grid = default_layers(n_layers, cfg.layer_stride)
            cfg.layers = quick_layers(grid, n_layers) if self.quick else grid
        return cfg


QUICK_LAYER_FRACTIONS: tuple[float, ...] = (0.6, 0.75, 0.87)


def quick_layers(grid: Sequence[int], n_layers: int) -> list[int]:
    """Grid layers nearest to 60%, 75% and 87% of the depth (format directions act in the upper layers)."""
    grid = list(grid)
    picks = {min(grid, key=lambda layer: (abs(layer - f * n_layers), layer)) for f in QUICK_LAYER_FRACTIONS}
    return sorted(picks)


def length_kwargs(n: int) -> dict[str, Any]:
    """IFEval kwargs of "answer using at most ``n`` sentences"."""
    return {"num_sentences": n + 1, "relation": "less than"}


def length_scale(n: int, n_max: int = 5) -> float:
    """Steering strength factor for target ``n``: 1 for one sentence, falling linearly to 1/n_max for n_max."""
    return (n_max + 1 - n) / n_max



def cpu_threads(threads: int | None, device: str | None) -> int:
    """Torch threads for a run: ``threads`` if given, else 1 on CPU (the same numbers on any machine, and no
    OpenMP oversubscription on a shared CPU: measured 10x faster there than 2 threads), else torch's default."""
    if threads:
        return threads
    on_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    return 1 if on_cpu else torch.get_num_threads()
