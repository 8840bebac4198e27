"""Steering that differs from one batch row to the next: several sweep units in one decode batch.

Row ``i`` of a batch gets its own list of :class:`~.spec.SteeringSpec` (any direction, layer, mode,
strength, target and positions; empty: unsteered). At each steered site (hook, layer) the specs become
``K`` slots of per-row tensors applied in order with :func:`~.spec.shift`, the formula every path uses,
so a row gets the same steering bits as when it is decoded alone. Example::

    rows = RowSteering.build([[title_spec], [], [lower_spec, title_spec]], n_layers=30, d_model=576)
    generate(model, prompts, row_steering=rows.specs)   # the usual entry point
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Bool, Float

from ..errors import SteeringError, WorkbenchError
from .spec import SteeringSpec, resolve_specs, shift

POSITION_CODES = {"all": 0, "prompt": 1, "generated": 2}
PHASES = {"prompt": ("all", "prompt"), "generated": ("all", "generated")}  # spec positions acting in each phase


def write_slot(spec: SteeringSpec, a: torch.Tensor, u: torch.Tensor, g: torch.Tensor, t: torch.Tensor) -> None:
    """Write one spec into the slot views ``a, u: [1, d]`` and ``g, t: [1]`` read by :func:`~.spec.shift`
    (the per-row tables here and the compiled step's tables share it)."""
    unit = spec.unit.to(device=u.device, dtype=u.dtype)
    coeff, gain, target = spec.coefficients()
    u[0] = unit
    a[0] = coeff * unit
    g[0], t[0] = gain, target


@dataclass
class SlotTable:
    """The ``K`` slots of one site for ``B`` rows: ``a, u: [K, B, 1, d]``, ``g, t: [K, B, 1]``, ``code: [K, B]``
    (which positions each slot steers: 0 all, 1 prompt, 2 generated, -1 empty)."""

    a: torch.Tensor
    u: torch.Tensor
    g: torch.Tensor
    t: torch.Tensor
    code: torch.Tensor


@dataclass
class RowSteering:
    """Per-row steering of one batch: ``specs[i]`` applies to row ``i``, in order."""

    specs: tuple[tuple[SteeringSpec, ...], ...]
    _tables: dict = field(default_factory=dict, repr=False, compare=False)
    _sites: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self._sites = frozenset((s.hook, s.layer) for row in self.specs for s in row)

    @classmethod
    def build(cls, row_specs: Sequence[Sequence[SteeringSpec]], n_layers: int, d_model: int) -> "RowSteering":
        """Check every row's specs against a model of ``n_layers`` blocks of width ``d_model``."""
        rows = []
        for i, specs in enumerate(row_specs):
            if isinstance(specs, SteeringSpec):
                raise SteeringError(f"row_steering[{i}] must be a list of SteeringSpec (one list per prompt), got one spec")
            specs = tuple(specs)
            if specs:
                try:
                    resolve_specs(specs, n_layers, d_model)
                except WorkbenchError as exc:
                    raise type(exc)(f"row_steering[{i}]: {exc}") from None
                for spec in specs:
                    if not isinstance(spec, SteeringSpec):
                        raise SteeringError(f"row_steering[{i}] holds a {type(spec).__name__}; pass SteeringSpec "
                                            "objects (workbench.steering.make_spec)")
            rows.append(specs)
        return cls(tuple(rows))

    def __len__(self) -> int:
        return len(self.specs)

    def __bool__(self) -> bool:
        return any(self.specs)

    def rows(self, start: int, stop: int) -> "RowSteering":
        """The steering of rows ``start:stop`` (one generation batch)."""
        return RowSteering(self.specs[start:stop])

    def sites(self) -> list[tuple[str, int]]:
        """Every (hook, layer) some row steers, in a fixed order."""
        return sorted(self._sites)

    def table(self, hook: str, layer: int, dtype: torch.dtype, device: torch.device | str) -> SlotTable:
        """The slot tensors of one site (built once per dtype and device)."""
        key = (hook, layer, dtype, str(device))
        if key not in self._tables:
            per_row = [[s for s in row if s.hook == hook and s.layer == layer] for row in self.specs]
            k, b = max((len(r) for r in per_row), default=0), len(per_row)
            d = next(s.unit.shape[0] for r in per_row for s in r)
            a = torch.zeros(k, b, 1, d, dtype=dtype, device=device)
            u = torch.zeros_like(a)
            g = torch.zeros(k, b, 1, dtype=dtype, device=device)
            t = torch.zeros_like(g)
            code = torch.full((k, b), -1, dtype=torch.int8, device=device)
            for i, specs in enumerate(per_row):
                for slot, spec in enumerate(specs):
                    write_slot(spec, a[slot, i], u[slot, i], g[slot, i], t[slot, i])
                    code[slot, i] = POSITION_CODES[spec.positions]
            self._tables[key] = SlotTable(a, u, g, t, code)
        return self._tables[key]

    def apply(
        self, hook: str, layer: int, x: Float[torch.Tensor, "batch pos d_model"],
        in_prompt: Bool[torch.Tensor, "pos"] | None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Steer ``x`` at one site; ``in_prompt`` marks prompt positions (None: every position counts as prompt)."""
        if x.shape[0] != len(self.specs):
            raise SteeringError(f"row steering for {len(self.specs)} rows applied to a batch of {x.shape[0]}")
        if (hook, layer) not in self._sites:
            return x
        table = self.table(hook, layer, x.dtype, x.device)
        if in_prompt is None:
            in_prompt = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
        for slot in range(table.a.shape[0]):
            code = table.code[slot][:, None]  # [B, 1]
            keep = (code == 0) | ((code == 1) & in_prompt[None, :]) | ((code == 2) & ~in_prompt[None, :])
            x = shift(x, table.a[slot], table.u[slot], table.g[slot], table.t[slot], keep.to(x.dtype))
        return x
