"""llama.cpp control vectors: write a :class:`Direction` as the GGUF file ``--control-vector`` reads, and read one back.

Layer numbering (checked against llama.cpp's source, see docs/interop.md): llama.cpp adds the
tensor ``direction.N`` to the output of its block ``N`` (0-based, the same block numbering as
``blk.N.*`` weights and Hugging Face ``model.layers[N]``), i.e. to our ``blocks.N.hook_resid_post``.
Index 0 is rejected by llama.cpp's loader, so a direction at the output of block 0 cannot be
expressed; ``blocks.N.hook_resid_pre`` is the output of block ``N - 1`` and is written as
``direction.(N-1)``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..directions import Direction
from ..errors import LayerError, ShapeError, SteeringError, VectorFileError
from ..io import atomic_path

ARCH = "controlvector"
KEY_MODEL_HINT = "controlvector.model_hint"
KEY_LAYER_COUNT = "controlvector.layer_count"
# Workbench's own keys: llama.cpp ignores key/values in control-vector files, so they ride along.
KEY_PREFIX = "workbench."
TENSOR_PREFIX = "direction."
FIRST_FILE_INDEX = 1  # llama.cpp refuses direction.0 ("there's never a tensor for layer 0")
DEFAULT_MODEL_HINT = "llama"

_TENSOR_NAME = re.compile(r"direction\.(\d+)")


def llama_cpp_index(layer: int, hook: str = "resid_post") -> int:
    """The ``direction.<index>`` that llama.cpp applies at our hook point ``blocks.{layer}.hook_{hook}``.

    ``resid_post`` of block L is the output of llama.cpp's layer L (index L); ``resid_pre`` of
    block L is the output of layer L - 1. ``resid_mid`` has no llama.cpp counterpart.
    """
    layer = int(layer)
    if hook == "resid_post":
        index = layer
    elif hook == "resid_pre":
        index = layer - 1
    else:
        raise LayerError(
            f"llama.cpp control vectors act on block outputs; a direction at hook_{hook} has no llama.cpp equivalent"
        )
    if index < FIRST_FILE_INDEX:
        raise LayerError(
            f"blocks.{layer}.hook_{hook} is the output of llama.cpp layer {index}; llama.cpp cannot steer "
            f"there (control-vector indices start at {FIRST_FILE_INDEX}: direction.0 is refused)"
        )
    return index


def export_control_vector(
    direction: Direction,
    path: str | Path,
    layers: Sequence[int] | None = None,
    coeff: float = 1.0,
    normalize: bool = True,
    model_hint: str | None = None,
) -> dict[int, int]:
    """Write ``direction`` as a llama.cpp control-vector GGUF; returns ``{our layer: file index}``.

    Each layer's tensor is ``coeff * unit`` (``normalize=True``, the default) or ``coeff * raw mean
    difference`` (``normalize=False``). ``layers=None`` writes every layer llama.cpp can steer
    (all but the output of block 0); naming a layer it cannot steer is a ``LayerError``.
    """
    if not isinstance(direction, Direction):
        raise SteeringError(f"export_control_vector needs a Direction, got {type(direction).__name__}")
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not math.isfinite(coeff):
        raise SteeringError(f"coeff must be a finite number, got {coeff!r}")
    if layers is None:
        chosen = [L for L in direction.layers if _steerable(L, direction.hook)]
        if not chosen:
            raise LayerError(
                f"direction {direction.name!r} covers only layers llama.cpp cannot steer ({list(direction.layers)})"
            )
    else:
        chosen = [int(L) for L in layers]
        if not chosen:
            raise LayerError("no layers given")
        if len(set(chosen)) != len(chosen):
            raise LayerError(f"layers repeat: {chosen}")
    mapping = {L: llama_cpp_index(L, direction.hook) for L in chosen}
    rows = []
    for L in chosen:
        at = direction.at(L)  # LayerError names the layers the direction has
        rows.append((at.unit if normalize else at.vector) * float(coeff))
    hint = model_hint or str(direction.extra.get("model_hint") or DEFAULT_MODEL_HINT)
    flip = -1.0 if coeff < 0 else 1.0  # the stored unit direction flips with a negative coeff

    import gguf

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=ARCH)
        writer.add_string(KEY_MODEL_HINT, hint)
        writer.add_uint32(KEY_LAYER_COUNT, int(direction.n_model_layers))
        writer.add_name(direction.name)
        writer.add_string(KEY_PREFIX + "model_name", direction.model_name)
        writer.add_uint32(KEY_PREFIX + "n_model_layers", int(direction.n_model_layers))
        writer.add_uint32(KEY_PREFIX + "d_model", int(direction.d_model))
        writer.add_string(KEY_PREFIX + "source_hook", direction.hook)
        writer.add_bool(KEY_PREFIX + "normalized", bool(normalize))
        writer.add_float32(KEY_PREFIX + "coeff", float(coeff))
        if direction.proj_with is not None and direction.proj_without is not None and coeff != 0:
            idx = [direction.layers.index(L) for L in chosen]
            writer.add_array(KEY_PREFIX + "proj_with", [flip * float(direction.proj_with[i]) for i in idx])
            writer.add_array(KEY_PREFIX + "proj_without", [flip * float(direction.proj_without[i]) for i in idx])
        for L, row in zip(chosen, rows):
            writer.add_tensor(f"{TENSOR_PREFIX}{mapping[L]}", row.detach().cpu().float().numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return mapping


def _steerable(layer: int, hook: str) -> bool:
    try:
        llama_cpp_index(layer, hook)
    except LayerError:
        return False
    return True


def is_gguf(path: str | Path) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # a malformed value reads as absent
        return None


def load_control_vector(path: str | Path, model: Any | None = None, name: str | None = None) -> Direction:
    """Read a llama.cpp control-vector GGUF into a :class:`Direction` (``direction.N`` -> our layer N, resid_post).

    ``model_name`` comes from workbench's own key or else ``controlvector.model_hint``;
    ``n_model_layers`` from the model, workbench's key, or ``max(layer_count, highest index + 1)``.
    With ``model``, d_model and the layer range are checked against it.
    """
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such file")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises ValueError, struct and index errors on bad input
        raise VectorFileError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {_first_line(exc)})") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise VectorFileError(
            f"{path}: GGUF architecture is {arch!r}, not a llama.cpp control vector ({ARCH!r})"
        )
    found: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        m = _TENSOR_NAME.fullmatch(t.name)
        if m is None:
            raise VectorFileError(f"{path}: tensor {t.name!r} is not named direction.<layer> (llama.cpp would refuse it)")
        index = int(m.group(1))
        if index < FIRST_FILE_INDEX:
            raise VectorFileError(f"{path}: tensor {t.name!r}: llama.cpp control-vector indices start at 1")
        if index in found:
            raise VectorFileError(f"{path}: tensor {t.name!r} appears twice")
        if len(t.shape) != 1 and int(np.prod(t.shape[1:])) != 1:
            raise VectorFileError(f"{path}: tensor {t.name!r} has shape {list(t.shape)}, expected one vector")
        if t.tensor_type.name not in ("F32", "F16"):
            raise VectorFileError(f"{path}: tensor {t.name!r} is {t.tensor_type.name}; control vectors are F32")
        try:
            data = np.array(t.data, dtype=np.float32, copy=True).reshape(-1)
        except Exception as exc:
            raise VectorFileError(f"{path}: tensor {t.name!r} is unreadable ({_first_line(exc)}); truncated file?") from None
        if data.size != int(t.n_elements) or data.size == 0:
            raise VectorFileError(
                f"{path}: tensor {t.name!r} holds {data.size} of {int(t.n_elements)} values (truncated file?)"
            )
        found[index] = torch.from_numpy(data)
    if not found:
        raise VectorFileError(f"{path}: control vector holds no direction tensors")
    layers = sorted(found)
    widths = {int(found[L].numel()) for L in layers}
    if len(widths) != 1:
        raise ShapeError(f"{path}: direction tensors differ in length ({sorted(widths)}); one d_model expected")
    for L in layers:
        if not torch.isfinite(found[L]).all():
            raise VectorFileError(f"{path}: direction.{L} contains NaN or infinite values")
    d_model = widths.pop()
    hint = _field(reader, KEY_MODEL_HINT)
    hint = str(hint) if hint is not None else ""
    if model is not None:
        from ..models.loading import model_info

        n_layers, model_d = int(model.cfg.n_layers), int(model.cfg.d_model)
        if d_model != model_d:
            raise ShapeError(f"{path}: control vector has d_model={d_model}; the model has d_model={model_d}")
        if layers[-1] >= n_layers:
            raise LayerError(f"{path}: control vector has direction.{layers[-1]}; the model has layers 0..{n_layers - 1}")
        model_name = model_info(model).name
    else:
        stored = _field(reader, KEY_PREFIX + "n_model_layers")
        count = _field(reader, KEY_LAYER_COUNT)
        if isinstance(stored, int) and stored > layers[-1]:
            n_layers = stored
        else:
            n_layers = max(int(count) if isinstance(count, int) else 0, layers[-1] + 1)
        model_name = str(_field(reader, KEY_PREFIX + "model_name") or hint or "unknown")
    proj_with = _proj(_field(reader, KEY_PREFIX + "proj_with"), len(layers))
    proj_without = _proj(_field(reader, KEY_PREFIX + "proj_without"), len(layers))
    if proj_with is None or proj_without is None:
        proj_with = proj_without = None
    extra = {
        "source_format": "gguf-control-vector",
        "source_file": path.name,
        "model_hint": hint,
    }
    for key in ("normalized", "coeff", "source_hook"):
        value = _field(reader, KEY_PREFIX + key)
        if value is not None:
            extra[key] = value
    return Direction(
        vectors=torch.stack([found[L] for L in layers]),
        layers=tuple(layers),
        name=name or str(_field(reader, "general.name") or path.stem),
        model_name=model_name,
        d_model=d_model,
        n_model_layers=n_layers,
        hook="resid_post",
        proj_with=proj_with,
        proj_without=proj_without,
        extra=extra,
    )


def _proj(value: Any, n: int) -> torch.Tensor | None:
    if not isinstance(value, list) or len(value) != n:
        return None
    t = torch.tensor([float(v) for v in value], dtype=torch.float32)
    return t if torch.isfinite(t).all() else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
