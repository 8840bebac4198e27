"""Response quality: perplexity under a reference model, and a repetition (degeneration) signal.

Steering can raise instruction accuracy while breaking fluency; the paper guards against that
with the perplexity of steered responses. Perplexity here scores only the response tokens,
conditioned on the formatted prompt, with no steering hooks active on the reference model.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch

from ..errors import SteeringError, WorkbenchError
from ..decoding.from_layer import LayerStart
from ..decoding.prompt_states import PromptStates, fits, response_logprobs_cached
from ..models.batching import pad_tokens
from ..models.loading import model_info

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)  # words, and each punctuation mark on its own


def degeneration(text: str, n: int = 3) -> float:
    """Share of the ``n``-grams of ``text`` (words and punctuation marks) that repeat an earlier one (0: none).

    Punctuation counts, so symbol loops such as ``<<<<<<`` score high too, not only repeated words.
    """
    if n < 1:
        raise WorkbenchError(f"degeneration: n must be >= 1, got {n}")
    words = _TOKEN.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def active_hooks(model: Any) -> list[str]:
    """Names of the hook points that currently carry forward hooks (e.g. an open ``steer`` block)."""
    return [name for name, point in model.hook_dict.items() if getattr(point, "_forward_hooks", None)]


def _encode_pairs(model: Any, prompts: Sequence[str], responses: Sequence[str], formatted: bool):
    """Token ids of each formatted prompt (exactly as generation tokenises it) and of each response, apart."""
    info = model_info(model)
    tok = model.tokenizer
    out = []
    for prompt, response in zip(prompts, responses):
        p_ids = info.formatter.token_ids(prompt, formatted)  # the ids generation saw (user text's control tokens as text)
        r_ids = tok(response, add_special_tokens=False)["input_ids"] if response else []
        out.append((list(p_ids), list(r_ids)))
    return out


@torch.no_grad()
def response_nlls(
    model: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 8,
    formatted: bool = False,
    states: PromptStates | None = None,
    starts: Sequence[LayerStart | None] | None = None,
) -> list[list[float]]:
    """Per-token negative log-likelihoods of each response given its prompt.

    On the plain model each formatted prompt runs once and its KV cache is reused for every response to it
    (``states``: a store kept across calls, e.g. by a sweep; default: one for this call), and responses are
    scored in batches of similar length (:mod:`workbench.decoding.prompt_states`); else right-padded batches on the bridge.
    ``starts``: per response, the unsteered hidden states its steered decode recorded
    (``Decoded.starts`` of :func:`workbench.decoding.decode_packed`), so its scoring starts at the layer steering first
    changed."""
    if len(prompts) != len(responses):
        raise WorkbenchError(f"{len(prompts)} prompts but {len(responses)} responses")
    hooked = active_hooks(model)
    if hooked:
        raise SteeringError(
            f"the reference model has active hooks on {hooked[:3]}: score perplexity outside steer() blocks"
        )
    pairs = _encode_pairs(model, prompts, responses, formatted)
    from ..models.plain import plain_model_for

    plain = plain_model_for(model)
    if plain is not None and pairs and fits(plain, pairs):
        if starts is not None and len(starts) != len(pairs):
            raise WorkbenchError(f"{len(pairs)} responses but {len(starts)} starts")
        if states is None:
            states = PromptStates(prefix=model_info(model).formatter.template_prefix())
        logps = response_logprobs_cached(plain, pairs, states, batch_size, starts)
        return [[-v for v in row] for row in logps]
    pad = model.tokenizer.pad_token_id or 0
    device = model.cfg.device
    nlls: list[list[float]] = [[] for _ in pairs]
    order = [i for i, (_, r) in enumerate(pairs) if r]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_tokens([list(pairs[i][0]) + list(pairs[i][1]) for i in idx], pad)
        first = min(len(pairs[i][0]) for i in idx) - 1  # the earliest position that predicts a response token
        logp = _next_token_logprobs(model, ids.to(device), mask.to(device), first).cpu()  # [batch, width - 1 - first]
        for j, i in enumerate(idx):
            p_len, r_len = len(pairs[i][0]), len(pairs[i][1])
            nlls[i] = (-logp[j, p_len - 1 - first : p_len + r_len - 1 - first]).tolist()
    return nlls


def _next_token_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
    """``log p(ids[:, t + 1] | ids[:, :t + 1])`` for positions ``t >= first``, full-vocabulary logits only there.

    Runs on the plain ``transformers`` model that shares the bridge's weights (no hooks can be active here: the
    caller refused them), which is several times faster than the bridge; the bridge scores when there is none.
    """
    from ..models.plain import plain_model_for

    plain = plain_model_for(model)
    keep = torch.arange(first, ids.shape[1] - 1, device=ids.device)
    if plain is not None:
        logits = plain(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
    else:
        logits = model(ids, attention_mask=mask, return_type="logits")[:, first:-1]
    logits = logits.float()
    targets = ids[:, first + 1 :]
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def response_perplexities(
    model: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 8,
    formatted: bool = False,
    states: PromptStates | None = None,
    starts: Sequence[LayerStart | None] | None = None,
) -> list[float]:
    """``exp(mean NLL)`` of each response's tokens under ``model``; NaN for an empty response.

    ``states``: prompt caches to reuse across calls (:class:`~workbench.decoding.prompt_states.PromptStates`); ``starts``: see
    :func:`response_nlls`.

    >>> response_perplexities(model, ["Describe a cat."], ["A cat is a small furry animal."])
    """
    nlls = response_nlls(model, prompts, responses, batch_size, formatted, states, starts)
    return [math.exp(sum(x) / len(x)) if x else math.nan for x in nlls]


def mean_perplexity(values: Sequence[float]) -> float:
    """Geometric mean of the finite perplexities (``exp`` of the mean log); NaN when there are none."""
    logs = [math.log(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def score_quality(
    reference: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 8,
    n: int = 3,
) -> list[dict[str, float]]:
    """``{"perplexity", "degeneration"}`` per response; ``reference`` is the (unsteered) scoring model."""
    ppl = response_perplexities(reference, prompts, responses, batch_size)
    return [{"perplexity": p, "degeneration": degeneration(r, n)} for p, r in zip(ppl, responses)]
