"""What a decode records for scoring its responses under the unsteered model (perplexity), and the layer starts
made from it.

Steering first changes the residual stream at some layer ``L`` (:func:`~.from_layer.first_changed_layer`); a steered
decode has then already computed the unsteered model's stream entering ``L`` at every token it fed back, so scoring
the response can start there (:class:`~.from_layer.LayerStart`). A row decoded with no steering at all *is* the
unsteered model: the log-probability of each token it picked is the score itself. Example::

    capture = Capture.for_rows(batch.row_specs())
    out = engine.decode(batch, capture)                   # an engine with ``records``
    start = capture.layer_start(0, response_tokens, n_layers)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float

from ..models.plain import layer_output
from ..steering.spec import SteeringSpec
from .from_layer import LayerStart, first_changed_layer


@dataclass
class Capture:
    """What an engine with ``records`` keeps for each row: the raw (unsteered) input of decoder layer ``layers[row]``
    at every token fed back (``hidden[row, step]``: the token generated at ``step``); ``None``: nothing for that row.
    For the rows ``scored`` (decoded with no steering at all) the log-probability of each token picked
    (``logprobs[row, step]``) instead."""

    layers: Sequence[int | None]
    scored: Sequence[bool] = ()  # rows decoded unsteered: their tokens' log-probabilities are recorded instead
    hidden: Float[torch.Tensor, "batch new d_model"] | None = None
    logprobs: Float[torch.Tensor, "batch new"] | None = None  # log p(token) of the ``scored`` rows, per step
    step: int | None = None  # the decoding step being computed (None during the prompt)
    alive: torch.Tensor | None = None  # the original row of each row still decoding
    scored_mask: torch.Tensor | None = None  # ``scored`` as a tensor, set with ``logprobs``

    @classmethod
    def for_rows(cls, row_specs: Sequence[Sequence[SteeringSpec]]) -> "Capture":
        """A capture for rows steered by ``row_specs``: each row's first changed layer; unsteered rows scored."""
        return cls([first_changed_layer(row) for row in row_specs], scored=[not row for row in row_specs])

    def scored_rows(self, alive: torch.Tensor) -> torch.Tensor | None:
        """Positions in the current batch (original rows ``alive``) of the rows whose log-probabilities are kept."""
        scored = self.scored_mask[alive]
        return scored.nonzero()[:, 0] if bool(scored.any()) else None

    def layer_start(self, row: int, tokens: Sequence[int], n_layers: int) -> LayerStart | None:
        """What was recorded for one row's response ``tokens`` (None: nothing usable)."""
        if self.logprobs is not None and self.scored[row]:
            return LayerStart(n_layers, self.hidden[row, :0].clone(), tuple(tokens), self.logprobs[row, : len(tokens)].clone())
        layer = self.layers[row]
        if layer is None or layer < 1:
            return None
        return LayerStart(layer, self.hidden[row, : max(len(tokens) - 1, 0)].clone(), tuple(tokens))


@contextlib.contextmanager
def capturing(blocks: torch.nn.ModuleList, capture: Capture, batch: int, max_new_tokens: int,
              d_model: int, dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Hooks that fill ``capture.hidden`` before any steering of the layer they watch runs (prepended)."""
    want = torch.tensor([-1 if k is None else int(k) for k in capture.layers], device=device)
    capture.hidden = torch.zeros(batch, max_new_tokens, d_model, dtype=dtype, device=device)
    if any(capture.scored):
        capture.logprobs = torch.zeros(batch, max_new_tokens, device=device)
        capture.scored_mask = torch.tensor(list(capture.scored), dtype=torch.bool, device=device)

    def watch(layer: int):
        def fn(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if capture.step is None:
                return
            sel = want[capture.alive] == layer + 1
            if bool(sel.any()):
                capture.hidden[capture.alive[sel], capture.step] = layer_output(output)[sel, -1].to(dtype)

        return fn

    handles = [blocks[k - 1].register_forward_hook(watch(k - 1), prepend=True)
               for k in sorted({int(k) for k in capture.layers if k is not None and k > 0})]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
