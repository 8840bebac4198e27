"""Import per-layer vectors saved by other steering tools: plain tensors plus layer indices.

Accepted: a ``torch.save`` file or a safetensors file holding a dict ``layer -> [d_model]`` (keys
``5``, ``"5"``, ``"layers.5"``, ``"model.layers.5"``, ``"blocks.5.hook_resid_post"``), or a single
``[n_layers, d_model]`` tensor (row i = layer i). :func:`~workbench.interop.importing.import_direction`
also reads llama.cpp GGUF control vectors, workbench direction files and lm-evaluation-harness steer files
(:mod:`workbench.interop.lm_eval`), detected by content here (:func:`detect_format`). Nothing is ever unpickled beyond tensors and plain
containers: torch files are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..directions import Direction
from ..errors import LayerError, ShapeError, VectorFileError, WorkbenchError

FORMATS = ("gguf", "safetensors", "torch", "workbench", "lm-eval")

_LAYER_KEY = re.compile(r"(?:(?:model\.)?(?:layers|layer|blocks|block|h)[._])?(\d+)(?:\.hook_resid_post)?")


def detect_format(path: str | Path) -> str:
    """``gguf``, ``workbench`` (a workbench direction file), ``safetensors``, ``lm-eval`` or ``torch``, judged by content.

    ``lm-eval``: a torch file holding an lm-evaluation-harness steer dict ``{hookpoint: {"steering_vector", ...}}``
    (read with ``weights_only=True``; a torch file that does not load is ``torch``, and its reader says why).

    >>> detect_format("title.pt")  # written by workbench.interop.lm_eval.export_lm_eval
    'lm-eval'
    """
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):  # zip or legacy pickle
        return _torch_kind(path)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "workbench" if _has_workbench_metadata(path) else "safetensors"
    raise VectorFileError(
        f"{path}: not a vector file workbench can read (expected GGUF, safetensors or a torch.save file)"
    )


def _torch_kind(path: Path) -> str:
    """``lm-eval`` for a torch file shaped like an lm-eval steer file, else ``torch`` (also when it does not load)."""
    try:
        content = _read_torch(path)
    except VectorFileError:
        return "torch"
    return "lm-eval" if is_lm_eval_content(content) else "torch"


def is_lm_eval_content(content: Any) -> bool:
    """Whether a loaded object is shaped like an lm-eval steer file: a non-empty dict of dicts with ``steering_vector``."""
    return (isinstance(content, dict) and bool(content)
            and all(isinstance(v, dict) and "steering_vector" in v for v in content.values()))


def _has_workbench_metadata(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "workbench" in (f.metadata() or {})
    except Exception:
        return False


def parse_layer_key(key: Any) -> int:
    """Layer index from a dict key: an int, ``"5"``, ``"layers.5"``, ``"model.layers.5"``, ``"blocks.5.hook_resid_post"``."""
    if isinstance(key, bool):
        raise VectorFileError(f"key {key!r} is not a layer index")
    if isinstance(key, int):
        if key < 0:
            raise LayerError(f"layer index {key} is negative")
        return key
    if isinstance(key, str):
        m = _LAYER_KEY.fullmatch(key.strip())
        if m is not None:
            return int(m.group(1))
    raise VectorFileError(
        f"key {key!r} is not a layer index (use 5, '5', 'layers.5', 'model.layers.5' or 'blocks.5.hook_resid_post')"
    )


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise VectorFileError(
            f"{path}: refused: the file holds Python objects other than tensors and plain containers "
            f"({_first_line(exc)}); loading it would mean unpickling arbitrary code, and only "
            "weights_only loading is allowed. Re-save the vectors as a dict of tensors or as safetensors"
        ) from None
    except Exception as exc:  # truncated zip, bad pickle stream, not a torch file at all
        raise VectorFileError(
            f"{path}: not a readable torch.save file ({type(exc).__name__}: {_first_line(exc)}); truncated or corrupt?"
        ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise VectorFileError(f"{path}: not a readable safetensors file ({_first_line(exc)}); truncated or corrupt?") from None


def _as_vector(value: Any, path: Path, key: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise VectorFileError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    if not (value.is_floating_point()):
        raise VectorFileError(f"{path}: entry {key!r} has dtype {value.dtype}; steering vectors are floating point")
    if value.dim() == 2 and value.shape[0] == 1:
        value = value[0]
    if value.dim() != 1:
        raise ShapeError(f"{path}: entry {key!r} has shape {tuple(value.shape)}, expected one [d_model] vector")
    return value.detach().to("cpu", torch.float32)


def _vectors_from_content(content: Any, path: Path, layers: Sequence[int] | None) -> dict[int, torch.Tensor]:
    """``{layer: vector}`` from a loaded object: a layer-keyed dict or one [n_layers, d_model] tensor."""
    if isinstance(content, Mapping) and len(content) == 1:
        ((key, value),) = content.items()
        if isinstance(value, torch.Tensor) and (layers is not None or not _is_layer_key(key)):
            content = value  # one tensor under a name, e.g. safetensors {"directions": [n_layers, d_model]}
    if isinstance(content, torch.Tensor):
        if content.dim() == 1 and layers is None:
            raise ShapeError(
                f"{path}: holds a single [d_model] vector; pass layers=[L] (--layers L) to say which layer it is"
            )
        return _rows(content, path, layers)
    if not isinstance(content, Mapping):
        raise VectorFileError(
            f"{path}: holds a {type(content).__name__}; expected a dict of layer -> tensor or one [n_layers, d_model] tensor"
        )
    if not content:
        raise VectorFileError(f"{path}: holds no vectors")
    if layers is not None:
        raise WorkbenchError(f"{path}: layers= applies to a single tensor; this file names its layers in its keys")
    out: dict[int, torch.Tensor] = {}
    for key, value in content.items():
        try:
            layer = parse_layer_key(key)
        except VectorFileError as exc:
            raise VectorFileError(f"{path}: {exc}") from None
        except LayerError as exc:
            raise LayerError(f"{path}: {exc}") from None
        if layer in out:
            raise VectorFileError(f"{path}: layer {layer} appears twice (key {key!r})")
        out[layer] = _as_vector(value, path, key)
    return out


def _is_layer_key(key: Any) -> bool:
    """Whether a key names a layer (an int, even a bad one, always does); other keys just name a tensor."""
    if isinstance(key, int) and not isinstance(key, bool):
        return True
    return isinstance(key, str) and _LAYER_KEY.fullmatch(key.strip()) is not None


def _rows(tensor: torch.Tensor, path: Path, layers: Sequence[int] | None) -> dict[int, torch.Tensor]:
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2:
        raise ShapeError(f"{path}: tensor has shape {tuple(tensor.shape)}, expected [n_layers, d_model]")
    if layers is None:
        layers = list(range(tensor.shape[0]))
    layers = [int(x) for x in layers]
    if len(layers) != tensor.shape[0]:
        raise ShapeError(f"{path}: tensor has {tensor.shape[0]} rows but {len(layers)} layers were given")
    if len(set(layers)) != len(layers):
        raise LayerError(f"{path}: layers repeat: {layers}")
    for layer in layers:
        if layer < 0:
            raise LayerError(f"{path}: layer index {layer} is negative")
    return {layer: _as_vector(tensor[i], path, layer) for i, layer in enumerate(layers)}


def load_vectors(
    path: str | Path,
    model: Any | None = None,
    layers: Sequence[int] | None = None,
    name: str | None = None,
    n_model_layers: int | None = None,
    format: str | None = None,
) -> Direction:
    """Read a torch or safetensors file of per-layer vectors into a :class:`Direction` (hook resid_post).

    Checks: one d_model across layers (and the model's, when ``model`` is given), layer indices
    in range, no NaN. ``layers`` names the rows of a single-tensor file. ``format`` (``torch`` or
    ``safetensors``) insists on that format instead of detecting it.
    """
    path = Path(path)
    found = detect_format(path)
    if found == "workbench":
        found = "safetensors"
    if format is not None and format != found:
        raise VectorFileError(f"{path}: expected a {format} file, but its content is {found}")
    if found == "torch":
        content: Any = _read_torch(path)
        source = "torch"
    elif found == "safetensors":
        content = _read_safetensors(path)
        source = "safetensors"
    elif found == "lm-eval":
        raise VectorFileError(f"{path}: an lm-eval steer file; use load_lm_eval() or import_direction()")
    else:
        raise VectorFileError(f"{path}: a {found} file; use load_control_vector() or import_direction()")
    vectors = _vectors_from_content(content, path, layers)
    return _direction(vectors, path, model, name, n_model_layers, {"source_format": source, "source_file": path.name})


def _direction(
    vectors: dict[int, torch.Tensor],
    path: Path,
    model: Any | None,
    name: str | None,
    n_model_layers: int | None,
    extra: dict[str, Any],
) -> Direction:
    order = sorted(vectors)
    widths = {int(vectors[L].shape[0]) for L in order}
    if len(widths) != 1:
        detail = ", ".join(f"layer {L}: {vectors[L].shape[0]}" for L in order[:8])
        raise ShapeError(f"{path}: vectors differ in d_model ({detail})")
    d_model = widths.pop()
    for L in order:
        if not torch.isfinite(vectors[L]).all():
            raise VectorFileError(f"{path}: the vector for layer {L} contains NaN or infinite values")
    model_name = "unknown"
    if model is not None:
        from ..models.loading import model_info

        model_d, n = int(model.cfg.d_model), int(model.cfg.n_layers)
        if d_model != model_d:
            raise ShapeError(f"{path}: vectors have d_model={d_model}; the model has d_model={model_d}")
        if n_model_layers is not None and int(n_model_layers) != n:
            raise LayerError(f"{path}: n_model_layers={n_model_layers} but the model has {n} layers")
        n_model_layers = n
        model_name = model_info(model).name
    if n_model_layers is None:
        n_model_layers = order[-1] + 1
    if order[-1] >= n_model_layers:
        hint = (
            " (a file with one row more than the model has layers may include the embeddings as row 0, "
            "like Hugging Face hidden_states: drop that row)"
            if len(order) == n_model_layers + 1 and order == list(range(len(order)))
            else ""
        )
        raise LayerError(f"{path}: layer {order[-1]} is out of range: the model has layers 0..{n_model_layers - 1}{hint}")
    return Direction(
        vectors=torch.stack([vectors[L] for L in order]),
        layers=tuple(order),
        name=name or path.stem,
        model_name=model_name,
        d_model=d_model,
        n_model_layers=int(n_model_layers),
        hook="resid_post",
        extra=extra,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
