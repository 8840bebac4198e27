"""Steering in a compiled decoding step: the active specs held as per-layer slot tensors.

The compiled step (:mod:`workbench.static_decoding`) reads these tensors from hooks inside its
graph, so new directions, strengths, modes and layers reuse the compiled code. The arithmetic is
:meth:`SteeringSpec.apply`'s, written for tensors: ``x + a + g * (t - x @ u) * u``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float

from .spec import SteeringSpec

# Which spec positions act on the prompt pass and on the generated-token passes.
PHASES = {"prompt": ("all", "prompt"), "generated": ("all", "generated")}


class SteeringSlots:
    """The active steering as tensors: at each layer, K slots applied in order as
    ``x <- x + a + g * (t - x @ u) * u`` (add: ``a = coeff * u``; project: ``g = 1, t = target``;
    ablate: ``g = 1, t = 0``; an empty slot is all zeros and leaves ``x`` unchanged)."""

    def __init__(self, n_layers: int, d_model: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n_layers, self.d_model, self.dtype, self.device = n_layers, d_model, dtype, device
        self.tables: dict[str, dict[str, torch.Tensor]] = {}
        for hook in ("resid_pre", "resid_post"):
            self._allocate(hook, 0)

    def _allocate(self, hook: str, k: int) -> None:
        z = lambda *shape: torch.zeros(self.n_layers, k, *shape, dtype=self.dtype, device=self.device)  # noqa: E731
        self.tables[hook] = {"a": z(self.d_model), "u": z(self.d_model), "g": z(), "t": z()}

    def load(self, specs: Sequence[SteeringSpec], phase: str) -> None:
        """Write the specs that act on ``phase`` ("prompt" or "generated") tokens; clear the rest."""
        for hook, table in self.tables.items():
            mine = [s for s in specs if s.hook == hook]
            per_layer: dict[int, list[SteeringSpec]] = {}
            for spec in mine:
                per_layer.setdefault(spec.layer, []).append(spec)
            k = max((len(v) for v in per_layer.values()), default=0)
            if table["a"].shape[1] != k:
                self._allocate(hook, k)
                table = self.tables[hook]
            for tensor in table.values():
                tensor.zero_()
            for layer, layer_specs in per_layer.items():
                for slot, spec in enumerate(layer_specs):
                    if spec.positions not in PHASES[phase]:
                        continue
                    u = spec.unit.to(device=self.device, dtype=self.dtype)
                    table["u"][layer, slot] = u
                    if spec.mode == "add":
                        table["a"][layer, slot] = spec.coeff * u
                    else:
                        table["g"][layer, slot] = 1.0
                        table["t"][layer, slot] = 0.0 if spec.mode == "ablate" else float(spec.target)

    def apply(self, hook: str, layer: int, x: Float[torch.Tensor, "batch pos d_model"]) -> torch.Tensor:
        table = self.tables[hook]
        for slot in range(table["a"].shape[1]):
            u = table["u"][layer, slot]
            proj = x @ u
            x = x + (table["a"][layer, slot] + (table["g"][layer, slot] * (table["t"][layer, slot] - proj))[..., None] * u)
        return x
