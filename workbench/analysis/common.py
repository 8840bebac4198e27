"""Shared helpers of the analyses: checked inputs, tokenised pairs, right-padded batches, edited forward passes."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..directions import Direction
from ..errors import DatasetError, LayerError, ShapeError, WorkbenchError
from ..hooks import check_layer, forward_hooks
from ..models.batching import pad_tokens
from ..models.loading import model_info
from ..models.plain import decoder_layers, layer_output, plain_model_for, with_layer_output
from .alignment import common_suffix, instruction_span


class _Done(Exception):
    """Raised by the hook of the deepest needed layer to end a forward pass early."""


@dataclass(frozen=True)
class TokenPair:
    """One pair's formatted token ids and where the instruction sits in the with-instruction prompt.

    ``span`` is ``(start, end)`` in ``with_ids``; ``suffix`` the number of tokens both prompts end with.
    """

    with_ids: tuple[int, ...]
    without_ids: tuple[int, ...]
    span: tuple[int, int]
    suffix: int


def tokenize_pairs(model: Any, pairs: Any, what: str = "analysis") -> list[TokenPair]:
    """Formatted token ids of every pair, checked: both prompts differ, and both fit the model's context.

    >>> tps = tokenize_pairs(model, wb.load_pairs("format", "detectable_format:title").head(4))
    """
    rows = list(pairs)
    if not rows:
        raise DatasetError(f"{what}: the pair dataset is empty")
    formatter = model_info(model).formatter
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    out = []
    for i, row in enumerate(rows):
        if row.prompt_without_instruction is None:
            raise DatasetError(f"{what}: pair {i} has no prompt without the instruction")
        if row.prompt == row.prompt_without_instruction:
            raise DatasetError(f"{what}: pair {i} ({row.base_id}): the two prompts are identical")
        ids = []
        for text in (row.prompt, row.prompt_without_instruction):
            enc, _ = formatter.encode([text])
            ids.append(tuple(int(t) for t in enc[0]))
        if n_ctx and max(len(ids[0]), len(ids[1])) > n_ctx:
            raise ShapeError(
                f"{what}: pair {i} ({row.base_id}) has {max(len(ids[0]), len(ids[1]))} tokens, "
                f"longer than the model's context of {n_ctx}"
            )
        span = instruction_span(ids[0], ids[1], where=f"{what}: pair {i} ({row.base_id})")
        out.append(TokenPair(ids[0], ids[1], span, common_suffix(ids[0], ids[1])))
    return out


def check_direction(model: Any, direction: Direction, layers: Sequence[int]) -> None:
    """A direction fits ``model`` (same d_model and name) and covers ``layers``; else one clear error."""
    direction.check_compatible(model)
    name = model_info(model).name
    if direction.model_name != name:
        raise ShapeError(
            f"direction {direction.name!r} was computed on {direction.model_name}, not on {name}; "
            "compute it on this model"
        )
    for layer in layers:
        check_layer(model, layer)
        direction.at(layer)  # LayerError naming the direction's layers


def check_layer_list(model: Any, layers: Sequence[int] | None) -> list[int]:
    """All layers when None, else the checked, sorted, distinct list."""
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    layers = sorted({check_layer(model, layer) for layer in layers})
    if not layers:
        raise LayerError("no layers given")
    return layers


def pad_id(model: Any) -> int:
    tok = model_info(model).formatter.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))


def batches(n: int, size: int, desc: str, progress: bool) -> Iterator[range]:
    """``range`` chunks of ``0..n-1`` with a tqdm bar over items."""
    if size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {size}")
    bar = tqdm(total=n, desc=desc, disable=not progress, unit="run")
    for start in range(0, n, size):
        chunk = range(start, min(start + size, n))
        yield chunk
        bar.update(len(chunk))
    bar.close()


def bridge_last_token_hooks(
    model: Any,
    seqs: Sequence[Sequence[int]],
    names: Sequence[str],
    take: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
    stop_after: str | None,
) -> dict[str, torch.Tensor]:
    """Run ``seqs`` (one right-padded batch) through the bridge; ``take(name, value, last)`` picks what to keep per hook."""
    ids, mask = pad_tokens(seqs, pad_id(model))
    last = mask.sum(1) - 1
    got: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            got[name] = take(name, x, last.to(x.device)).float().cpu()
            if name == stop_after:
                raise _Done
        return fn

    device = model.cfg.device
    try:
        with torch.no_grad(), forward_hooks(model, [(n, grab(n)) for n in names]):
            model(ids.to(device), attention_mask=mask.to(device), return_type=None)
    except _Done:
        pass
    missing = [n for n in names if n not in got]
    if missing:
        raise WorkbenchError(f"hooks {missing[:3]} did not run on this model")
    return got


# --- forward passes with edits of the residual stream ---------------------------------------
@dataclass(frozen=True)
class Edit:
    """Change ``resid_post`` of ``layer`` at token ``pos``: ``mode="set"`` replaces it by ``vector``, ``"add"`` adds it."""

    layer: int
    pos: int
    vector: Float[torch.Tensor, "d_model"]
    mode: str = "set"


@contextlib.contextmanager
def _edit_hooks(model: Any, plain: Any, rows: Sequence[Sequence[Edit]], offset: int) -> Iterator[None]:
    """Hooks applying ``rows[r]`` to batch row ``r`` (positions shifted by ``offset``): plain decoder layers or the bridge."""
    by_layer: dict[int, list[tuple[int, Edit]]] = {}
    for r, edits in enumerate(rows):
        for e in edits:
            by_layer.setdefault(int(e.layer), []).append((r, e))

    def apply(h: torch.Tensor, layer: int) -> torch.Tensor:
        h = h.clone()
        for r, e in by_layer[layer]:
            v = e.vector.to(h.device, h.dtype)
            h[r, e.pos - offset] = v if e.mode == "set" else h[r, e.pos - offset] + v
        return h

    if plain is not None:
        blocks = decoder_layers(plain)
        handles = []
        try:
            for layer in by_layer:
                fn = lambda m, a, out, layer=layer: with_layer_output(out, apply(layer_output(out), layer))  # noqa: E731
                handles.append(blocks[layer].register_forward_hook(fn))
            yield
        finally:
            for handle in handles:
                handle.remove()
    else:
        hooks = [(f"blocks.{layer}.hook_resid_post", lambda x, layer=layer: apply(x, layer)) for layer in by_layer]
        with forward_hooks(model, hooks):
            yield


def _fast_plain(model: Any) -> Any:
    """The plain model when its final hidden state times the output embedding gives the logits (no soft-capping)."""
    plain = plain_model_for(model)
    if plain is None or getattr(plain.config, "final_logit_softcapping", None) or plain.get_output_embeddings() is None:
        return None
    return plain


@torch.no_grad()
def edited_logprobs(
    model: Any,
    ids: Sequence[int],
    rows: Sequence[Sequence[Edit]],
    positions: Sequence[int],
    batch_size: int = 16,
    desc: str = "patched runs",
    progress: bool = True,
) -> Float[torch.Tensor, "n_rows n_pos vocab"]:
    """Log-probabilities at ``positions`` of ``ids`` run once per row of edits (an empty row is the clean run).

    On the plain model, the tokens before the first edited or read position are run once and
    reused from a KV cache (no edit can change them), and logits are computed only where read.
    """
    from transformers import DynamicCache

    device = model.cfg.device
    n = len(ids)
    if any(not 0 <= e.pos < n for r in rows for e in r) or any(not 0 <= p < n for p in positions):
        raise WorkbenchError(f"an edited or read position lies outside the {n}-token prompt")
    base = torch.tensor([list(ids)], dtype=torch.long, device=device)
    plain = _fast_plain(model)
    first = min([e.pos for r in rows for e in r] + list(positions))
    prefix = first if plain is not None and first >= 4 else 0
    cache = None
    if prefix:
        cache = DynamicCache(config=plain.config)
        plain.base_model(input_ids=base[:, :prefix], attention_mask=torch.ones_like(base[:, :prefix]), past_key_values=cache, use_cache=True)
    read = torch.tensor(list(positions), device=device)
    out = []
    for chunk in batches(len(rows), batch_size, desc, progress and len(rows) > batch_size):
        sub = [rows[i] for i in chunk]
        x = base.expand(len(sub), -1)
        with _edit_hooks(model, plain, sub, prefix):
            if plain is not None:
                past = None
                if cache is not None:
                    past = copy.deepcopy(cache)
                    past.batch_repeat_interleave(len(sub))
                hidden = plain.base_model(
                    input_ids=x[:, prefix:], attention_mask=torch.ones_like(x), past_key_values=past, use_cache=past is not None
                ).last_hidden_state
                logits = plain.get_output_embeddings()(hidden[:, read - prefix])
            else:
                logits = model(x, attention_mask=torch.ones_like(x))[:, read]
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def clean_forward(
    model: Any, ids: Sequence[int], layers: Sequence[int], positions: Sequence[int]
) -> tuple[Float[torch.Tensor, "n_layers seq d_model"], Float[torch.Tensor, "n_pos vocab"]]:
    """One unedited run of ``ids``: ``resid_post`` at every position of ``layers``, and log-probabilities at ``positions``."""
    device = model.cfg.device
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    read = torch.tensor(list(positions), device=device)
    got: dict[int, torch.Tensor] = {}
    plain = _fast_plain(model)
    if plain is not None:
        blocks = decoder_layers(plain)
        handles = [
            blocks[layer].register_forward_hook(lambda m, a, out, layer=layer: got.__setitem__(layer, layer_output(out)[0].float().cpu()))
            for layer in layers
        ]
        try:
            hidden = plain.base_model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            logits = plain.get_output_embeddings()(hidden[0, read])
        finally:
            for handle in handles:
                handle.remove()
    else:
        hooks = [(f"blocks.{layer}.hook_resid_post", lambda h, layer=layer: got.__setitem__(layer, h[0].float().cpu())) for layer in layers]
        with forward_hooks(model, hooks):
            logits = model(x, attention_mask=torch.ones_like(x))[0, read]
    return torch.stack([got[layer] for layer in layers]), torch.log_softmax(logits.float(), dim=-1).cpu()


def effect(m_x: torch.Tensor, m_with: torch.Tensor, m_without: torch.Tensor) -> torch.Tensor:
    """Normalised effect: 0 where the metric equals the without-instruction run's, 1 where it equals the with run's."""
    return (m_x - m_without) / (m_with - m_without)
