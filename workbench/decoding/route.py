"""From a call's arguments to the engine that decodes it: :func:`choose_engine` (the one routing rule) and
:func:`make_engine` (the engine itself).

========== ===========================================================================================
engine     when
========== ===========================================================================================
reference  ``use_cache=False``: the full sequence re-run per token (:mod:`.reference`)
compiled   ``backend="compiled"``: the static cache and a compiled step (:mod:`.compiled`)
bridge     ``backend="bridge"``, or hooks only the bridge runs (:mod:`.bridge`)
eager      per-row steering (``row_steering``), greedy, on plain layers: packed rows (:mod:`.static`)
plain      otherwise: ``transformers``' generate on plain layers (:mod:`.plain`)
========== ===========================================================================================
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import WorkbenchError
from .bridge import BridgeEngine
from .compiled import CompiledEngine
from .engine import Engine
from .plain import PlainEngine
from .prompt_states import PromptStates
from .reference import ReferenceEngine
from .static import EagerEngine, static_model_for

ENGINES: tuple[str, ...] = ("reference", "compiled", "bridge", "eager", "plain")


def choose_engine(backend: str, use_cache: bool, do_sample: bool, plain: bool, per_row: bool) -> str:
    """The engine of a call (see the module's table). ``plain``: the plain layers can reproduce every active hook
    (and ``backend`` is not ``"bridge"``); ``per_row``: the call steers rows on their own."""
    if not use_cache:
        return "reference"
    if backend == "compiled":
        return "compiled"
    if not plain:
        return "bridge"
    return "eager" if per_row and not do_sample else "plain"


def make_engine(name: str, model: Any, plain: torch.nn.Module | None, states: PromptStates | None = None) -> Engine:
    """The engine ``name`` for ``model`` (``plain``: its weight-sharing plain model; ``states``: kept prompt states
    the eager engine starts prompt passes from, run on ``plain``)."""
    if name == "reference":
        return ReferenceEngine(model)
    if name == "bridge":
        return BridgeEngine(model)
    if name == "plain":
        return PlainEngine(plain)
    if name == "eager":
        return EagerEngine(static_model_for(model), states, plain)
    if name == "compiled":
        return CompiledEngine(static_model_for(model))
    raise WorkbenchError(f"unknown engine {name!r}; choose one of {ENGINES}")
