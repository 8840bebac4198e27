"""The paper's four conditions: with or without the instruction in the prompt, with or without steering.

Generation is memoised per (steering, prompt), so the unsteered responses to the same base
queries are generated once per run and shared by every instruction that uses them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..data import PairRow
from ..decoding import decode_packed, generate
from ..decoding.from_layer import LayerStart
from ..decoding.prompt_states import PromptStates
from ..evaluation.quality import response_perplexities
from ..models.loading import model_info
from ..steering import SteeringSpec, steer

CONDITIONS: tuple[str, ...] = ("no_instruction", "no_instruction_steered", "instruction", "instruction_steered")
CONDITION_LABELS = {
    "no_instruction": "no instruction, no steering",
    "no_instruction_steered": "no instruction, steering",
    "instruction": "instruction, no steering",
    "instruction_steered": "instruction, steering",
}


def specs_key(specs: Sequence[SteeringSpec]) -> str:
    """A stable name for a steering setting (``none`` when unsteered)."""
    if not specs:
        return "none"
    parts = []
    for s in specs:
        digest = hashlib.sha256(s.unit.detach().float().cpu().numpy().tobytes()).hexdigest()[:10]
        parts.append(f"{s.name}@{s.layer}:{s.mode}:{s.coeff:.6g}:{s.target}:{s.positions}:{digest}")
    return "+".join(parts)


@dataclass
class GenerationMemo:
    """Greedy generations of one model, cached by (steering, prompt); misses are generated in one batched call.

    :meth:`generate_many` packs the misses of several steering settings into shared decode batches of up to
    ``max_batch`` rows (default :func:`pack_size`), each row steered on its own (:func:`~workbench.decoding.decode_packed`).
    """

    model: Any
    max_new_tokens: int = 48
    batch_size: int = 20
    seed: int = 0
    cache: dict[tuple[str, int, str], str] = field(default_factory=dict)
    calls: int = 0
    max_batch: int | None = None
    pack: bool = True  # False: generate_many decodes request after request (the pre-packing path)
    scored: dict[str, list[float]] = field(default_factory=dict)
    prompt_states: dict[str, PromptStates] = field(default_factory=dict)  # per scoring model: prompt KV caches
    seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "perplexity": 0.0})  # time spent in each
    starts: dict[tuple[str, str], LayerStart] = field(default_factory=dict)  # the last packed call's, by (prompt, response)

    def perplexities(self, reference: Any, prompts: Sequence[str], responses: Sequence[str], batch_size: int) -> list[float]:
        """``response_perplexities`` of the whole call, computed once per run: the unsteered no-instruction responses
        of every format instruction are the same texts, scored once. Each prompt's KV cache is kept for the run
        (:class:`~workbench.decoding.prompt_states.PromptStates`): a prompt runs once however many cells score it.
        A response of the last packed call starts at the layer its steering first changed: the layers before it
        already ran, unsteered, while it was decoded."""
        name = model_info(reference).name
        key = hashlib.sha256(json.dumps([name, batch_size, list(prompts), list(responses)]).encode()).hexdigest()
        if key not in self.scored:
            # packed decoding keeps hidden states in the same store: one store, so no prompt runs twice
            states = (self.decode_states() if self.pack and reference is self.model else
                      self.prompt_states.setdefault(name, PromptStates(prefix=model_info(reference).formatter.template_prefix())))
            starts = [self.starts.get((p, r)) for p, r in zip(prompts, responses)] if reference is self.model else None
            t0 = time.perf_counter()
            self.scored[key] = response_perplexities(reference, prompts, responses, batch_size=batch_size, states=states,
                                                     starts=starts)
            self.seconds["perplexity"] += time.perf_counter() - t0
        return list(self.scored[key])

    def decode_states(self) -> PromptStates:
        """The decoding model's prompt states, keeping hidden states so packed prompt passes start from them
        (shared with its perplexity scoring; the decoder falls back to a full prompt pass under a short sliding window)."""
        name = model_info(self.model).name
        states = self.prompt_states.get(name)
        if states is None or not states.keep_hidden:
            states = self.prompt_states[name] = PromptStates(keep_hidden=True, prefix=model_info(self.model).formatter.template_prefix())
        return states

    def generate_many(self, requests: Sequence[tuple[Sequence[str], Sequence[SteeringSpec]]],
                      max_new_tokens: int | None = None) -> list[list[str]]:
        """Responses to each ``(prompts, specs)`` request; every miss of every request decodes in packed batches."""
        if not self.pack:
            return [self.generate(list(prompts), specs, max_new_tokens) for prompts, specs in requests]
        n_tokens = max_new_tokens or self.max_new_tokens
        keys = [specs_key(specs) for _, specs in requests]
        missing: dict[tuple[str, int, str], tuple[str, list[SteeringSpec]]] = {}
        for key, (prompts, specs) in zip(keys, requests):
            for p in prompts:
                if (key, n_tokens, p) not in self.cache:
                    missing.setdefault((key, n_tokens, p), (p, list(specs)))
        if missing:
            self.calls += 1
            rows = list(missing.values())
            t0 = time.perf_counter()
            decoded = decode_packed(self.model, [p for p, _ in rows], [s for _, s in rows], max_new_tokens=n_tokens,
                                    batch_size=self.max_batch or pack_size(self.model), seed=self.seed,
                                    states=self.decode_states())
            out = decoded.texts(self.model)
            self.seconds["decode"] += time.perf_counter() - t0
            self.cache.update(zip(missing, out))
            # kept for scoring this call's responses: the unsteered hidden states up to each row's steered layer
            self.starts = {(p, text): start for (p, _), text, start in zip(rows, out, decoded.starts) if start is not None}
        return [[self.cache[(key, n_tokens, p)] for p in prompts] for key, (prompts, _) in zip(keys, requests)]

    def generate(self, prompts: Sequence[str], specs: Sequence[SteeringSpec] = (), max_new_tokens: int | None = None) -> list[str]:
        """Responses to ``prompts`` under ``specs`` (none: unsteered)."""
        n_tokens = max_new_tokens or self.max_new_tokens
        key = specs_key(specs)
        missing = list(dict.fromkeys(p for p in prompts if (key, n_tokens, p) not in self.cache))
        if missing:
            self.calls += 1
            kw = dict(max_new_tokens=n_tokens, batch_size=self.batch_size, seed=self.seed)
            t0 = time.perf_counter()
            if specs:
                with steer(self.model, *specs):
                    out = generate(self.model, missing, **kw)
            else:
                out = generate(self.model, missing, **kw)
            self.seconds["decode"] += time.perf_counter() - t0
            self.cache.update({(key, n_tokens, p): r for p, r in zip(missing, out)})
        return [self.cache[(key, n_tokens, p)] for p in prompts]


def pack_size(model: Any) -> int:
    """Rows per packed decode batch for this model's device: 160 on a CPU (SmolLM2 on one thread: 3.4 ms per row and
    token at 80 rows, 2.2-2.7 at 160, no gain beyond), on a GPU as many as a quarter of the free memory holds for a 512-token KV cache (8-512)."""
    device = str(model.cfg.device)
    if not device.startswith("cuda"):
        return 160
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    cfg = model.cfg
    kv_heads = int(getattr(cfg, "n_key_value_heads", None) or getattr(cfg, "n_heads", 1))
    d_head = int(getattr(cfg, "d_head", None) or int(cfg.d_model) // max(int(getattr(cfg, "n_heads", 1)), 1))
    per_row = 2 * int(cfg.n_layers) * kv_heads * d_head * 512 * torch.finfo(getattr(cfg, "dtype", torch.float32)).bits // 8
    return max(8, min(512, int(free / 4 // max(per_row, 1))))


def condition_prompts(rows: Sequence[PairRow], condition: str) -> list[str] | None:
    """The prompts of one condition; ``None`` when no row (or not every row) has the prompt without the instruction."""
    if condition.startswith("no_instruction"):
        if not rows or any(r.prompt_without_instruction is None for r in rows):
            return None
        return [r.prompt_without_instruction for r in rows]  # type: ignore[misc]
    return [r.prompt for r in rows]


def run_conditions(
    memo: GenerationMemo,
    rows: Sequence[PairRow],
    specs: Sequence[SteeringSpec] | None,
    conditions: Sequence[str] = CONDITIONS,
    max_new_tokens: int | None = None,
    no_instruction_rows: Sequence[PairRow] | None = None,
) -> dict[str, list[str]]:
    """Responses per condition; steered conditions are skipped when ``specs`` is None (no selection).

    ``no_instruction_rows``: the rows the no-instruction conditions use (default ``rows``), e.g. only
    those with an instruction-free twin.
    """
    prompts = _condition_prompts(rows, specs, conditions, no_instruction_rows)
    groups = _groups(prompts, specs)
    texts = memo.generate_many([(flat, use) for _, flat, use in groups], max_new_tokens)  # one packed decode
    out: dict[str, list[str]] = {}
    for (group, _, _), group_texts in zip(groups, texts):
        pos = 0
        for c in group:
            out[c] = group_texts[pos : pos + len(prompts[c])]
            pos += len(prompts[c])
    return {c: out[c] for c in conditions if c in out}


def condition_requests(
    rows: Sequence[PairRow],
    specs: Sequence[SteeringSpec] | None,
    conditions: Sequence[str] = CONDITIONS,
    no_instruction_rows: Sequence[PairRow] | None = None,
) -> list[tuple[list[str], list[SteeringSpec]]]:
    """The ``(prompts, specs)`` generation requests of :func:`run_conditions`, e.g. to decode several instructions'
    conditions in one packed call first (``memo.generate_many``); the conditions then read the memo."""
    return [(flat, use) for _, flat, use in _groups(_condition_prompts(rows, specs, conditions, no_instruction_rows), specs)]


def _condition_prompts(rows, specs, conditions, no_instruction_rows) -> dict[str, list[str]]:
    wanted = [c for c in conditions if specs is not None or not c.endswith("_steered")]
    twin_rows = rows if no_instruction_rows is None else no_instruction_rows
    prompts = {c: condition_prompts(twin_rows if c.startswith("no_instruction") else rows, c) for c in wanted}
    return {c: p for c, p in prompts.items() if p is not None}


def _groups(prompts: dict[str, list[str]], specs) -> list[tuple[list[str], list[str], list[SteeringSpec]]]:
    """(conditions, their prompts one after the other, steering) for the unsteered and the steered conditions."""
    out = []
    for steered in (False, True):
        group = [c for c in prompts if c.endswith("_steered") == steered]
        if group:
            out.append((group, [p for c in group for p in prompts[c]], list(specs or ()) if steered else []))
    return out
