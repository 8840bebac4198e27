"""Plotly figures of instruction directions; each ``*_figure`` function returns a ``plotly`` figure.

Each figure's numbers come from a plain function next to it (``projections``, ``layer_cosine``,
``instruction_cosine``, ``activation_pca``, ``vocab_projection``, ``token_projections``,
``sweep_grid``, ``condition_table``) so they can be checked or reused without plotting.
``workbench figures`` regenerates them all for the embedded model (docs/figures.md).
"""

from .export import find_chromium, save_figure, save_html, save_image, save_images, screenshot_html, write_plotlyjs
from .inputs import directions_from, instruction_activations
from .logit_lens import VocabProjection, direction_logits, logit_lens_figure, unembedding, vocab_projection
from .pca import PCAPoints, PCAResult, activation_pca, pca_figure, pca_points
from .projections import projection_figure, projections
from .records import CONDITIONS, CONDITION_KEYS, SWEEP_KEYS, RecordError, condition_records, sweep_records
from .similarity import (cluster_order, instruction_cosine, instruction_cosine_figure, layer_cosine, layer_cosine_figure,
                         method_cosine, method_cosine_figure)
from .sweeps import SweepGrid, condition_table, conditions_figure, strength_curve, strength_figure, sweep_grid, sweep_heatmap_figure
from .tokens import TokenProjections, token_html, token_projection_figure, token_projections

__all__ = [
    "CONDITIONS", "CONDITION_KEYS", "PCAPoints", "PCAResult", "RecordError", "SWEEP_KEYS", "SweepGrid",
    "TokenProjections", "VocabProjection", "activation_pca", "cluster_order", "condition_records", "condition_table",
    "conditions_figure", "direction_logits", "directions_from", "find_chromium", "instruction_activations",
    "instruction_cosine", "instruction_cosine_figure", "layer_cosine", "layer_cosine_figure", "logit_lens_figure",
    "method_cosine", "method_cosine_figure",
    "pca_figure", "pca_points", "projection_figure", "projections", "save_figure", "save_html", "save_image",
    "save_images", "screenshot_html", "strength_curve", "strength_figure", "sweep_grid", "sweep_heatmap_figure",
    "sweep_records", "token_html", "write_plotlyjs", "token_projection_figure", "token_projections", "unembedding", "vocab_projection",
]
