"""Transfer of instruction directions between models of different widths through maps between residual streams.

``fit_map`` fits one map (affine, orthogonal or identity) on the last token of texts that exclude the transferred
instruction's pairs; ``match_layers`` tabulates the held-out fit for every layer pair; ``transfer_direction`` carries a
Direction through the maps into the target model.

>>> match = wb.match_layers(qwen, smol, texts, exclude=title_pairs)
>>> title_smol = wb.transfer_direction(title_qwen, match.maps_for())
"""

from .direct import random_like, transfer_cosines, transfer_direction
from .maps import KINDS, MIN_PROMPTS, ResidualMap, fit_map, fit_map_from_activations, load_maps, save_maps
from .match import LayerMatch, linear_cka, match_from_activations, match_layers

__all__ = [
    "KINDS", "MIN_PROMPTS", "LayerMatch", "ResidualMap", "fit_map", "fit_map_from_activations", "linear_cka", "load_maps",
    "match_from_activations",
    "match_layers", "random_like", "save_maps", "transfer_cosines", "transfer_direction",
]
