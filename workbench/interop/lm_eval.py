"""lm-evaluation-harness ``steered`` model files: write a :class:`Direction` as one, and read one back.

lm-eval (``lm_eval --model steered --model_args pretrained=DIR,steer_path=FILE.pt``, class
``lm_eval.models.hf_steered.SteeredModel``, checked against lm_eval 0.4.13) reads a ``torch.save``
file holding ``{hookpoint: {"steering_vector", "steering_coefficient", "action", "bias",
"head_index"}}``. A hookpoint is a module name in ``model.base_model.named_modules()`` and the
steering is a forward hook on that module, so ``layers.N`` (Llama, Qwen2, Gemma 3 text, Mistral,
Phi-3, GPT-NeoX), ``h.N`` (GPT-2) or ``decoder.layers.N`` (OPT) is the *output* of decoder layer N:
our ``blocks.N.hook_resid_post``. ``action="add"`` adds ``steering_coefficient * steering_vector``
at every position; ``action="clamp"`` sets the projection on the unit vector to
``steering_coefficient`` (after subtracting ``bias``, which is added back): our ``project`` mode
with ``target=steering_coefficient`` (``ablate`` is a clamp to 0).

Each entry also carries a ``workbench`` dict (name, layer, hook, projection statistics) that
lm-eval ignores, so a round trip loses nothing. Reading never unpickles anything but tensors and
plain containers (``weights_only=True``); lm-eval itself loads with ``weights_only=False``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from ..directions import Direction
from ..errors import LayerError, ShapeError, SteeringError, VectorFileError, WorkbenchError
from ..io import atomic_path
from ..steering import SteeringSpec

ACTIONS = ("add", "clamp")
MODES = ("add", "project", "ablate")
SUFFIXES = (".pt", ".pth")  # lm-eval reads a steer_path as a torch file only with these endings
ENTRY_KEYS = ("steering_vector", "steering_coefficient", "action", "bias", "head_index")
META_KEY = "workbench"
# Decoder-layer container relative to ``model.base_model`` (lm-eval's naming), by config.model_type.
# tests/test_lm_eval.py checks each against a randomly initialised model of that family.
HOOKPOINT_PREFIX: dict[str, str] = {
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
    "gemma2": "layers",
    "gemma3_text": "layers",
    "gemma3": "language_model.layers",
    "phi3": "layers",
    "gpt_neox": "layers",
    "gpt2": "h",
    "opt": "decoder.layers",
}
DEFAULT_PREFIX = "layers"
_HOOKPOINT = re.compile(r"(?:(?P<prefix>[A-Za-z_][\w.]*)\.)?(?P<index>\d+)")


# --- naming ---------------------------------------------------------------------------------
def _hf_model(model: Any) -> Any:
    """The Hugging Face module tree lm-eval would load for ``model`` (a TransformerBridge or a transformers model)."""
    original = getattr(model, "original_model", None)
    if original is None:
        return model
    # the bridge wraps every submodule; rebuild the plain tree on the meta device (no weights) for its names
    with torch.device("meta"):
        return type(original)(original.config)


def hookpoint_prefix(model: Any | None = None, model_type: str | None = None) -> str:
    """lm-eval's name of the decoder-layer list (``layers`` for Llama-style models), from a model or a config.model_type.

    Example: ``hookpoint_prefix(model_type="gpt2") == "h"``; ``hookpoint_prefix(wb.load_model("tiny-random-llama")) == "layers"``.
    """
    if model is None:
        if model_type is None:
            return DEFAULT_PREFIX
        if model_type not in HOOKPOINT_PREFIX:
            raise WorkbenchError(
                f"no known lm-eval hookpoint naming for model type {model_type!r}; known: {sorted(HOOKPOINT_PREFIX)} "
                "(pass the model itself to derive it)"
            )
        return HOOKPOINT_PREFIX[model_type]
    from ..models.plain import decoder_layers

    hf = _hf_model(model)
    base = getattr(hf, "base_model", hf)
    first = decoder_layers(hf)[0]
    for name, module in base.named_modules():
        if module is first and name.endswith(".0"):
            return name[: -len(".0")]
    raise WorkbenchError(f"cannot find the decoder layers of a {type(hf).__name__} among its base model's modules")


def lm_eval_hookpoint(layer: int, hook: str = "resid_post", prefix: str = DEFAULT_PREFIX) -> str:
    """The lm-eval hookpoint that steers our ``blocks.{layer}.hook_{hook}``: ``layers.L`` for resid_post, ``layers.(L-1)`` for resid_pre.

    Example: ``lm_eval_hookpoint(26) == "layers.26"``.
    """
    layer = int(layer)
    if hook == "resid_post":
        index = layer
    elif hook == "resid_pre":
        index = layer - 1
        if index < 0:
            raise LayerError(
                "blocks.0.hook_resid_pre is the embedding output, not the output of a decoder layer; "
                "an lm-eval layers.N hookpoint cannot steer it"
            )
    else:
        raise LayerError(f"lm-eval steers module outputs; a direction at hook_{hook} has no lm-eval hookpoint")
    return f"{prefix}.{index}"


def parse_hookpoint(hookpoint: Any, prefixes: Sequence[str] | None = None) -> int:
    """The decoder layer whose output a hookpoint names (``"layers.5"`` -> 5); anything else is a ``VectorFileError``."""
    allowed = tuple(prefixes) if prefixes is not None else tuple(sorted(set(HOOKPOINT_PREFIX.values())))
    if isinstance(hookpoint, str):
        m = _HOOKPOINT.fullmatch(hookpoint.strip())
        if m is not None and m.group("prefix") in allowed:
            return int(m.group("index"))
    raise VectorFileError(
        f"hookpoint {hookpoint!r} is not the output of a decoder layer "
        f"(expected {' or '.join(p + '.N' for p in allowed)}); only residual-stream hookpoints convert to a direction"
    )


# --- export ---------------------------------------------------------------------------------
def _finite(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SteeringError(f"{label} must be a finite number, got {value!r}")
    return float(value)


def lm_eval_entries(
    direction: Direction,
    layers: Sequence[int] | None = None,
    mode: str = "add",
    coeff: float = 1.0,
    target: float | None = None,
    normalize: bool = True,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, dict[str, Any]]:
    """The ``{hookpoint: entry}`` dict lm-eval's steered model reads; checks everything before returning.

    ``add``: ``steering_vector`` is the unit vector (``normalize=False``: the raw mean difference) and
    ``steering_coefficient`` is ``coeff``. ``project``: ``action="clamp"`` with the coefficient set to
    ``target`` (default: the direction's ``proj_with`` at that layer). ``ablate``: clamp to 0.
    Example: ``lm_eval_entries(d, layers=[26], mode="project")["layers.26"]["action"] == "clamp"``.
    """
    if not isinstance(direction, Direction):
        raise SteeringError(f"lm-eval export needs a Direction, got {type(direction).__name__}")
    if mode not in MODES:
        raise SteeringError(f"unknown steering mode {mode!r}; choose one of {MODES}")
    coeff = _finite(coeff, "coeff")
    if target is not None:
        target = _finite(target, "target")
        if mode != "project":
            raise SteeringError(f"target applies to project mode, not {mode}")
    if mode != "add" and coeff != 1.0:
        raise SteeringError(f"coeff applies to add mode; {mode} mode sets the projection (use target= for project)")
    if layers is None:
        if len(direction.layers) != 1:
            raise LayerError(
                f"direction {direction.name!r} covers layers {direction.layers[0]}..{direction.layers[-1]}; "
                "name the layer(s) to steer (layers=[L], --layer L): lm-eval applies every entry of the file at once"
            )
        layers = list(direction.layers)
    layers = [int(L) for L in layers]
    if len(set(layers)) != len(layers):
        raise LayerError(f"layers repeat: {layers}")
    entries: dict[str, dict[str, Any]] = {}
    for L in layers:
        at = direction.at(L)  # LayerError naming the direction's layers if it lacks L
        hookpoint = lm_eval_hookpoint(L, direction.hook, prefix)
        unit = at.unit
        vector = unit if normalize else at.vector
        if mode == "add":
            action, coefficient = "add", coeff
        elif mode == "ablate":
            action, coefficient = "clamp", 0.0
        else:
            goal = target if target is not None else at.proj_with
            if goal is None:
                raise SteeringError(
                    f"direction {direction.name!r} stores no projection statistics; project mode needs target="
                )
            action, coefficient = "clamp", float(goal)
        entries[hookpoint] = {
            "steering_vector": vector.detach().to("cpu", torch.float32).clone().contiguous(),
            "steering_coefficient": float(coefficient),
            "action": action,
            "bias": None,
            "head_index": None,
            META_KEY: {
                "name": direction.name,
                "model_name": direction.model_name,
                "layer": L,
                "hook": direction.hook,
                "mode": mode,
                "normalized": bool(normalize),
                "d_model": direction.d_model,
                "n_model_layers": direction.n_model_layers,
                "norm": at.norm,
                "proj_with": at.proj_with,
                "proj_without": at.proj_without,
            },
        }
    return entries


def export_lm_eval(
    direction: Direction,
    path: str | Path,
    layers: Sequence[int] | None = None,
    mode: str = "add",
    coeff: float = 1.0,
    target: float | None = None,
    normalize: bool = True,
    model: Any | None = None,
    model_type: str | None = None,
) -> dict[int, str]:
    """Write the ``steer_path`` file of lm-eval's ``steered`` model; returns ``{our layer: hookpoint}``.

    The hookpoint naming comes from ``model`` (derived from its module tree, and d_model / layers are
    checked) or ``model_type`` (e.g. ``"gpt2"`` -> ``h.N``); default ``layers.N``.
    Example: ``export_lm_eval(d, "title.pt", layers=[26], mode="project")`` then
    ``lm_eval --model steered --model_args pretrained=DIR,steer_path=title.pt --tasks ifeval``.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise VectorFileError(f"{path}: lm-eval reads a steer_path as a torch file only if it ends in .pt or .pth")
    if model is not None:
        if hasattr(model, "cfg"):
            direction.check_compatible(model)
        else:
            _check_hf(direction, model)
        prefix = hookpoint_prefix(model)
    else:
        prefix = hookpoint_prefix(model_type=model_type)
    entries = lm_eval_entries(direction, layers, mode, coeff, target, normalize, prefix)
    with atomic_path(path) as tmp:
        torch.save(entries, str(tmp))
    return {int(e[META_KEY]["layer"]): hp for hp, e in entries.items()}


def _check_hf(direction: Direction, hf_model: Any) -> None:
    from ..models.plain import decoder_layers
    from ..steering.plain import hidden_size

    d, n = hidden_size(hf_model), len(decoder_layers(hf_model))
    if d != direction.d_model:
        raise ShapeError(f"direction {direction.name!r} has d_model={direction.d_model}; the model has {d}")
    if max(direction.layers) >= n:
        raise LayerError(f"direction {direction.name!r} has layers up to {max(direction.layers)}; the model has 0..{n - 1}")


# --- import ---------------------------------------------------------------------------------
def is_lm_eval_file(path: str | Path) -> bool:
    """Whether ``path`` is a torch file shaped like an lm-eval steer file (a dict of dicts with ``steering_vector``)."""
    from .torch_vectors import detect_format

    try:
        return detect_format(path) == "lm-eval"
    except WorkbenchError:
        return False


def _model_layout(model: Any) -> tuple[str, int, int, set[str], str]:
    """(hookpoint prefix, n decoder layers, d_model, every module name under base_model, display name)."""
    from ..models.plain import decoder_layers
    from ..steering.plain import hidden_size

    hf = _hf_model(model)
    base = getattr(hf, "base_model", hf)
    names = {name for name, _ in base.named_modules()}
    if hasattr(model, "cfg"):
        from ..models.loading import model_info

        n, d, label = int(model.cfg.n_layers), int(model.cfg.d_model), model_info(model).name
    else:
        n, d, label = len(decoder_layers(hf)), hidden_size(hf), type(hf).__name__
    return hookpoint_prefix(model), n, d, names, label


def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    from .torch_vectors import _read_torch, detect_format

    kind = detect_format(path)  # VectorFileError for a missing or non-vector file
    if kind not in ("lm-eval", "torch"):  # a torch file of another shape gets the precise complaint below
        raise VectorFileError(f"{path}: an lm-eval steer file is a torch.save file, but this is a {kind} file")
    content = _read_torch(path)  # weights_only: a pickled object is refused with a clear error
    if not isinstance(content, dict) or not content:
        raise VectorFileError(
            f"{path}: holds a {type(content).__name__}{' (empty)' if isinstance(content, dict) else ''}; "
            "an lm-eval steer file is a non-empty dict {hookpoint: {steering_vector, steering_coefficient, action, ...}}"
        )
    for hookpoint, entry in content.items():
        if not isinstance(entry, dict):
            raise VectorFileError(f"{path}: entry {hookpoint!r} is a {type(entry).__name__}, not a dict")
        missing = [k for k in ("steering_vector", "action") if k not in entry]
        if missing:
            raise VectorFileError(f"{path}: entry {hookpoint!r} lacks {', '.join(missing)}")
    return content


def load_lm_eval(path: str | Path, model: Any | None = None, name: str | None = None) -> Direction:
    """Read an lm-eval steer file into a :class:`Direction` (hook resid_post unless the file says resid_pre).

    Every entry is checked first (hookpoint, action, vector width, coefficient, bias, head_index;
    with ``model``: the module exists there and the width matches), so bad input raises before
    anything is built. ``extra["lm_eval"]`` keeps each layer's action and coefficient for
    :func:`lm_eval_specs`. Example: ``d = load_lm_eval("title.pt", model=model)``.
    """
    path = Path(path)
    entries = _read_entries(path)
    layout = _model_layout(model) if model is not None else None
    prefixes = [layout[0]] if layout is not None else None
    vectors: dict[int, torch.Tensor] = {}
    actions: dict[str, dict[str, Any]] = {}
    stats: dict[int, tuple[Any, Any]] = {}
    hooks: set[str] = set()
    meta_names: set[str] = set()
    for hookpoint, entry in entries.items():
        if layout is not None:
            prefix, n, _, names, label = layout
            if hookpoint not in names:
                raise VectorFileError(
                    f"{path}: hookpoint {hookpoint!r} names no module of {label} "
                    f"(its decoder layers are {prefix}.0..{prefix}.{n - 1})"
                )
        index = parse_hookpoint(hookpoint, prefixes)
        if layout is not None and index >= layout[1]:
            raise LayerError(f"{path}: hookpoint {hookpoint!r}: the model has decoder layers 0..{layout[1] - 1}")
        action = entry["action"]
        if action not in ACTIONS:
            raise VectorFileError(f"{path}: entry {hookpoint!r} has unknown action {action!r} (lm-eval knows {ACTIONS})")
        if entry.get("head_index") is not None:
            raise VectorFileError(
                f"{path}: entry {hookpoint!r} steers attention head {entry['head_index']!r}; "
                "a workbench direction lives in the residual stream, not one head"
            )
        vec = entry["steering_vector"]
        if not isinstance(vec, torch.Tensor) or not vec.is_floating_point():
            what = f"dtype {vec.dtype}" if isinstance(vec, torch.Tensor) else type(vec).__name__
            raise VectorFileError(f"{path}: entry {hookpoint!r}: steering_vector is a {what}, not a float tensor")
        if vec.dim() == 2 and vec.shape[0] == 1:
            vec = vec[0]
        if vec.dim() != 1:
            raise ShapeError(f"{path}: entry {hookpoint!r}: steering_vector has shape {tuple(vec.shape)}, expected [d_model]")
        vec = vec.detach().to("cpu", torch.float32)
        if not torch.isfinite(vec).all() or float(vec.norm()) == 0.0:
            raise VectorFileError(f"{path}: entry {hookpoint!r}: steering_vector is zero or not finite")
        if layout is not None and vec.shape[0] != layout[2]:
            raise ShapeError(
                f"{path}: entry {hookpoint!r}: steering_vector has d_model={vec.shape[0]}; {layout[4]} has d_model={layout[2]}"
            )
        coef_raw = entry.get("steering_coefficient", 1.0)
        try:
            coefficient = float(coef_raw)
        except (TypeError, ValueError):
            raise VectorFileError(f"{path}: entry {hookpoint!r}: steering_coefficient {coef_raw!r} is not a number") from None
        if not math.isfinite(coefficient):
            raise VectorFileError(f"{path}: entry {hookpoint!r}: steering_coefficient is {coefficient}")
        bias = entry.get("bias")
        if bias is not None:
            if action == "add":
                raise VectorFileError(f"{path}: entry {hookpoint!r}: lm-eval refuses a bias with action 'add'")
            if not isinstance(bias, torch.Tensor) or bias.shape != vec.shape:
                raise ShapeError(f"{path}: entry {hookpoint!r}: bias must be a tensor of shape {tuple(vec.shape)}")
            # clamp(x - b) + b sets the projection on u to value + b.u
            coefficient += float(bias.detach().to("cpu", torch.float32) @ (vec / vec.norm()))
        meta = entry.get(META_KEY) if isinstance(entry.get(META_KEY), dict) else {}
        hook = str(meta.get("hook", "resid_post"))
        layer = index + 1 if hook == "resid_pre" else index
        if hook not in ("resid_post", "resid_pre"):
            raise VectorFileError(f"{path}: entry {hookpoint!r}: unknown workbench hook {hook!r}")
        if layer in vectors:
            raise VectorFileError(f"{path}: two entries steer layer {layer}")
        hooks.add(hook)
        if meta.get("name"):
            meta_names.add(str(meta["name"]))
        vectors[layer] = vec
        actions[str(layer)] = {"hookpoint": hookpoint, "action": action, "coefficient": coefficient}
        stats[layer] = (meta.get("proj_with"), meta.get("proj_without"))
    if len(hooks) != 1:
        raise VectorFileError(f"{path}: entries mix hooks {sorted(hooks)}")
    order = sorted(vectors)
    widths = {int(vectors[L].shape[0]) for L in order}
    if len(widths) != 1:
        detail = ", ".join(f"layer {L}: {vectors[L].shape[0]}" for L in order[:8])
        raise ShapeError(f"{path}: vectors differ in d_model ({detail})")
    d_model = widths.pop()
    first_meta = next((e.get(META_KEY) for e in entries.values() if isinstance(e.get(META_KEY), dict)), {}) or {}
    if layout is not None:
        from ..models.loading import model_info

        n_model_layers = layout[1]
        model_name = model_info(model).name if hasattr(model, "cfg") else layout[4]
    else:
        n_model_layers = int(first_meta.get("n_model_layers", order[-1] + 1))
        model_name = str(first_meta.get("model_name", "unknown"))
    if order[-1] >= n_model_layers:
        raise LayerError(f"{path}: layer {order[-1]} but the model has {n_model_layers} layers")
    have_stats = all(s[0] is not None and s[1] is not None for s in stats.values())
    return Direction(
        vectors=torch.stack([vectors[L] for L in order]),
        layers=tuple(order),
        name=name or (meta_names.pop() if len(meta_names) == 1 else path.stem),
        model_name=model_name,
        d_model=d_model,
        n_model_layers=n_model_layers,
        hook=hooks.pop(),
        proj_with=torch.tensor([float(stats[L][0]) for L in order]) if have_stats else None,
        proj_without=torch.tensor([float(stats[L][1]) for L in order]) if have_stats else None,
        extra={"source_format": "lm-eval", "source_file": path.name, "lm_eval": actions},
    )


def lm_eval_specs(direction: Direction) -> list[SteeringSpec]:
    """The workbench steering that an lm-eval file imported with :func:`load_lm_eval` applies, for ``wb.steer(model, *specs)``.

    ``add`` becomes ``coeff = steering_coefficient * |steering_vector|`` on the unit vector;
    ``clamp`` becomes ``mode="project"`` with ``target = steering_coefficient`` (+ ``bias . u``).
    Example: ``with wb.steer(model, *lm_eval_specs(load_lm_eval("title.pt"))): ...``.
    """
    table = direction.extra.get("lm_eval")
    if not isinstance(table, dict):
        raise SteeringError(f"direction {direction.name!r} was not imported from an lm-eval file (no extra['lm_eval'])")
    specs = []
    for L in direction.layers:
        row = table.get(str(L))
        if row is None:
            raise SteeringError(f"direction {direction.name!r}: no lm-eval action recorded for layer {L}")
        at = direction.at(L)
        if row["action"] == "add":
            specs.append(SteeringSpec(unit=at.unit, layer=L, coeff=float(row["coefficient"]) * at.norm, mode="add",
                                      hook=direction.hook, name=direction.name))
        else:
            specs.append(SteeringSpec(unit=at.unit, layer=L, mode="project", target=float(row["coefficient"]),
                                      hook=direction.hook, name=direction.name))
    return specs
