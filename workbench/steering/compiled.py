"""Steering in a compiled decoding step: the active specs held as per-layer slot tensors.

The compiled step (:mod:`workbench.decoding.compiled`) reads these tensors from hooks inside its
graph, so new directions, strengths, modes and layers reuse the compiled code. The arithmetic is
:func:`~.spec.shift`: ``x + a + g * (t - x @ u) * u``, per row when the rows of a batch steer differently.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float

from .rows import PHASES, write_slot
from .spec import SteeringSpec, shift


class SteeringSlots:
    """The active steering as tensors ``[n_layers, K, R, ...]``: at each layer, K slots applied in order as
    ``x <- x + a + g * (t - x @ u) * u`` (add: ``a = coeff * u``; project: ``g = 1, t = target``;
    ablate: ``g = 1, t = 0``; an empty slot is all zeros and leaves ``x`` unchanged). ``R`` is 1 when every
    row steers alike, else the batch size (one slot row per batch row)."""

    def __init__(self, n_layers: int, d_model: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n_layers, self.d_model, self.dtype, self.device = n_layers, d_model, dtype, device
        self.tables: dict[str, dict[str, torch.Tensor]] = {}
        for hook in ("resid_pre", "resid_post"):
            self._allocate(hook, 0, 1)

    def _allocate(self, hook: str, k: int, r: int) -> None:
        z = lambda *shape: torch.zeros(self.n_layers, k, r, *shape, dtype=self.dtype, device=self.device)  # noqa: E731
        self.tables[hook] = {"a": z(1, self.d_model), "u": z(1, self.d_model), "g": z(1), "t": z(1)}

    def load(self, specs: Sequence[SteeringSpec], phase: str) -> None:
        """Write the specs that act on ``phase`` ("prompt" or "generated") tokens for every row; clear the rest."""
        self.load_rows([specs], phase)

    def load_rows(self, row_specs: Sequence[Sequence[SteeringSpec]], phase: str) -> None:
        """Row ``i`` steered by ``row_specs[i]`` (one list for all rows: the same steering everywhere)."""
        for hook in self.tables:
            per_row = [[s for s in specs if s.hook == hook] for specs in row_specs]
            counts = [len([s for s in row if s.layer == layer]) for row in per_row for layer in {s.layer for s in row}]
            k, r = max(counts, default=0), len(row_specs)
            table = self.tables[hook]
            if table["a"].shape[1:3] != (k, r):
                self._allocate(hook, k, r)
                table = self.tables[hook]
            for tensor in table.values():
                tensor.zero_()
            for i, row in enumerate(per_row):
                used: dict[int, int] = {}
                for spec in row:
                    slot = used[spec.layer] = used.get(spec.layer, -1) + 1
                    if spec.positions not in PHASES[phase]:
                        continue
                    at = (spec.layer, slot, i)
                    write_slot(spec, table["a"][at], table["u"][at], table["g"][at], table["t"][at])

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the slot rows of the batch rows ``rows`` (decoding dropped the others); tables shared by all rows stay."""
        for hook, table in self.tables.items():
            if table["a"].shape[2] > 1:
                self.tables[hook] = {name: tensor[:, :, rows] for name, tensor in table.items()}

    def apply(self, hook: str, layer: int, x: Float[torch.Tensor, "batch pos d_model"]) -> torch.Tensor:
        table = self.tables[hook]
        for slot in range(table["a"].shape[1]):
            x = shift(x, table["a"][layer, slot], table["u"][layer, slot], table["g"][layer, slot], table["t"][layer, slot])
        return x
