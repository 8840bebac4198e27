"""Apply a workbench direction inside an nnsight trace: the recipe of docs/interop.md as a tested function.

nnsight (``pip install nnsight``, extra ``nnsight``; checked with 0.8.1) wraps a ``transformers``
model; ``model.model.layers[L].output`` is the output of decoder layer L, our
``blocks.L.hook_resid_post``. Inside ``with model.generate(...) as tracer``, ``tracer.iter[i]``
selects the i-th forward pass of the decode loop: pass 0 runs the whole prompt, pass i >= 1 the
i-th generated token (KV cache), which is how the workbench's ``positions="prompt"`` /
``"generated"`` map onto nnsight. The arithmetic below is written out (not borrowed from
:class:`~workbench.steering.SteeringSpec`) so the test compares two independent implementations.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float

from ..directions import Direction, LayerDirection
from ..errors import SteeringError, WorkbenchError
from ..steering import MODES, POSITIONS, make_spec


def _steps(positions: str, max_new_tokens: int) -> slice:
    """Which forward passes of nnsight's decode loop to steer (pass 0 is the prompt)."""
    return {"all": slice(0, max_new_tokens), "prompt": slice(0, 1), "generated": slice(1, max_new_tokens)}[positions]


def steered(
    h: Float[torch.Tensor, "batch pos d_model"], unit: Float[torch.Tensor, "d_model"], mode: str, coeff: float, target: float | None
) -> torch.Tensor:
    """The residual stream after add (``h + coeff u``), project (projection on u set to target) or ablate (set to 0)."""
    u = unit.to(h.device, h.dtype)
    if mode == "add":
        return h + coeff * u
    goal = 0.0 if mode == "ablate" else float(target)
    return h + (goal - h @ u)[..., None] * u


def nnsight_generate(
    nn_model: Any,
    input_ids: torch.Tensor,
    direction: Direction | LayerDirection | torch.Tensor,
    layer: int | None = None,
    coeff: float = 1.0,
    mode: str = "add",
    positions: str = "all",
    target: float | None = None,
    max_new_tokens: int = 16,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy tokens of an nnsight ``TransformersModel`` (or ``LanguageModel``) steered at the output of decoder layer ``layer``; returns ``[batch, new]`` ids.

    Example::

        from nnsight import TransformersModel
        lm = TransformersModel(model_dir, task="text-generation", dispatch=True)
        ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
        new = nnsight_generate(lm, ids, title, layer=26, mode="project")
    """
    if mode not in MODES or positions not in POSITIONS:
        raise SteeringError(f"mode must be one of {MODES} and positions one of {POSITIONS}")
    if max_new_tokens < 1:
        raise WorkbenchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    spec = make_spec(direction, layer=layer, coeff=coeff, mode=mode, positions=positions, target=target)
    layers = nn_model.model.layers
    if not 0 <= spec.layer < len(layers):
        raise SteeringError(f"layer {spec.layer} is out of range: the model has layers 0..{len(layers) - 1}")
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    steps = _steps(positions, max_new_tokens)
    with nn_model.generate(inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                           do_sample=False) as tracer:
        if steps.stop > steps.start:  # with one new token, "generated" steers nothing
            for _ in tracer.iter[steps]:
                block = layers[spec.layer]
                block.output = steered(block.output, spec.unit, spec.mode, spec.coeff, spec.target)
        ids = tracer.result.save()
    return ids[:, input_ids.shape[1]:]


def left_pad(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` for prompts of different lengths, padded on the left like the workbench."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, toks in enumerate(token_lists):
        ids[i, width - len(toks):] = torch.tensor(list(toks), dtype=torch.long)
        mask[i, width - len(toks):] = 1
    return ids, mask
