"""Steering, in one place: the spec and its arithmetic (:mod:`.spec`), and one adapter per execution path.

- :mod:`.bridge`: ``steer(model, direction, layer=..., mode=...)``, TransformerLens hooks on the bridge;
- :mod:`.plain`: ``hf_steer(hf_model, ...)``, forward hooks on a plain ``transformers`` model's decoder
  layers (the fast KV-cached path of ``generate`` re-applies the active specs there);
- :mod:`.compiled`: the specs as slot tensors read inside the compiled decoding step;
- :mod:`.condition`: ``steer(..., condition=Condition(...))``, each row steered only if its own prompt passes a gate.

Example::

    import workbench as wb
    with wb.steer(model, direction, layer=24, mode="project"):
        print(wb.generate(model, ["Write a short poem about the sea."])[0])
"""

from .bridge import steer
from .condition import Condition, ConditionalSteering, ConditionError, GateDecisions, GateFit, fit_condition
from .plain import hf_steer, hidden_size
from .spec import MODES, POSITIONS, GenerationState, SteeringSpec, make_spec, resolve_specs

__all__ = ["Condition", "ConditionError", "ConditionalSteering", "GateDecisions", "GateFit", "MODES", "POSITIONS", "GenerationState", "SteeringSpec", "hf_steer", "hidden_size", "make_spec",
           "fit_condition", "resolve_specs", "steer"]
