"""``from workbench.generation import generate``: the module's old home, kept for notebooks and scripts that import
from it. Decoding lives in :mod:`workbench.decoding` (the engines, their routing, and the public
:func:`~workbench.decoding.generation.generate`)."""

from .decoding.driver import eos_token_ids
from .decoding.generation import generate
from .models.backends import GENERATION_BACKENDS

BACKENDS = GENERATION_BACKENDS  # kept importable from here

__all__ = ["BACKENDS", "eos_token_ids", "generate"]
