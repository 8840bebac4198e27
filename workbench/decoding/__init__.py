"""Decoding, in one place: a small engine interface and one engine per path, the routing between them, and what
decoding keeps for scoring.

- :mod:`.engine`: the interface (``prefill``, ``step``, rows that ended leave with ``keep_rows``, a ``capture`` of what
  a step records for scoring) and the token loop the workbench's own engines share (:func:`~.engine.run_steps`);
- one engine per path: :mod:`.reference` (full re-run per token), :mod:`.bridge` (TransformerLens bridge with a KV
  cache), :mod:`.plain` (plain ``transformers`` layers, ``generate`` with re-applied steering hooks), :mod:`.static`
  (the static-cache eager loop: packed rows, compaction, starts from kept states) and :mod:`.compiled` (the
  compiled static step);
- :mod:`.route`: which engine a call's arguments choose;
- :mod:`.prompt_states` (prompt KV caches kept across calls, scoring on them), :mod:`.from_layer` (a forward pass
  started at a layer) and :mod:`.capture` (what a decode records so its responses are scored from there);
- :mod:`.driver`: one call batch by batch, and :func:`decode_packed`, the engine API the sweep calls;
- :mod:`.generation`: the public :func:`generate`.

Example::

    import workbench as wb
    wb.generate(model, ["Describe a rainy afternoon."], max_new_tokens=32)
    out = wb.decoding.decode_packed(model, prompts, row_specs, max_new_tokens=48, batch_size=160, states=states)
"""

from .driver import Decoded, decode_packed, eos_token_ids
from .engine import Batch, Engine, Sampling, StepEngine
from .from_layer import LayerStart, first_changed_layer, from_layer
from .generation import generate
from .prompt_states import PromptStates, response_logprobs_cached
from .route import ENGINES, choose_engine

__all__ = ["Batch", "Decoded", "ENGINES", "Engine", "LayerStart", "PromptStates", "Sampling", "StepEngine", "choose_engine",
           "decode_packed", "eos_token_ids", "first_changed_layer", "from_layer", "generate", "response_logprobs_cached"]
