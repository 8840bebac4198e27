"""``workbench.generate``: batched generation from user texts, greedy or seeded sampling, on the engine the
arguments choose (:mod:`.route`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..arguments import check_count, check_prompts, check_seed
from ..errors import WorkbenchError
from ..models.backends import GENERATION_BACKENDS, check_backend
from ..models.loading import model_info
from ..steering.spec import SteeringSpec
from .driver import check_row_steering, decode_rows, prompt_rows
from .engine import Sampling


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[str] | str,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    use_cache: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    formatted: bool = False,
    progress: bool = False,
    return_tokens: bool = False,
    backend: str = "auto",
    min_new_tokens: int = 0,
    truncate: str | None = None,
    parse_special_tokens: bool = False,
    row_steering: Sequence[Sequence[SteeringSpec]] | None = None,
) -> list[str] | list[list[int]]:
    """Generate a response for each user text (prompt excluded from the output).

    Prompts are formatted with the model's prompt style, left-padded into batches and decoded
    greedily unless ``do_sample``; each row stops at its own EOS. ``use_cache=False`` runs the
    reference loop that re-runs the full sequence per token; both give the same greedy tokens,
    with or without active steering. ``return_tokens`` returns token ids instead of texts.

    ``min_new_tokens`` keeps EOS from being picked before that many tokens (benchmarks use it).
    ``backend``: KV-cached generation runs on a plain ``transformers`` model sharing the
    bridge's weights, with the active steering re-applied to its decoder layers (``plain``,
    faster), or through the TransformerLens bridge (``bridge``); ``auto`` takes ``plain``
    unless hooks are active that only the bridge can run. ``compiled`` decodes like ``plain``
    on a static KV cache with a ``torch.compile``d step: faster per token at batch 1, after a
    one-off compile per batch size and length bucket (:mod:`workbench.decoding.compiled`). All
    give the same greedy tokens; sampling draws from the workbench's own seeded generator there.
    Which engine decodes a call: :func:`workbench.decoding.route.choose_engine`.

    A prompt whose tokens plus ``max_new_tokens`` exceed the model's context (``cfg.n_ctx``)
    raises :class:`~workbench.models.prompts.ContextLengthError` before anything runs;
    ``truncate="left"`` drops its earliest tokens instead and warns how many. Special tokens
    written in a user text (``<|im_start|>``) are tokenised as plain text, so a prompt cannot
    forge chat turns; ``parse_special_tokens=True`` parses them (``formatted=True`` prompts,
    full templates, always are).

    ``row_steering``: one list of :class:`~workbench.steering.SteeringSpec` per prompt, applied to that
    prompt's row only (after any open ``steer`` block's): several settings decode in one batch, each
    row with its own direction, layer, mode, strength and positions (:mod:`workbench.steering.rows`). A greedy
    call with ``row_steering`` on the plain path decodes in the workbench's eager loop (ended rows leave the
    batch, :mod:`workbench.decoding.static`) even when no row is steered (``[[]] * len(prompts)``). Inside an open
    ``steer(..., condition=...)`` block each row is first decided from its own prompt (:mod:`workbench.steering.condition`).

    The sweep's packed decoding, which also starts prompt passes from kept states and records what scoring the
    responses needs, is :func:`workbench.decoding.decode_packed`.

    >>> generate(model, ["Describe a rainy afternoon."], max_new_tokens=32)
    """
    prompts = check_prompts(prompts, "generate")
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    batch_size = check_count("batch_size", batch_size)
    min_new_tokens = check_count("min_new_tokens", min_new_tokens, minimum=0)
    seed = check_seed(check_count("seed", seed, minimum=-(2**63)))
    for label, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkbenchError(f"{label} must be a number, got {value!r}")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise WorkbenchError("sampling needs temperature > 0 and 0 < top_p <= 1")
    model_info(model)  # a model loaded with wb.load_model, before the other arguments are read
    check_backend(backend, GENERATION_BACKENDS)
    rows = prompt_rows(model, prompts, max_new_tokens, formatted, truncate, parse_special_tokens)
    check_row_steering(row_steering, len(prompts), "generate")
    out = decode_rows(model, prompts, rows, max_new_tokens, batch_size, Sampling(do_sample, temperature, top_p, seed),
                      backend, use_cache, min_new_tokens, row_steering, progress=progress)
    return out.tokens if return_tokens else out.texts(model)
