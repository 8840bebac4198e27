"""Any supported vector file as a :class:`~workbench.directions.Direction`, its format detected by content:
llama.cpp GGUF control vectors (:mod:`.gguf_control`), workbench direction files, lm-evaluation-harness steer files
(:mod:`.lm_eval`), and torch or safetensors files of per-layer tensors (:mod:`.torch_vectors`).

>>> direction = import_direction("title.pt", model=model)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..directions import Direction
from ..errors import WorkbenchError
from .gguf_control import load_control_vector
from .lm_eval import load_lm_eval
from .torch_vectors import detect_format, load_vectors


def import_direction(
    path: str | Path,
    model: Any | None = None,
    layers: Sequence[int] | None = None,
    name: str | None = None,
) -> Direction:
    """Any supported vector file -> :class:`Direction`: llama.cpp GGUF, workbench file, lm-eval steer file, safetensors or torch.

    >>> import_direction("title.pt", model=model)  # an lm-eval steer file: the Direction load_lm_eval() reads
    """
    path = Path(path)
    found = detect_format(path)
    if found == "lm-eval":
        if layers is not None:
            raise WorkbenchError(f"{path}: an lm-eval steer file names its layers in its hookpoints; layers= does not apply")
        return load_lm_eval(path, model=model, name=name)
    if found == "gguf":
        if layers is not None:
            raise WorkbenchError(f"{path}: a GGUF control vector names its layers; layers= does not apply")
        return load_control_vector(path, model=model, name=name)
    if found == "workbench":
        if layers is not None:
            raise WorkbenchError(f"{path}: a workbench direction file names its layers; layers= does not apply")
        direction = Direction.load(path, model=model)
        return replace(direction, name=name) if name else direction
    return load_vectors(path, model=model, layers=layers, name=name)
