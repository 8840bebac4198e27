"""One decoding call, batch by batch: prompts to token rows, each batch to its engine, tokens cut at each row's EOS.

:func:`decode_rows` is shared by the public :func:`~.generation.generate` and the engine API the sweep and its scoring
call: :func:`decode_packed` decodes many steering settings' rows in shared greedy batches (each row steered on its own),
starts their prompt passes from kept unsteered states and records what scoring each response's perplexity needs
(:class:`~.from_layer.LayerStart`). Example::

    out = decode_packed(model, prompts, row_specs, max_new_tokens=48, batch_size=160, states=states)
    texts, starts = out.texts(model), out.starts   # starts: for response_perplexities(..., starts=starts)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..arguments import check_count, check_seed
from ..errors import WorkbenchError
from ..models.loading import model_info
from ..models.plain import plain_model_for
from ..models.prompts import ContextLengthError
from ..steering.condition import gated_row_specs, gates_open
from ..steering.rows import RowSteering
from ..steering.spec import SteeringSpec
from .capture import Capture
from .engine import Batch, Sampling
from .from_layer import LayerStart
from .prompt_states import PromptStates
from .route import choose_engine, make_engine


def eos_token_ids(model: Any) -> list[int]:
    """Every token id that ends a response (generation config and tokenizer)."""
    ids: set[int] = set()
    cfg_eos = getattr(getattr(model.original_model, "generation_config", None), "eos_token_id", None)
    for value in (cfg_eos, model.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


@dataclass
class Decoded:
    """Each prompt's new tokens up to (not including) its EOS, the engine that decoded them, and with ``record``, per
    prompt what scoring the response can start from (None: nothing recorded for it)."""

    tokens: list[list[int]]
    engine: str
    starts: list[LayerStart | None] | None = None

    def texts(self, model: Any) -> list[str]:
        """The responses as text (special tokens skipped)."""
        return [model.tokenizer.decode(t, skip_special_tokens=True) for t in self.tokens]


def prompt_rows(model: Any, prompts: Sequence[str], max_new_tokens: int, formatted: bool = False,
                truncate: str | None = None, parse_special_tokens: bool = False) -> list[list[int]]:
    """Each prompt's tokens as decoding sees them (formatted with the model's prompt style, unless ``formatted``), with
    room for ``max_new_tokens`` in the context (:class:`~workbench.models.prompts.ContextLengthError`, or ``truncate``)."""
    n_ctx = int(model.cfg.n_ctx)
    if max_new_tokens >= n_ctx:
        raise ContextLengthError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {n_ctx}-token context")
    return model_info(model).formatter.token_rows(prompts, formatted, n_ctx - max_new_tokens, truncate, parse_special_tokens)


def check_row_steering(row_steering: Any, n_prompts: int, caller: str) -> None:
    """One list of specs per prompt, else a one-line error naming ``caller`` (the specs are checked when built)."""
    if row_steering is not None and (isinstance(row_steering, (str, bytes)) or len(row_steering) != n_prompts):
        raise WorkbenchError(f"{caller}: row_steering needs one list of specs per prompt ({n_prompts}), "
                             f"got {len(row_steering) if not isinstance(row_steering, (str, bytes)) else 'a string'}")


def decode_rows(
    model: Any,
    prompts: Sequence[str],
    rows: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    sampling: Sampling = Sampling(),
    backend: str = "auto",
    use_cache: bool = True,
    min_new_tokens: int = 0,
    row_steering: Sequence[Sequence[SteeringSpec]] | None = None,
    states: PromptStates | None = None,
    record: bool = False,
    progress: bool = False,
) -> Decoded:
    """Decode token ``rows`` (one per prompt text in ``prompts``) in batches of ``batch_size``, on the engine the
    arguments choose (:func:`~.route.choose_engine`). Open conditional ``steer`` blocks decide each row from its own
    prompt first (their specs go before the row's ``row_steering``). ``states`` and ``record``: see :func:`decode_packed`."""
    info = model_info(model)
    conditional = list(info.conditional)
    if conditional:  # open steer(condition=...) blocks: each row's own prompt decides, before anything is decoded
        with gates_open(model):
            gated = gated_row_specs(model, prompts, rows, conditional)
        row_steering = [g + list(u) for g, u in zip(gated, row_steering or [[] for _ in prompts])]
    n_layers = int(model.cfg.n_layers)
    steering = None if row_steering is None else RowSteering.build(row_steering, n_layers, int(model.cfg.d_model))
    bridge_only_rows = steering is not None and any(h not in ("resid_post", "resid_pre") for h, _ in steering.sites())
    plain = plain_model_for(model) if backend != "bridge" and not (bridge_only_rows and backend == "auto") else None
    if bridge_only_rows and backend in ("plain", "compiled"):
        raise WorkbenchError(f"backend={backend!r} steers rows at resid_post or resid_pre only; use backend='bridge'")
    if backend in ("plain", "compiled") and plain is None:
        raise WorkbenchError(
            f"backend={backend!r} cannot reproduce the active hooks (resid_mid steering or hooks added by hand); "
            "use backend='bridge'"
        )
    name = choose_engine(backend, use_cache, sampling.do_sample, plain is not None, steering is not None)
    engine = make_engine(name, model, plain, states)
    eos = eos_token_ids(model)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else eos[0]
    device = model.cfg.device
    out = Decoded([], name, [] if record else None)
    with gates_open(model) if conditional else contextlib.nullcontext():
        for start in tqdm(range(0, len(rows), batch_size), desc="generate", disable=not progress, unit="batch"):
            ids, mask = info.formatter.pad(rows[start : start + batch_size], padding_side="left")
            if sampling.do_sample:
                torch.manual_seed(sampling.seed + start)
            own = None if steering is None else steering.rows(start, start + batch_size)
            if own is not None and not own and name != "eager":
                own = None  # no row of this batch is steered on its own (the eager engine decodes such batches too)
            batch = Batch(ids.to(device), mask.to(device), max_new_tokens, min_new_tokens, eos, pad, sampling, start,
                          info.active_specs, own)
            capture = Capture.for_rows(batch.row_specs()) if record and engine.records else None
            new = engine.decode(batch, capture)[:, batch.prompt_len:].tolist()
            for j, row in enumerate(new):
                cut = next((i for i, t in enumerate(row) if t in eos), len(row))
                out.tokens.append(row[:cut])
                if out.starts is not None:
                    out.starts.append(None if capture is None else capture.layer_start(j, row[:cut], n_layers))
    return out


@torch.no_grad()
def decode_packed(
    model: Any,
    prompts: Sequence[str],
    row_specs: Sequence[Sequence[SteeringSpec]],
    max_new_tokens: int,
    batch_size: int,
    seed: int = 0,
    states: PromptStates | None = None,
) -> Decoded:
    """Greedy responses to ``prompts``, row ``i`` steered by ``row_specs[i]`` (after any open ``steer`` block's), many
    settings' rows in shared batches: the engine API of the sweep (:class:`~workbench.experiments.conditions.GenerationMemo`).

    On plain layers this is the eager engine (:mod:`.static`): ended rows leave the batch, and per prompt it records
    a :class:`~.from_layer.LayerStart` (``Decoded.starts``): the residual stream entering the first layer the row's
    steering changes, at each generated token fed back (the unsteered model's there, so the response's perplexity can
    be scored from that layer on, :func:`~.prompt_states.response_logprobs_cached`), or for a row decoded with no
    steering at all the log-probability of each token, which is that score itself. ``states``: a
    :class:`~.prompt_states.PromptStates` with ``keep_hidden=True``; each row's prompt pass then starts at the first
    layer its steering changes, the unsteered layers before it taken from the states (each prompt runs once however
    many rows share it). Prompts are formatted with the model's prompt style, as ``generate`` formats them."""
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    batch_size = check_count("batch_size", batch_size)
    seed = check_seed(check_count("seed", seed, minimum=-(2**63)))
    if states is not None and (not isinstance(states, PromptStates) or not states.keep_hidden):
        raise WorkbenchError("decode_packed: states must be a PromptStates(keep_hidden=True) (prompt passes start "
                             f"from its kept hidden states), got {states!r:.60}")
    prompts = list(prompts)
    if not prompts:
        raise WorkbenchError("decode_packed: no prompts given")
    check_row_steering([] if row_specs is None else row_specs, len(prompts), "decode_packed")
    rows = prompt_rows(model, prompts, max_new_tokens)
    return decode_rows(model, prompts, rows, max_new_tokens, batch_size, Sampling(seed=seed), row_steering=row_specs,
                       states=states, record=True)
