"""Instruction directions: per-layer mean of (with - without instruction) last-token activations."""

from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float

from .activations import collect_activations
from .errors import DatasetError, LayerError, ShapeError, SteeringError, VectorFileError
from .hooks import RESID_HOOKS, check_layers
from .io import load_tensors, save_tensors
from .models.loading import model_info
from .version import __version__


@dataclass(frozen=True)
class LayerDirection:
    """One layer's direction: the raw mean difference and its projection statistics."""

    vector: Float[torch.Tensor, "d_model"]
    layer: int
    name: str = "direction"
    proj_with: float | None = None
    proj_without: float | None = None

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def unit(self) -> Float[torch.Tensor, "d_model"]:
        return unit_vector(self.vector, self.name)


def unit_vector(vector: torch.Tensor, what: str = "vector") -> torch.Tensor:
    """``vector / |vector|``, refusing NaN, infinite or zero vectors."""
    if vector.dim() != 1:
        raise ShapeError(f"{what}: expected a [d_model] vector, got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise SteeringError(f"{what}: vector contains NaN or infinite values")
    norm = vector.norm()
    if norm == 0:
        raise SteeringError(f"{what}: vector is zero and has no direction")
    return vector / norm


@dataclass(frozen=True)
class Direction:
    """An instruction's directions at every layer it was computed for.

    ``vectors[i]`` is the mean (with - without) difference at ``layers[i]``; ``proj_with`` and
    ``proj_without`` are the mean projections of the two prompt sets on the unit direction
    (``proj_with`` is the default target of projection steering). Supports ``+``, ``-``, ``*``.
    """

    vectors: Float[torch.Tensor, "n_layers d_model"]
    layers: tuple[int, ...]
    name: str
    model_name: str
    d_model: int
    n_model_layers: int
    hook: str = "resid_post"
    proj_with: Float[torch.Tensor, "n_layers"] | None = None
    proj_without: Float[torch.Tensor, "n_layers"] | None = None
    n_pairs: int = 0
    data_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, torch.Tensor):
            raise ShapeError(f"direction {self.name!r}: vectors must be a tensor, got {type(self.vectors).__name__}")
        for label, value in (("d_model", self.d_model), ("n_model_layers", self.n_model_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ShapeError(f"direction {self.name!r}: {label} must be a positive integer, got {value!r}")
        if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in self.layers):
            raise LayerError(f"direction {self.name!r}: layers must be integers, got {list(self.layers)!r}")
        if len(set(self.layers)) != len(self.layers):
            repeated = sorted(x for x, n in Counter(self.layers).items() if n > 1)
            raise LayerError(f"direction {self.name!r}: layer(s) {repeated} given more than once")
        if self.layers and (min(self.layers) < 0 or max(self.layers) >= self.n_model_layers):
            raise LayerError(
                f"direction {self.name!r}: layers {_ranges(self.layers)} do not fit a {self.n_model_layers}-layer model"
            )
        if not isinstance(self.extra, dict):
            raise ShapeError(f"direction {self.name!r}: extra must be a dict, got {type(self.extra).__name__}")
        for label, value in (("proj_with", self.proj_with), ("proj_without", self.proj_without)):
            if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != (len(self.layers),)):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ShapeError(f"direction {self.name!r}: {label} has shape {shape}, expected ({len(self.layers)},)")
        if self.vectors.dim() != 2 or self.vectors.shape != (len(self.layers), self.d_model):
            raise ShapeError(
                f"direction {self.name!r}: vectors have shape {tuple(self.vectors.shape)}, "
                f"expected ({len(self.layers)}, {self.d_model})"
            )
        if not torch.isfinite(self.vectors).all():
            raise SteeringError(f"direction {self.name!r}: vectors contain NaN or infinite values")
        for label, value in (("proj_with", self.proj_with), ("proj_without", self.proj_without)):
            if value is not None and not torch.isfinite(value).all():
                raise SteeringError(f"direction {self.name!r}: {label} contains NaN or infinite values")

    # --- access -------------------------------------------------------------------------
    def _index(self, layer: int) -> int:
        if layer not in self.layers:
            raise LayerError(
                f"direction {self.name!r} has no layer {layer}; it was computed for layers "
                f"{_ranges(self.layers)} of a {self.n_model_layers}-layer model"
            )
        return self.layers.index(layer)

    def at(self, layer: int) -> LayerDirection:
        """The direction at one layer."""
        i = self._index(int(layer))
        return LayerDirection(
            vector=self.vectors[i],
            layer=int(layer),
            name=self.name,
            proj_with=None if self.proj_with is None else float(self.proj_with[i]),
            proj_without=None if self.proj_without is None else float(self.proj_without[i]),
        )

    @property
    def norms(self) -> Float[torch.Tensor, "n_layers"]:
        return self.vectors.norm(dim=-1)

    @property
    def units(self) -> Float[torch.Tensor, "n_layers d_model"]:
        return self.vectors / self.norms.clamp_min(1e-12)[:, None]

    def check_compatible(self, model: Any) -> None:
        """Raise a clear error if this direction cannot be used on ``model``."""
        d_model, n = int(model.cfg.d_model), int(model.cfg.n_layers)
        if d_model != self.d_model:
            raise ShapeError(
                f"direction {self.name!r} was computed on {self.model_name} (d_model={self.d_model}); "
                f"this model has d_model={d_model}"
            )
        if max(self.layers) >= n:
            raise LayerError(
                f"direction {self.name!r} has layers up to {max(self.layers)}; this model has layers 0..{n - 1}"
            )

    # --- arithmetic for composition ------------------------------------------------------
    def _combine(self, other: "Direction", sign: float) -> "Direction":
        if not isinstance(other, Direction):
            return NotImplemented
        if other.d_model != self.d_model or other.layers != self.layers:
            raise ShapeError(
                f"cannot combine {self.name!r} (d_model={self.d_model}, layers {_ranges(self.layers)}) "
                f"with {other.name!r} (d_model={other.d_model}, layers {_ranges(other.layers)})"
            )
        op = "+" if sign > 0 else "-"
        return replace(
            self,
            vectors=self.vectors + sign * other.vectors,
            name=f"({self.name} {op} {other.name})",
            proj_with=None,
            proj_without=None,
            n_pairs=0,
            data_hash="",
            extra={},
        )

    def __add__(self, other: "Direction") -> "Direction":
        return self._combine(other, 1.0)

    def __sub__(self, other: "Direction") -> "Direction":
        return self._combine(other, -1.0)

    def __mul__(self, scale: float) -> "Direction":
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            return NotImplemented
        flip = -1.0 if scale < 0 else 1.0  # the unit direction flips with a negative scale
        return replace(
            self,
            vectors=self.vectors * scale,
            name=f"{scale:g}*{self.name}",
            proj_with=None if self.proj_with is None else self.proj_with * flip,
            proj_without=None if self.proj_without is None else self.proj_without * flip,
        )

    __rmul__ = __mul__

    def __neg__(self) -> "Direction":
        return self * -1.0

    def __repr__(self) -> str:
        return (
            f"Direction({self.name!r}, model={self.model_name}, layers={_ranges(self.layers)}, "
            f"d_model={self.d_model}, n_pairs={self.n_pairs})"
        )

    # --- persistence ---------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "kind": "direction",
            "name": self.name,
            "model_name": self.model_name,
            "hook": self.hook,
            "d_model": self.d_model,
            "n_layers": self.n_model_layers,
            "layers": list(self.layers),
            "n_pairs": self.n_pairs,
            "data_hash": self.data_hash,
            "workbench_version": __version__,
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> None:
        """Write safetensors (vectors and projection statistics) with JSON metadata, atomically."""
        tensors = {"vectors": self.vectors}
        if self.proj_with is not None and self.proj_without is not None:
            tensors["proj_with"] = self.proj_with
            tensors["proj_without"] = self.proj_without
        save_tensors(path, tensors, self.metadata())

    @classmethod
    def load(cls, path: str | Path, model: Any | None = None) -> "Direction":
        """Read a direction file; with ``model``, also check that it fits that model."""
        tensors, meta = load_tensors(path, "direction")
        try:
            layers = meta["layers"]
            if not isinstance(layers, list):
                raise VectorFileError(f"{path}: metadata 'layers' must be a list of integers, got {layers!r}")
            extra = meta.get("extra", {})
            if not isinstance(extra, dict):
                raise VectorFileError(f"{path}: metadata 'extra' must be a JSON object, got {type(extra).__name__}")
            hook = str(meta.get("hook", "resid_post"))
            if hook not in RESID_HOOKS:
                raise VectorFileError(f"{path}: metadata 'hook' is {hook!r}; expected one of {RESID_HOOKS}")
            direction = cls(
                vectors=tensors["vectors"].float(),
                layers=tuple(_meta_int(path, "layers", x) for x in layers),
                name=str(meta["name"]),
                model_name=str(meta["model_name"]),
                d_model=_meta_int(path, "d_model", meta["d_model"]),
                n_model_layers=_meta_int(path, "n_layers", meta["n_layers"]),
                hook=hook,
                proj_with=tensors.get("proj_with"),
                proj_without=tensors.get("proj_without"),
                n_pairs=_meta_int(path, "n_pairs", meta.get("n_pairs", 0)),
                data_hash=str(meta.get("data_hash", "")),
                extra=dict(extra),
            )
        except KeyError as exc:
            raise VectorFileError(f"{path}: direction file lacks {exc}") from None
        except (ShapeError, SteeringError, LayerError) as exc:
            raise VectorFileError(f"{path}: {exc}") from None
        if model is not None:
            direction.check_compatible(model)
        return direction


def _meta_int(path: str | Path, key: str, value: Any) -> int:
    """An integer field of a direction file's metadata, or a ``VectorFileError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise VectorFileError(f"{path}: metadata {key!r} must hold integers, got {value!r}")
    return int(value)


def _ranges(layers: Sequence[int]) -> str:
    layers = list(layers)
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(str(x) for x in layers)


def direction_from_activations(
    with_acts: Float[torch.Tensor, "n n_layers d_model"],
    without_acts: Float[torch.Tensor, "n n_layers d_model"],
    *,
    layers: Sequence[int],
    name: str,
    model_name: str,
    n_model_layers: int,
    hook: str = "resid_post",
    data_hash: str = "",
    extra: dict[str, Any] | None = None,
    method: str = "mean",
    seed: int = 0,
) -> Direction:
    """Per-layer direction of ``method`` (default: the mean of paired differences; :mod:`workbench.estimators`), plus
    both sets' mean projections on the unit direction; ``extra["estimator"]`` records the method and its parameters."""
    if with_acts.shape != without_acts.shape:
        raise ShapeError(
            f"with/without activations differ in shape: {tuple(with_acts.shape)} vs {tuple(without_acts.shape)}"
        )
    if with_acts.shape[0] == 0:
        raise DatasetError(f"direction {name!r}: no pairs")
    from .estimators import estimate

    vectors, params = estimate(with_acts, without_acts, method, seed)
    extra = {**(extra or {}), "estimator": params}
    scale = float(with_acts.norm(dim=-1).mean())
    if float(vectors.norm(dim=-1).max()) <= 1e-6 * max(scale, 1e-12):
        raise DatasetError(
            f"direction {name!r}: the mean difference is zero at every layer (the prompts with and without "
            "the instruction give the same activations), so there is no direction to save"
        )
    units = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    proj_with = torch.einsum("nld,ld->nl", with_acts, units).mean(0)
    proj_without = torch.einsum("nld,ld->nl", without_acts, units).mean(0)
    return Direction(
        vectors=vectors,
        layers=tuple(int(x) for x in layers),
        name=name,
        model_name=model_name,
        d_model=int(vectors.shape[-1]),
        n_model_layers=n_model_layers,
        hook=hook,
        proj_with=proj_with,
        proj_without=proj_without,
        n_pairs=int(with_acts.shape[0]),
        data_hash=data_hash,
        extra=extra or {},
    )


def pair_activations(
    model: Any,
    pairs: Any,
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
    truncate: str | None = None,
) -> tuple[Float[torch.Tensor, "n n_layers d_model"], Float[torch.Tensor, "n n_layers d_model"]]:
    """Last-token activations of every pair's prompt with and without its instruction.

    Every prompt is checked against the model's context before either set runs (``truncate``
    as in :func:`~workbench.activations.collect_activations`).
    """
    pairs.require_nonempty("pair_activations")
    kw = dict(layers=layers, hook=hook, batch_size=batch_size, progress=progress, truncate=truncate)
    without_prompts = pairs.prompts_without_instruction()  # fails early if rows lack it
    if truncate is None:  # refuse a prompt past the context before the first set is computed
        model_info(model).formatter.token_rows([*pairs.prompts(), *without_prompts], max_tokens=int(model.cfg.n_ctx))
    return collect_activations(model, pairs.prompts(), **kw), collect_activations(model, without_prompts, **kw)


def check_distinct_layers(layers: Sequence[int]) -> list[int]:
    """Refuse a layer list that names a layer twice (``--layers 1,1,2``): a direction has one vector per layer."""
    layers = list(layers)
    repeated = sorted(x for x, n in Counter(layers).items() if n > 1)  # linear: a long --layers range stays fast
    if repeated:
        raise LayerError(f"layers: {', '.join(map(str, repeated))} given more than once ({_ranges(layers)})")
    return layers


def check_pairs_differ(pairs: Any) -> None:
    """Refuse, before any activation is computed, pairs whose prompts equal their instruction-free twins."""
    without = pairs.prompts_without_instruction()
    same = sum(a == b for a, b in zip(pairs.prompts(), without))
    if same == len(without):
        raise DatasetError(
            f"every one of the {same} pairs has the same prompt with and without the instruction; "
            "the mean difference would be zero (is 'prompt_without_instruction' filled in right?)"
        )


def compute_direction(
    model: Any,
    pairs: Any,
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    name: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    truncate: str | None = None,
    method: str = "mean",
    seed: int = 0,
) -> Direction:
    """One direction from all rows of ``pairs`` (a ``PairDataset``), pooled over phrasings.

    ``method``: ``mean`` (the paper's mean difference, default), ``pca``, ``probe``, ``whitened`` or ``random``
    (seeded); see :mod:`workbench.estimators`. Refused before any work: an unknown method or too few pairs for it,
    repeated layers, pairs whose two prompts are all identical, prompts past the model's context (unless
    ``truncate="left"``); afterwards, an all-zero difference.

    >>> title = compute_direction(model, load_pairs("format", "detectable_format:title"))
    >>> probe = compute_direction(model, load_pairs("format", "detectable_format:title"), method="probe")
    """
    if len(pairs) == 0:
        raise DatasetError("compute_direction: the pair dataset is empty")
    from .estimators import check_method

    check_method(method, len(pairs))
    layers = check_distinct_layers(check_layers(model, layers))
    check_pairs_differ(pairs)
    ids = pairs.instruction_ids()
    if name is None:
        name = ids[0] if len(ids) == 1 else "+".join(ids)
    with_acts, without_acts = pair_activations(model, pairs, layers, hook, batch_size, progress, truncate)
    return direction_from_activations(
        with_acts,
        without_acts,
        layers=layers,
        name=name,
        model_name=model_info(model).name,
        n_model_layers=int(model.cfg.n_layers),
        hook=hook,
        data_hash=pairs.hash(),
        extra={"instruction_ids": ids},
        method=method,
        seed=seed,
    )


def compute_directions_by_method(
    model: Any,
    pairs: Any,
    methods: Sequence[str] = ("mean", "pca", "probe", "whitened", "random"),
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Direction]:
    """The direction of each estimator in ``methods`` from one set of cached pair activations, keyed by method.

    >>> by = compute_directions_by_method(model, load_pairs("format", "detectable_format:title"), ("mean", "probe"))
    """
    from .estimators import check_method

    if len(pairs) == 0:
        raise DatasetError("compute_directions_by_method: the pair dataset is empty")
    if not methods:
        raise DatasetError("compute_directions_by_method: no methods given")
    for method in methods:
        check_method(method, len(pairs))
    layers = check_distinct_layers(check_layers(model, layers))
    check_pairs_differ(pairs)
    ids = pairs.instruction_ids()
    name = ids[0] if len(ids) == 1 else "+".join(ids)
    with_acts, without_acts = pair_activations(model, pairs, layers, hook, batch_size, progress)
    return {m: direction_from_activations(with_acts, without_acts, layers=layers, name=name, model_name=model_info(model).name,
                                          n_model_layers=int(model.cfg.n_layers), hook=hook, data_hash=pairs.hash(),
                                          extra={"instruction_ids": ids}, method=m, seed=seed)
            for m in dict.fromkeys(methods)}


def compute_directions(
    model: Any,
    pairs: Any,
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Direction]:
    """One :class:`Direction` per instruction id in ``pairs``, keyed by that id."""
    if len(pairs) == 0:
        raise DatasetError("compute_directions: the pair dataset is empty")
    return {
        iid: compute_direction(
            model, pairs.filter(instruction=iid), layers, hook, iid, batch_size, progress
        )
        for iid in pairs.instruction_ids()
    }
