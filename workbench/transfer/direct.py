"""Directions of one model carried into another through residual-stream maps, and the random null of the same norm."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from jaxtyping import Float

from ..directions import Direction, direction_from_activations
from ..errors import LayerError, ShapeError, WorkbenchError
from .maps import ResidualMap


def _check_maps(direction: Direction, maps: Sequence[ResidualMap]) -> list[ResidualMap]:
    """Every map starts at one of the direction's layers of its model; all end in one target model, each at its own layer."""
    maps = [maps] if isinstance(maps, ResidualMap) else list(maps)
    if not maps or not all(isinstance(m, ResidualMap) for m in maps):
        raise WorkbenchError("transfer_direction: give one ResidualMap or a list of them")
    for m in maps:
        if (m.source_model, m.d_source, m.n_source_layers) != (direction.model_name, direction.d_model, direction.n_model_layers):
            raise ShapeError(f"map {m.label} starts at {m.source_model} ({m.n_source_layers} layers x {m.d_source}); direction "
                             f"{direction.name!r} is of {direction.model_name} ({direction.n_model_layers} layers x {direction.d_model})")
        if m.source_layer not in direction.layers:
            raise LayerError(f"map {m.label} starts at layer {m.source_layer}; direction {direction.name!r} has no vector there")
        if m.hook != direction.hook:
            raise WorkbenchError(f"map {m.label} maps {m.hook}; direction {direction.name!r} is of {direction.hook}")
    ends = {(m.target_model, m.d_target, m.n_target_layers) for m in maps}
    if len(ends) > 1:
        raise ShapeError(f"transfer_direction: the maps end in different models: {sorted(e[0] for e in ends)}")
    targets = [m.target_layer for m in maps]
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise LayerError(f"transfer_direction: several maps end at target layer(s) {repeated}; give one map per target layer")
    return sorted(maps, key=lambda m: m.target_layer)


def _provenance(direction: Direction, maps: Sequence[ResidualMap]) -> dict[str, Any]:
    return {"source_model": direction.model_name, "source_direction": direction.name, "source_n_pairs": direction.n_pairs,
            "source_data_hash": direction.data_hash, "kind": sorted({m.kind for m in maps}),
            "layers": [{"source_layer": m.source_layer, "target_layer": m.target_layer, "kind": m.kind,
                        "r2": m.metrics.get("r2"), "centred_cosine": m.metrics.get("centred_cosine"),
                        "n_fit": m.metrics.get("n_fit"), "n_heldout": m.metrics.get("n_heldout"),
                        "regularisation": m.regularisation, "fit_texts": m.extra.get("fit_texts")} for m in maps]}


def transfer_direction(
    direction: Direction,
    maps: ResidualMap | Sequence[ResidualMap],
    pair_activations: tuple[Float[torch.Tensor, "n n_layers d_source"], Float[torch.Tensor, "n n_layers d_source"]] | None = None,
    name: str | None = None,
) -> Direction:
    """``direction`` as a Direction of the maps' target model, at every target layer that has a map.

    Each vector is the mapped mean difference (the bias cancels), i.e. the mean difference of the mapped pair
    activations. ``pair_activations`` (the source's with/without activations at ``direction.layers``, as from
    ``pair_activations``) also gives the mapped projection statistics that ``mode="project"`` needs.
    Provenance (source model and direction, each map's layers and held-out fit) is in ``extra["transfer"]``.

    >>> title_b = wb.transfer_direction(title_a, match.maps_for()); wb.steer(model_b, title_b, layer=20, mode="add")
    """
    if not isinstance(direction, Direction):
        raise WorkbenchError(f"transfer_direction: expected a Direction, got {type(direction).__name__}")
    maps = _check_maps(direction, maps)
    first = maps[0]
    extra = {**{k: v for k, v in direction.extra.items() if k not in ("selection", "paper_selection")},
             "transfer": _provenance(direction, maps)}
    name = name or direction.name
    layers = [m.target_layer for m in maps]
    if pair_activations is not None:
        with_acts, without_acts = pair_activations
        want = (with_acts.shape[0], len(direction.layers), direction.d_model)
        if tuple(with_acts.shape) != want or tuple(without_acts.shape) != want:
            raise ShapeError(f"pair_activations: expected two {want} tensors, got {tuple(with_acts.shape)} and {tuple(without_acts.shape)}")
        idx = [direction.layers.index(m.source_layer) for m in maps]
        mapped_with = torch.stack([m(with_acts[:, i]) for m, i in zip(maps, idx)], 1)
        mapped_without = torch.stack([m(without_acts[:, i]) for m, i in zip(maps, idx)], 1)
        out = direction_from_activations(mapped_with, mapped_without, layers=layers, name=name, model_name=first.target_model,
                                         n_model_layers=first.n_target_layers, hook=direction.hook, data_hash=direction.data_hash,
                                         extra=extra)
        return out
    vectors = torch.stack([m.map_vector(direction.at(m.source_layer).vector) for m in maps])
    return Direction(vectors=vectors, layers=tuple(layers), name=name, model_name=first.target_model, d_model=first.d_target,
                     n_model_layers=first.n_target_layers, hook=direction.hook, n_pairs=direction.n_pairs,
                     data_hash=direction.data_hash, extra=extra)


def random_like(direction: Direction, seed: int = 0,
                without_acts: Float[torch.Tensor, "n n_layers d_model"] | None = None) -> Direction:
    """A random direction with ``direction``'s norm at every layer (the null of a steering comparison).

    With ``without_acts`` (instruction-free activations at ``direction.layers``) it also gets projection statistics
    that move the mean projection by as much as ``direction``'s do, so ``mode="project"`` steers it the same distance.

    >>> null = random_like(title_b, seed=0)
    """
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(direction.vectors.shape, generator=g)
    vectors = raw / raw.norm(dim=-1, keepdim=True) * direction.norms[:, None]
    proj_with = proj_without = None
    if without_acts is not None and direction.proj_with is not None and direction.proj_without is not None:
        units = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        proj_without = torch.einsum("nld,ld->nl", without_acts.float(), units).mean(0)
        proj_with = proj_without + (direction.proj_with - direction.proj_without)
    return replace(direction, vectors=vectors, name=f"random({direction.name})", proj_with=proj_with, proj_without=proj_without,
                   extra={**direction.extra, "random": {"seed": seed, "norm_of": direction.name}})


def transfer_cosines(transferred: Direction, own: Direction, null: Direction | None = None) -> list[dict[str, Any]]:
    """Per target layer of ``transferred``: its cosine with the target model's ``own`` direction (and ``null``'s, e.g.
    :func:`random_like`), both norms, and the source layer and held-out fit of the map that carried it there.

    >>> rows = transfer_cosines(title_b, own_b, random_like(title_b)); cosine_figure(rows)   # workbench.transfer.figures
    """
    if own.model_name != transferred.model_name or own.d_model != transferred.d_model:
        raise ShapeError(f"transfer_cosines: the transferred direction is of {transferred.model_name} (d_model {transferred.d_model}), "
                         f"the own one of {own.model_name} (d_model {own.d_model})")
    missing = [t for t in transferred.layers if t not in own.layers]
    if missing:
        raise LayerError(f"transfer_cosines: the own direction has no vector at layer(s) {missing}")
    if null is not None and list(null.layers) != list(transferred.layers):
        raise LayerError(f"transfer_cosines: the null has layers {list(null.layers)}, the transferred direction {list(transferred.layers)}")
    maps = {m["target_layer"]: m for m in transferred.extra.get("transfer", {}).get("layers", [])}
    cos = lambda a, b: round(float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0)), 4)  # noqa: E731
    out = []
    for t in transferred.layers:
        v, o, m = transferred.at(t).vector, own.at(t).vector, maps.get(t, {})
        out.append({"instruction_id": transferred.name, "target_layer": t, "source_layer": m.get("source_layer"),
                    "cos_transferred_own": cos(v, o), "cos_random_own": None if null is None else cos(null.at(t).vector, o),
                    "norm_transferred": round(float(v.norm()), 3), "norm_own": round(float(o.norm()), 3),
                    "map_r2": m.get("r2"), "map_centred_cosine": m.get("centred_cosine"), "n_fit": m.get("n_fit"),
                    "n_heldout": m.get("n_heldout")})
    return out
