"""Plotly figures of instruction directions; each function returns a ``plotly`` figure."""

from .export import save_figure
from .projections import projection_figure, projections

__all__ = ["projection_figure", "projections", "save_figure"]
