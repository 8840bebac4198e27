"""The engine interface: what every decoding path implements, and the one token loop the workbench's own paths share.

An :class:`Engine` decodes one left-padded :class:`Batch` into each row's prompt plus new tokens, padded after the
row's EOS as ``transformers``' ``generate`` pads. The paths that hand the loop to ``transformers`` (the plain layers and
the bridge's KV cache, :mod:`.plain`, :mod:`.bridge`) implement only :meth:`Engine.decode`. The workbench's own loops
(:class:`StepEngine`: the reference loop, the static-cache eager loop, the compiled static step) implement its steps,
and :func:`run_steps` drives them:

- ``prefill(batch)``: the prompt pass; each row's next-token logits;
- ``step(tokens, step)``: feed each live row's token back; the next logits;
- ``keep_rows(keep)``: the rows that ended leave the batch (engines with ``compacts``; the others decode them on);
- ``decode(batch, capture)``: given a :class:`~.capture.Capture` (engines with ``records``), what each step records
  for scoring: the loop writes the token log-probabilities of unsteered rows, the engine's hooks the hidden states.

Example::

    engine = make_engine(choose_engine("auto", use_cache=True, do_sample=False, plain=True, per_row=True), model, plain)
    out = engine.decode(Batch(ids, mask, max_new_tokens=32, min_new_tokens=0, eos=eos, pad=pad))  # [rows, prompt + new]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from jaxtyping import Float, Int

from ..steering.rows import RowSteering
from ..steering.spec import SteeringSpec
from .capture import Capture

COMPACT_SHARE = 0.125  # engines that compact drop ended rows once they are this share of the batch (or one row)


@dataclass(frozen=True)
class Sampling:
    """How each next token is chosen: greedy, or drawn at ``temperature`` from the top-``top_p`` mass with ``seed``."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def picker(self, offset: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The token choice of a batch whose first prompt is the call's ``offset``-th: the argmax, or draws from the
        workbench's own generator seeded ``seed + offset`` (the same draws on every engine that uses it)."""
        gen = torch.Generator().manual_seed(self.seed + offset) if self.do_sample else None
        return lambda logits: pick(logits, self.do_sample, self.temperature, self.top_p, gen)


def pick(logits: Float[torch.Tensor, "batch vocab"], do_sample: bool, temperature: float, top_p: float,
         gen: torch.Generator | None) -> Int[torch.Tensor, "batch"]:
    """Each row's token: the argmax, or one draw at ``temperature`` from the smallest set of tokens holding ``top_p``."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def next_tokens(
    logits: Float[torch.Tensor, "batch vocab"], step: int, min_new_tokens: int, eos: torch.Tensor,
    done: torch.Tensor, pad: int, choose: Callable[[torch.Tensor], torch.Tensor],
) -> Int[torch.Tensor, "batch"]:
    """Each row's next token as ``transformers``' generate picks it: no EOS before ``min_new_tokens``,
    ``pad`` after the row's EOS; rows that end now are marked in ``done`` (in place)."""
    if step < min_new_tokens:
        logits[:, eos] = float("-inf")
    nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), choose(logits))
    done |= torch.isin(nxt, eos)
    return nxt


@dataclass
class Batch:
    """One decode batch: left-padded prompt tokens, the steering of its rows and how far to decode.

    ``active``: the specs of the open ``steer`` blocks (every row); ``rows``: this batch's own per-row steering,
    applied after them (None: every row steered alike). ``offset``: the index of the batch's first prompt in the call
    (sampling seeds ``seed + offset``)."""

    ids: Int[torch.Tensor, "batch prompt"]
    mask: Int[torch.Tensor, "batch prompt"]
    max_new_tokens: int
    min_new_tokens: int
    eos: list[int]
    pad: int
    sampling: Sampling = field(default_factory=Sampling)
    offset: int = 0
    active: Sequence[SteeringSpec] = ()
    rows: RowSteering | None = None

    @property
    def prompt_len(self) -> int:
        return int(self.ids.shape[1])

    def row_specs(self) -> list[list[SteeringSpec]]:
        """Every row's specs in the order they apply: the open blocks', then the row's own."""
        own = self.rows.specs if self.rows is not None else [()] * int(self.ids.shape[0])
        return [list(self.active) + list(row) for row in own]

    def generate_kwargs(self) -> dict[str, Any]:
        """The batch as arguments of ``transformers``' ``generate`` (sampling there draws from torch's generator)."""
        s = self.sampling
        return dict(
            input_ids=self.ids, attention_mask=self.mask, max_new_tokens=self.max_new_tokens, do_sample=s.do_sample,
            temperature=s.temperature if s.do_sample else None, top_p=s.top_p if s.do_sample else None, top_k=None,
            eos_token_id=self.eos, pad_token_id=self.pad, use_cache=True, min_new_tokens=self.min_new_tokens or None,
        )


class Engine(ABC):
    """One decoding path. ``records``: it fills a :class:`~.capture.Capture` while it decodes (given one; the
    others are never given one)."""

    name: ClassVar[str] = "engine"
    records: ClassVar[bool] = False

    @abstractmethod
    def decode(self, batch: Batch, capture: Capture | None = None) -> Int[torch.Tensor, "batch total"]:
        """``batch``'s prompt plus new tokens, each row padded with ``batch.pad`` after its EOS."""


class StepEngine(Engine):
    """An engine whose token loop is the workbench's (:func:`run_steps`): it implements the steps."""

    compacts: ClassVar[bool] = False  # whether rows that ended leave the batch (keep_rows)

    @abstractmethod
    def prefill(self, batch: Batch) -> Float[torch.Tensor, "batch vocab"]:
        """The prompt pass: each row's next-token logits."""

    @abstractmethod
    def step(self, tokens: Int[torch.Tensor, "live"], step: int) -> Float[torch.Tensor, "live vocab"]:
        """Feed each live row's token generated at ``step`` back; the next-token logits."""

    def keep_rows(self, keep: Int[torch.Tensor, "keep"]) -> None:
        """Only the live rows ``keep`` (positions in the current batch) decode on; engines that ``compact`` override
        this (:func:`run_steps` calls it on no other)."""
        raise TypeError(f"the {self.name} engine keeps every row to the end")

    def decode(self, batch: Batch, capture: Capture | None = None) -> Int[torch.Tensor, "batch total"]:
        return run_steps(self, batch, capture)


def run_steps(engine: StepEngine, batch: Batch, capture: Capture | None = None) -> Int[torch.Tensor, "batch total"]:
    """The workbench's token loop over ``engine``'s steps: choose each row's token (:func:`next_tokens`), stop a row
    at its EOS, drop ended rows from engines that compact (:data:`COMPACT_SHARE`), and record each scored row's
    token log-probability in ``capture`` (the engine's hooks record the hidden states)."""
    ids = batch.ids
    n_rows, prompt_len = ids.shape
    max_new_tokens = batch.max_new_tokens
    choose = batch.sampling.picker(batch.offset)
    eos = torch.tensor(batch.eos, device=ids.device)
    done = torch.zeros(n_rows, dtype=torch.bool, device=ids.device)
    tokens = torch.full((n_rows, max_new_tokens), batch.pad, dtype=torch.long, device=ids.device)
    alive = torch.arange(n_rows, device=ids.device)  # the original row of each row still decoding
    logits = engine.prefill(batch)
    n_steps = 0
    for step in range(max_new_tokens):
        scored = None
        if capture is not None and capture.logprobs is not None:
            scored = capture.scored_rows(alive)
            if scored is not None:  # before next_tokens masks EOS: the model's own distribution
                logp = torch.log_softmax(logits[scored].float(), dim=-1)
        nxt = next_tokens(logits, step, batch.min_new_tokens, eos, done, batch.pad, choose)
        if scored is not None:
            capture.logprobs[alive[scored], step] = logp.gather(1, nxt[scored][:, None])[:, 0].to(capture.logprobs.dtype)
        tokens[alive, step] = nxt
        n_steps = step + 1
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        if engine.compacts and int(done.sum()) >= max(1, COMPACT_SHARE * len(alive)):
            keep = (~done).nonzero()[:, 0]
            alive, done, nxt = alive[keep], done[keep], nxt[keep]
            engine.keep_rows(keep)
        if capture is not None:
            capture.step, capture.alive = step, alive
        logits = engine.step(nxt, step)
    if capture is not None:
        capture.step = capture.alive = None
    return torch.cat([ids, tokens[:, :n_steps]], dim=1)
