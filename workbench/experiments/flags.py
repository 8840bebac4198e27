"""One rule for every experiment-specific setting of ``workbench reproduce``: given to an experiment that does not
use it, it is refused in one line before any work (never silently ignored), and what it names is checked then too."""

from __future__ import annotations

import math
from typing import Any

from ..arguments import check_seed
from ..errors import WorkbenchError

# config field -> (its flag, the experiments that read it)
EXPERIMENT_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "instructions": ("--instruction", ("format", "composition", "transfer", "estimators", "conditional")),
    "targets": ("--targets", ("length", "composition")),
    "words": ("--word/--words-file", ("keywords", "estimators", "conditional", "transfer")),
    "methods": ("--methods", ("estimators",)),
    "sizes": ("--sizes", ("estimators",)),
    "source_model": ("--source-model", ("transfer",)),
    "include_only": ("--include-only", ("keywords",)),
    "exclude_only": ("--exclude-only", ("keywords",)),
    "map": ("--map", ("transfer",)),
    "map_prompts": ("--map-prompts", ("transfer",)),
}
# experiments that always steer in add mode (their --mode could only be ignored)
ADD_ONLY = ("length", "keywords")


def check_experiment_config(cfg: Any) -> None:
    """Refuse settings ``cfg.experiment`` does not use, and unknown instructions, before the model loads.

    >>> check_experiment_config(ReproduceConfig("format", words=["ocean"]))
    Traceback (most recent call last):
    WorkbenchError: --word/--words-file is for the keywords experiment; format does not use it
    """
    exp = cfg.experiment
    for name, (flag, users) in EXPERIMENT_FIELDS.items():
        if getattr(cfg, name, None) and exp not in users:
            raise WorkbenchError(f"{flag} is for the {' and '.join(users)} experiment{'s' if len(users) > 1 else ''}; "
                                 f"{exp} does not use it")
    if exp in ADD_ONLY and cfg.mode not in (None, "add"):
        raise WorkbenchError(f"--mode {cfg.mode}: the {exp} experiment steers in add mode only")
    if cfg.fields and not cfg.eval_data:
        raise WorkbenchError("--fields maps the fields of an --eval-data file; pass --eval-data too")
    if getattr(cfg, "convention", "auto") != "auto" and not cfg.eval_data:
        raise WorkbenchError("--convention reads an --eval-data file; pass --eval-data too")
    if (cfg.address or cfg.workers) and cfg.executor != "ray":
        raise WorkbenchError("--address and --workers are for --executor ray")
    check_seed(cfg.seed, "--seed")
    for name in ("max_ppl_ratio", "max_degeneration", "max_degeneration_gain"):
        value = getattr(cfg, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                                  or value < 0):
            raise WorkbenchError(f"--{name.replace('_', '-')} must be a finite number >= 0 (or 'none'), got {value!r}")
    for n in cfg.targets or []:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise WorkbenchError(f"--targets: a sentence target is a count >= 1, got {n!r}")
    if cfg.instructions and exp in EXPERIMENT_FIELDS["instructions"][1]:
        _check_instructions(cfg.instructions)
    if exp == "estimators":
        _check_methods(cfg)
    _check_models(cfg)
    from ..io import check_output_dir

    check_output_dir(cfg.out, "--out")
    if cfg.publish:
        check_output_dir(cfg.publish, "--publish")


def _check_instructions(ids: list[str]) -> None:
    """Every ``--instruction`` is a built-in format instruction (or a language of ``language:response_language``)."""
    from ..data.builtin import list_instructions
    from .targets import format_target_names

    known = set(list_instructions("format"))
    for _, iid, _ in format_target_names(ids):  # an unknown language suffix fails here
        if iid not in known:
            raise WorkbenchError(f"--instruction {iid!r} is not a built-in format instruction; choose one of {', '.join(sorted(known))}")


def _check_models(cfg: Any) -> None:
    """Model names resolve and ``--layers`` fit the model, read from the configs before any model loads."""
    from ..directions import check_distinct_layers
    from ..models.loading import layer_count

    for name in (cfg.reference_model, getattr(cfg, "source_model", None)):
        if name and name != cfg.model:
            layer_count(name)  # an unknown name fails now, not after the main model's work
    if cfg.layers is None or cfg.model == "all":
        return
    check_distinct_layers(cfg.layers)
    n = layer_count(cfg.model)
    bad = [layer for layer in cfg.layers if n is not None and not 0 <= layer < n]
    if bad:
        raise WorkbenchError(f"--layers: {bad[0]} is out of range (this model has layers 0..{n - 1})")


def _check_methods(cfg: Any) -> None:
    """Known estimators, each with enough training pairs, and curve sizes that are counts (before any work)."""
    from ..estimators import check_method
    from .config import PRESETS

    preset = PRESETS["estimators"][cfg.quick]
    n_train = cfg.n_train or preset["n_train"]
    for method in cfg.methods or preset["methods"]:
        check_method(method, n_train)
    for n in cfg.sizes or []:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise WorkbenchError(f"--sizes: a number of training pairs is a count >= 1, got {n!r}")
