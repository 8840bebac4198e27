"""Inputs of the analysis figures: several instructions' pair activations, each distinct prompt run once.

Built-in pair sets of different instructions share their base queries, so their prompts without
the instruction are the same strings; running each distinct prompt once halves the cost.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float

from ..activations import collect_activations
from ..directions import Direction, direction_from_activations
from ..errors import DatasetError
from ..hooks import check_layers
from ..models.loading import model_info

PairActs = tuple[Float[torch.Tensor, "n n_layers d_model"], Float[torch.Tensor, "n n_layers d_model"]]


def instruction_activations(
    model: Any,
    pair_sets: Mapping[str, Any],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, PairActs]:
    """``{name: (with_acts, without_acts)}`` last-token activations for each ``PairDataset``, each prompt run once."""
    if not pair_sets:
        raise DatasetError("instruction_activations: no pair sets given")
    texts: dict[str, int] = {}
    plan: dict[str, tuple[list[int], list[int]]] = {}
    for name, pairs in pair_sets.items():
        pairs.require_nonempty(f"pairs of {name!r}")
        idx = []
        for group in (pairs.prompts(), pairs.prompts_without_instruction()):
            idx.append([texts.setdefault(t, len(texts)) for t in group])
        plan[name] = (idx[0], idx[1])
    acts = collect_activations(model, list(texts), layers=layers, batch_size=batch_size, progress=progress)
    return {name: (acts[w], acts[wo]) for name, (w, wo) in plan.items()}


def directions_from(
    model: Any, acts: Mapping[str, PairActs], layers: Sequence[int] | None = None, pair_sets: Mapping[str, Any] | None = None
) -> dict[str, Direction]:
    """A :class:`Direction` per instruction from :func:`instruction_activations` output (same layers)."""
    layers = check_layers(model, layers)
    return {
        name: direction_from_activations(
            w, wo, layers=layers, name=name, model_name=model_info(model).name, n_model_layers=int(model.cfg.n_layers),
            data_hash=pair_sets[name].hash() if pair_sets is not None else "",
        )
        for name, (w, wo) in acts.items()
    }
