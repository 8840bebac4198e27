"""The steering spec and its arithmetic, once: what an intervention is (:class:`SteeringSpec`), how it changes
a residual stream (:meth:`SteeringSpec.apply`), and how user arguments become specs (:func:`resolve_specs`).

Each execution path applies these specs through its own adapter: :mod:`.bridge` (TransformerLens hooks),
:mod:`.plain` (plain ``transformers`` decoder layers) and :mod:`.compiled` (slot tensors in a compiled step)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..directions import Direction, LayerDirection, unit_vector
from ..errors import LayerError, ShapeError, SteeringError

MODES = ("add", "project", "ablate")
POSITIONS = ("all", "prompt", "generated")


@dataclass
class GenerationState:
    """Where the current forward pass sits in a generation, so hooks can tell prompt from generated tokens.

    ``start`` is the absolute position of the first token of the current forward pass and
    ``prompt_len`` the (padded) prompt length; outside :func:`workbench.generate` there is no
    state and every position counts as prompt.
    """

    prompt_len: int
    use_cache: bool
    start: int = 0
    seen: int = 0

    def on_embed(self, n_tokens: int) -> None:
        if self.use_cache:
            self.start, self.seen = self.seen, self.seen + n_tokens
        else:
            self.start, self.seen = 0, n_tokens

    def prompt_mask(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        return torch.arange(self.start, self.start + n_tokens, device=device) < self.prompt_len


@dataclass(frozen=True)
class SteeringSpec:
    """One intervention: a unit direction at one layer's residual stream.

    ``mode``: ``add`` adds ``coeff * u``; ``project`` sets the projection on ``u`` to ``target``
    (default: the mean projection of instructed prompts stored with the direction, as in the
    paper); ``ablate`` removes the component along ``u``. ``positions``: ``all``, ``prompt`` or
    ``generated`` tokens.
    """

    unit: Float[torch.Tensor, "d_model"]
    layer: int
    coeff: float = 1.0
    mode: str = "add"
    positions: str = "all"
    target: float | None = None
    hook: str = "resid_post"
    name: str = "direction"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SteeringError(f"unknown steering mode {self.mode!r}; choose one of {MODES}")
        if self.positions not in POSITIONS:
            raise SteeringError(f"unknown positions {self.positions!r}; choose one of {POSITIONS}")
        if self.mode == "project" and self.target is None:
            raise SteeringError(
                f"{self.name}: project mode needs a target projection; this direction stores none "
                "(pass target=...)"
            )
        _as_layer(self.layer)
        for label, value in (("coeff", self.coeff), ("target", self.target)):
            if value is not None:
                try:
                    _as_number(label, value)
                except SteeringError as exc:
                    raise SteeringError(f"{self.name}: {exc}") from None
        self.check_finite(torch.float32)

    def check_finite(self, dtype: torch.dtype) -> None:
        """Refuse a spec whose effective vector (``coeff * u``, or ``target * u``) overflows ``dtype``: steering with
        it would fill the residual stream with infinities and decode an empty response without a word."""
        label, value = ("coeff", self.coeff) if self.mode == "add" else ("target", self.target)
        if value is None or not isinstance(self.unit, torch.Tensor):
            return
        effective = self.unit.detach().to(torch.float64) * float(value)
        square = float(effective.norm()) ** 2  # the next layer's normalisation sums squares in float32 (at least)
        if not torch.isfinite(effective.to(dtype)).all() or not square < torch.finfo(torch.float32).max:
            limit = torch.finfo(dtype).max
            raise SteeringError(f"{self.name}: {label} {float(value):g} makes a steering vector too large for {str(dtype).removeprefix('torch.')} "
                                f"(largest value {limit:.3g}); use a smaller {label}")

    def apply(self, x: Float[torch.Tensor, "batch pos d_model"], state: GenerationState | None) -> torch.Tensor:
        """The steered residual stream."""
        if x.shape[-1] != self.unit.shape[0]:
            raise ShapeError(
                f"{self.name}: direction has d_model={self.unit.shape[0]}, residual stream has {x.shape[-1]}"
            )
        u = self.unit.to(device=x.device, dtype=x.dtype)
        a, g, t = self.coefficients()
        keep = None
        if self.positions != "all":
            in_prompt = (
                state.prompt_mask(x.shape[1], x.device)
                if state is not None
                else torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
            )
            keep = (in_prompt if self.positions == "prompt" else ~in_prompt).to(x.dtype)
        return shift(x, a * u, u, g, t, keep)

    def coefficients(self) -> tuple[float, float, float]:
        """``(a, g, t)`` of :func:`shift` for this spec: the added multiple of ``u``, the projection gain and target."""
        if self.mode == "add":
            return self.coeff, 0.0, 0.0
        return 0.0, 1.0, 0.0 if self.mode == "ablate" else float(self.target)


def shift(
    x: Float[torch.Tensor, "batch pos d_model"],
    a: torch.Tensor,
    u: torch.Tensor,
    g: torch.Tensor | float,
    t: torch.Tensor | float,
    keep: torch.Tensor | None = None,
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``x + keep * (a + g * (t - <x, u>) * u)``: the one formula of every mode and execution path.

    add: ``a = coeff * u, g = 0``; project: ``a = 0, g = 1, t = target``; ablate: ``a = 0, g = 1, t = 0``.
    ``a``, ``u`` broadcast against ``x`` (``[d_model]``, or ``[batch, 1, d_model]`` for per-row steering), ``g``,
    ``t`` against ``x``'s ``[batch, pos]`` and ``keep`` (1: steer this position) too. The projection is an
    elementwise product summed over ``d_model``, so a row gets the same bits whatever batch it sits in.
    """
    proj = (x * u).sum(-1)
    delta = a + (g * (t - proj))[..., None] * u
    if keep is not None:
        delta = delta * keep[..., None]
    return x + delta


def make_spec(
    direction: Direction | LayerDirection | torch.Tensor | SteeringSpec,
    layer: int | None = None,
    coeff: float = 1.0,
    mode: str = "add",
    positions: str = "all",
    target: float | None = None,
    hook: str = "resid_post",
) -> SteeringSpec:
    """Build a :class:`SteeringSpec` from a direction object or a plain ``[d_model]`` tensor.

    ``layer`` must be an integer (``1.7`` is an error, not layer 1); ``coeff`` and ``target`` numbers.

    >>> spec = make_spec(title, layer=26, mode="project")
    """
    if isinstance(direction, SteeringSpec):
        return direction
    layer = _as_layer(layer)
    coeff = _as_number("coeff", coeff)
    target = None if target is None else _as_number("target", target)
    if isinstance(direction, Direction):
        if layer is None:
            if len(direction.layers) != 1:
                raise LayerError(f"direction {direction.name!r} covers several layers: pass layer=")
            layer = direction.layers[0]
        direction = direction.at(layer)
    if isinstance(direction, LayerDirection):
        if layer is not None and int(layer) != direction.layer:
            # a direction from one layer applied at another: allowed, the statistics still travel
            pass
        layer = direction.layer if layer is None else layer
        if target is None and mode == "project":
            target = direction.proj_with
        return SteeringSpec(
            unit=direction.unit, layer=int(layer), coeff=float(coeff), mode=mode,
            positions=positions, target=target, hook=hook, name=direction.name,
        )
    if isinstance(direction, torch.Tensor):
        if layer is None:
            raise LayerError("steering with a plain tensor needs layer=")
        vec = direction.detach().float().cpu()
        return SteeringSpec(
            unit=unit_vector(vec, "steering vector"), layer=int(layer), coeff=float(coeff), mode=mode,
            positions=positions, target=target, hook=hook, name="tensor",
        )
    raise SteeringError(f"cannot steer with a {type(direction).__name__}; pass a Direction or a tensor")


def _as_layer(layer: Any) -> int | None:
    """``layer`` as an int: Python or NumPy integers and one-element integer tensors; None stays None."""
    if layer is None:
        return None
    if isinstance(layer, torch.Tensor) and layer.numel() == 1 and not layer.is_floating_point() and layer.dtype != torch.bool:
        return int(layer)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise LayerError(f"layer must be an integer, got {layer!r}")
    return int(layer)


def _as_number(label: str, value: Any) -> float:
    """A finite real number (Python, NumPy or a one-element tensor), else a ``SteeringError``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SteeringError(f"{label} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SteeringError(f"{label} is {value}")
    return value


def resolve_specs(
    directions: tuple[Any, ...],
    n_layers: int,
    d_model: int,
    layer: int | None = None,
    coeff: float = 1.0,
    mode: str = "add",
    positions: str = "all",
    target: float | None = None,
    hook: str = "resid_post",
    dtype: torch.dtype | None = None,
) -> list[SteeringSpec]:
    """Specs for every direction, checked against a model of ``n_layers`` blocks of width ``d_model`` (and, given its
    ``dtype``, refused where the effective vector overflows it)."""
    if not directions:
        raise SteeringError("steering needs at least one direction or SteeringSpec")
    specs = [make_spec(d, layer, coeff, mode, positions, target, hook) for d in directions]
    for spec in specs:
        if not 0 <= spec.layer < n_layers:
            raise LayerError(f"layer {spec.layer} is out of range: this model has layers 0..{n_layers - 1}")
        if spec.unit.shape[0] != d_model:
            raise ShapeError(
                f"{spec.name}: direction has d_model={spec.unit.shape[0]}, the model has d_model={d_model} "
                "(a vector from another model?)"
            )
        if dtype is not None and dtype.is_floating_point:
            spec.check_finite(dtype)
    return specs
