"""Peer steering libraries for ``workbench bench``: ``steering-vectors`` and ``repeng``, each through its own API.

Each peer adds the same vector (``coeff * unit``) to the output of decoder layer ``L`` of a plain
``transformers`` model, which is the tensor TransformerLens calls ``blocks.L.hook_resid_post``, i.e.
the workbench's ``add`` mode at ``resid_post``:

- ``steering-vectors``: ``SteeringVector({L: unit}, "decoder_block").apply(hf, multiplier=coeff)``
  registers a forward hook on ``model.layers[L]`` (its guessed ``decoder_block`` matcher) that adds
  ``multiplier * vector`` at every position, padding included.
- ``repeng``: ``ControlModel(hf, [L])`` replaces ``model.layers[L]`` by a wrapper that adds
  ``coeff * directions[L]`` to the layer's output (no normalisation unless ``normalize=True``,
  which is not used); it skips left-padding positions, which attention masks out anyway. Its own
  training (``ControlVector.train``) reads ``hidden_states[L]``, the *input* of layer ``L``, but adds at
  the layer's output; here the vector is given, not trained, so that offset does not arise.
  ``ControlModel`` mutates the model: it is unwrapped again after each call.

Neither installs with its dependencies under this project's pins (``steering-vectors`` asks for
``transformers<5``, ``repeng`` for ``numpy<2``): ``make setup`` installs both with ``--no-deps``.
``repeng 0.4.0`` names ``np.float_`` (removed in NumPy 2) in type annotations of ``ControlVector``,
evaluated at import; :func:`import_peer` aliases it to ``np.float64`` (its NumPy 1 meaning) for the
import only and removes the alias afterwards. Nothing else in either package needed changing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Int

from .arguments import check_count
from .errors import LayerError, ShapeError, SteeringError, WorkbenchError
from .decoding import eos_token_ids, generate
from .models import model_info
from .models.plain import decoder_layers
from .steering import SteeringSpec, hidden_size, steer

PEERS = ("steering-vectors", "repeng")
_MODULES = {"steering-vectors": "steering_vectors", "repeng": "repeng"}
INSTALL = "pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0"


@dataclass(frozen=True)
class PeerStatus:
    """Whether a peer library imports here: its installed version, or the error that stopped it."""

    name: str
    version: str | None
    error: str | None

    @property
    def available(self) -> bool:
        return self.error is None


def import_peer(name: str) -> Any:
    """Import a peer's module (``repeng`` with the ``np.float_`` alias for the import only).

    >>> sv = import_peer("steering-vectors")
    """
    if name not in _MODULES:
        raise WorkbenchError(f"unknown peer {name!r}; choose one of {PEERS}")
    if name != "repeng":
        return importlib.import_module(_MODULES[name])
    import numpy as np

    added = "float_" not in vars(np)
    if added:
        np.float_ = np.float64  # NumPy 1's alias, read only by repeng's annotations at import
    try:
        return importlib.import_module("repeng")
    finally:
        if added:
            del np.float_


def peer_status(name: str) -> PeerStatus:
    """Try to import a peer; its version, or the exact error (``ModuleNotFoundError: ...``) when it fails.

    >>> peer_status("repeng").available
    """
    try:
        import_peer(name)
    except WorkbenchError:
        raise
    except Exception as exc:  # any import-time failure of a third-party package is a reason to skip its row
        return PeerStatus(name, None, f"{type(exc).__name__}: {exc}".strip())
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return PeerStatus(name, version, None)


def _check(hf: Any, spec: SteeringSpec, prompts: Sequence[str], n: int) -> int:
    """Refuse what the peers cannot express as the workbench's add mode at resid_post, before any work."""
    if spec.mode != "add" or spec.positions != "all" or spec.hook != "resid_post":
        raise SteeringError(
            f"{spec.name}: the peers add a vector at a decoder layer's output at every position; "
            f"got mode={spec.mode!r}, positions={spec.positions!r}, hook={spec.hook!r} "
            "(need add, all, resid_post)"
        )
    n_layers = len(decoder_layers(hf))
    if not 0 <= int(spec.layer) < n_layers:
        raise LayerError(f"{spec.name}: layer {spec.layer} is out of range for a model with {n_layers} layers")
    d_model = hidden_size(hf)
    if tuple(spec.unit.shape) != (d_model,):
        raise ShapeError(f"{spec.name}: direction has shape {tuple(spec.unit.shape)}, the model's d_model is {d_model}")
    if not bool(torch.isfinite(spec.unit).all()):
        raise SteeringError(f"{spec.name}: the direction contains NaN or infinite values")
    if isinstance(prompts, str) or not prompts:
        raise WorkbenchError("peer generation needs a non-empty list of prompts")
    return check_count("new tokens", n)


def _hf_generate(model: Any, hf: Any, prompts: Sequence[str], n: int) -> Int[torch.Tensor, "batch n"]:
    """Greedy ``hf.generate`` of exactly ``n`` new tokens per prompt, encoded and stopped as the workbench does."""
    info = model_info(model)
    ids, mask = info.formatter.encode(list(prompts), padding_side="left")
    device = next(hf.parameters()).device
    tok = model.tokenizer
    eos = eos_token_ids(model)
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n, min_new_tokens=n,
            do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
        )
    return out[:, ids.shape[1]:]


def generate_steering_vectors(
    model: Any, hf: Any, spec: SteeringSpec, prompts: Sequence[str], n: int
) -> Int[torch.Tensor, "batch n"]:
    """Greedy tokens of ``hf`` steered by ``steering-vectors``' ``SteeringVector.apply`` (``add`` at ``resid_post``).

    ``model`` is the workbench model (prompt format, tokenizer); ``hf`` a plain ``transformers`` model with its weights.

    >>> tokens = generate_steering_vectors(model, hf, SteeringSpec(unit=u, layer=24, coeff=8.0), prompts, 32)
    """
    n = _check(hf, spec, prompts, n)
    sv = import_peer("steering-vectors")
    vector = sv.SteeringVector(layer_activations={int(spec.layer): spec.unit.detach().to(next(hf.parameters()).dtype)},
                               layer_type="decoder_block")
    with vector.apply(hf, multiplier=float(spec.coeff)):
        return _hf_generate(model, hf, prompts, n)


def generate_repeng(model: Any, hf: Any, spec: SteeringSpec, prompts: Sequence[str], n: int) -> Int[torch.Tensor, "batch n"]:
    """Greedy tokens of ``hf`` steered by ``repeng``'s ``ControlModel.set_control`` (``add`` at ``resid_post``).

    The model is wrapped for the call and unwrapped after it, whatever happens.

    >>> tokens = generate_repeng(model, hf, SteeringSpec(unit=u, layer=24, coeff=8.0), prompts, 32)
    """
    n = _check(hf, spec, prompts, n)
    repeng = import_peer("repeng")
    layer = int(spec.layer)
    vector = repeng.ControlVector(model_type=hf.config.model_type,
                                  directions={layer: spec.unit.detach().float().cpu().numpy()})
    controlled = repeng.ControlModel(hf, [layer])
    try:
        controlled.set_control(vector, coeff=float(spec.coeff))
        return _hf_generate(model, controlled, prompts, n)
    finally:
        controlled.reset()
        controlled.unwrap()


GENERATORS: dict[str, Callable[..., torch.Tensor]] = {
    "steering-vectors": generate_steering_vectors,
    "repeng": generate_repeng,
}


def row_name(peer: str) -> str:
    """The bench row of a peer, named like the workbench's: ``"repeng, steered (add, 1 layer)"``."""
    return f"{peer}, steered (add, 1 layer)"


def peer_variants(
    model: Any, hf: Any, spec: SteeringSpec, check_prompts: Sequence[str], check_tokens: int = 8,
    names: Sequence[str] = PEERS,
) -> tuple[dict[str, Callable[[list[str], int], Any]], dict[str, dict[str, Any]]]:
    """The bench rows of the peers that work here, and a report entry for every peer (version, check, note).

    Each available peer first generates ``check_tokens`` tokens for ``check_prompts`` and is compared
    token for token with ``wb.steer`` + ``wb.generate`` under the same spec (``tokens_equal_workbench``);
    a peer that fails to import or to run gets no row and a note naming the exact error.

    >>> rows, report = peer_variants(model, hf, spec, prompts[:2])
    """
    check_count("check_tokens", check_tokens)
    _check(hf, spec, check_prompts, check_tokens)
    with steer(model, spec):
        expected = generate(model, list(check_prompts), max_new_tokens=check_tokens, min_new_tokens=check_tokens,
                            batch_size=len(check_prompts), return_tokens=True)
    variants: dict[str, Callable[[list[str], int], Any]] = {}
    report: dict[str, dict[str, Any]] = {}
    for name in names:
        status = peer_status(name)
        entry: dict[str, Any] = {"version": status.version, "tokens_equal_workbench": None, "note": None}
        report[name] = entry
        if not status.available:
            entry["note"] = f"{name} not measured: import failed ({status.error}); install with `{INSTALL}`"
            continue
        fn = GENERATORS[name]
        try:
            got = fn(model, hf, spec, check_prompts, check_tokens).tolist()
        except WorkbenchError:
            raise
        except Exception as exc:  # a peer that imports but breaks under these pins: skip its row, say why
            entry["note"] = f"{name} {status.version} not measured: it failed at run time ({type(exc).__name__}: {exc})"
            continue
        entry["tokens_equal_workbench"] = got == expected
        if got != expected:
            entry["note"] = (f"{name} {status.version}: its steered tokens differ from the workbench's on the check "
                             f"prompts ({check_tokens} tokens); its row is measured but does not steer the same thing")
        variants[row_name(name)] = lambda batch, n, fn=fn: fn(model, hf, spec, batch, n)
    return variants, report


def peer_notes(report: dict[str, dict[str, Any]], check_prompts: int, check_tokens: int) -> list[str]:
    """One line per peer for the printed benchmark: what was measured and checked, or why not."""
    lines = []
    for name, entry in report.items():
        if entry["note"] is not None:
            lines.append(entry["note"])
        else:
            lines.append(f"{name} {entry['version']}: installed with --no-deps; its steered greedy tokens equal the "
                         f"workbench's on {check_prompts} check prompts x {check_tokens} tokens")
    return lines
