"""Resuming a forward pass at a decoder layer, from hidden states computed elsewhere.

Steering at layer ``L`` leaves every layer before it untouched, so a steered decode has already computed the
unsteered model's residual stream up to ``L`` for the tokens it generated. Scoring those tokens under the
unsteered model (perplexity) can then start at ``L`` instead of at the embeddings. Example::

    start = first_changed_layer(specs)                      # the first layer whose input steering changes
    with from_layer(plain, start, hidden):                  # hidden: [batch, pos, d_model], entering layer `start`
        logits = plain(input_ids=ids, past_key_values=cache, ...).logits
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float

from ..errors import WorkbenchError
from ..models.plain import decoder_layers


@dataclass
class LayerStart:
    """The unsteered residual stream entering decoder layer ``layer`` at the response tokens fed back while
    decoding (``hidden[t]``: input ``t``, that is ``tokens[t]``; the last token is never fed, so at most
    ``len(tokens) - 1`` rows are needed), and the generated ``tokens`` it belongs to.

    ``logprobs``: for a response decoded with no steering at all, the log-probability of each of its tokens
    under the decoding model, which is the unsteered score itself (``layer`` is then the number of layers and
    ``hidden`` is empty)."""

    layer: int
    hidden: Float[torch.Tensor, "fed d_model"]
    tokens: tuple[int, ...]
    logprobs: Float[torch.Tensor, "tokens"] | None = None


def first_changed_layer(specs: Sequence[Any]) -> int | None:
    """The first decoder layer whose input ``specs`` change (``resid_pre`` at ``L``: ``L``; ``resid_post`` at
    ``L``: ``L + 1``); ``None`` when nothing is steered or a spec hooks elsewhere (the layers before cannot be
    vouched for). Steering on prompt positions counts too: it reaches later tokens through attention."""
    firsts = []
    for spec in specs:
        if spec.hook == "resid_pre":
            firsts.append(int(spec.layer))
        elif spec.hook == "resid_post":
            firsts.append(int(spec.layer) + 1)
        else:
            return None
    return min(firsts) if firsts else None


class _Skipped(torch.nn.Module):
    """A decoder layer that does nothing: returns its input, or the given hidden states (the last one)."""

    def __init__(self, replaced: torch.nn.Module, hidden: torch.Tensor | None) -> None:
        super().__init__()
        self.hidden = hidden
        if hasattr(replaced, "attention_type"):  # read by some models' forward loops
            self.attention_type = replaced.attention_type

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.hidden is None:
            return hidden_states
        if self.hidden.shape != hidden_states.shape:
            raise WorkbenchError(f"from_layer: hidden states of shape {tuple(self.hidden.shape)} for a forward pass "
                                 f"of shape {tuple(hidden_states.shape)}")
        return self.hidden.to(hidden_states.dtype)


@contextlib.contextmanager
def from_layer(plain: torch.nn.Module, layer: int, hidden: Float[torch.Tensor, "batch pos d_model"]) -> Iterator[None]:
    """Within the block, ``plain``'s forward skips decoder layers ``0 .. layer - 1`` and feeds ``hidden`` to layer
    ``layer`` (or to the final norm when ``layer`` is the number of layers); the skipped layers leave their KV cache entries as they were (the caller's). Layers come back on exit."""
    layers = decoder_layers(plain)
    if not 0 < layer <= len(layers):
        raise WorkbenchError(f"from_layer: layer {layer} is not in 1..{len(layers)} (layer {len(layers)}: the final norm)")
    originals = [layers[i] for i in range(layer)]
    try:
        for i in range(layer):
            layers[i] = _Skipped(originals[i], hidden if i == layer - 1 else None)
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module
