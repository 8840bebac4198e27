"""Small, real steering measurements that feed the sweep and four-condition figures.

A stand-in until the paper-reproduction sweep exists: it generates under steering, scores the
responses with the IFEval checkers (:func:`workbench.evaluation.follow_rate`) and measures the
responses' perplexity under the unsteered model. Every number comes from a model run.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ..directions import Direction
from ..evaluation import follow_rate
from ..decoding import generate
from ..models.loading import model_info
from ..steering import steer
from .records import CONDITIONS


@torch.no_grad()
def response_token_nll(
    model: Any, prompts: Sequence[str], responses: Sequence[Sequence[int]], batch_size: int = 8
) -> list[tuple[float, int]]:
    """``(summed NLL, n tokens)`` of each response's tokens given its formatted prompt, under the model as it is now.

    Call it outside any ``steer`` block to score responses under the unsteered model.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    formatter = model_info(model).formatter
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        seqs, spans = [], []
        for i in chunk:
            ids = formatter.encode([prompts[i]])[0][0].tolist()
            spans.append((len(ids), len(responses[i])))
            seqs.append(ids + [int(t) for t in responses[i]])
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):  # right padding: real tokens keep their positions
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        device = model.cfg.device
        logits = model(ids.to(device), attention_mask=mask.to(device), return_type="logits").float().cpu()
        logprobs = torch.log_softmax(logits, dim=-1)
        for row, (n_prompt, n_resp) in enumerate(spans):
            if n_resp == 0:
                out.append((0.0, 0))
                continue
            targets = ids[row, n_prompt : n_prompt + n_resp]
            lp = logprobs[row, n_prompt - 1 : n_prompt - 1 + n_resp].gather(-1, targets[:, None]).squeeze(-1)
            out.append((float(-lp.sum()), n_resp))
    return out


def response_perplexity(model: Any, prompts: Sequence[str], responses: Sequence[Sequence[int]], batch_size: int = 8) -> float:
    """exp(mean NLL per response token) over all responses, under the model as it is now (NaN if all are empty)."""
    scores = response_token_nll(model, prompts, responses, batch_size)
    total, count = sum(s for s, _ in scores), sum(n for _, n in scores)
    return math.exp(total / count) if count else math.nan


def _respond(model: Any, prompts: list[str], max_new_tokens: int, batch_size: int) -> tuple[list[list[int]], list[str]]:
    ids = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, return_tokens=True)
    texts = [model.tokenizer.decode(r, skip_special_tokens=True) for r in ids]
    return ids, texts


def run_sweep(
    model: Any,
    direction: Direction,
    rows: Any,
    layers: Sequence[int],
    strengths: Sequence[float],
    relative: bool = True,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    say: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """Add-mode steering over ``layers`` x ``strengths`` on ``rows``' prompts without the instruction.

    With ``relative``, the added vector is ``strength * |mean difference at that layer| * u``
    (strength 1 moves an average prompt by the with/without gap); ``coeff`` in the records is
    the strength, ``coeff_abs`` the coefficient used. Strength 0 is the unsteered model (run once).
    Returns sweep records: ``instruction_id, layer, coeff, accuracy, perplexity`` (+ details).
    """
    prompts = rows.prompts_without_instruction()
    iid = direction.name
    baseline: tuple[float, float] | None = None
    records: list[dict[str, Any]] = []
    for layer in layers:
        norm = float(direction.at(layer).norm)
        for s in strengths:
            coeff_abs = float(s) * norm if relative else float(s)
            if coeff_abs == 0.0 and baseline is not None:
                acc, ppl = baseline
            else:
                if coeff_abs == 0.0:
                    ids, texts = _respond(model, prompts, max_new_tokens, batch_size)
                else:
                    with steer(model, direction, layer=layer, coeff=coeff_abs, mode="add"):
                        ids, texts = _respond(model, prompts, max_new_tokens, batch_size)
                acc, ppl = follow_rate(rows, texts), response_perplexity(model, prompts, ids, batch_size)
                if coeff_abs == 0.0:
                    baseline = (acc, ppl)
            records.append(dict(
                instruction_id=iid, layer=int(layer), coeff=float(s), accuracy=acc, perplexity=ppl,
                coeff_abs=coeff_abs, mode="add", n=len(prompts), max_new_tokens=max_new_tokens,
            ))
            say(f"  sweep layer {layer}, strength {s:g}: accuracy {acc:.2f}, perplexity {ppl:.1f}")
    return records


def run_conditions(
    model: Any,
    direction: Direction,
    rows: Any,
    layer: int,
    mode: str = "project",
    coeff: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    say: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """Accuracy of ``rows`` in the four conditions (instruction in the prompt or not) x (steered or not)."""
    records: list[dict[str, Any]] = []
    for with_instruction in (False, True):
        prompts = rows.prompts() if with_instruction else rows.prompts_without_instruction()
        for steered in (False, True):
            if steered:
                with steer(model, direction, layer=layer, coeff=coeff, mode=mode):
                    _, texts = _respond(model, prompts, max_new_tokens, batch_size)
            else:
                _, texts = _respond(model, prompts, max_new_tokens, batch_size)
            cond = CONDITIONS[2 * with_instruction + steered]
            acc = follow_rate(rows, texts)
            records.append(dict(
                instruction_id=direction.name, condition=cond, accuracy=acc, layer=int(layer), mode=mode,
                n=len(prompts), max_new_tokens=max_new_tokens,
            ))
            say(f"  {direction.name}: {cond}: accuracy {acc:.2f}")
    return records
