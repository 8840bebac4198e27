"""instruction-steering workbench: find, inspect and steer instruction directions in language models.

Five lines from import to a steered generation::

    import workbench as wb
    model = wb.load_model("smollm2-135m-instruct")
    title = wb.compute_direction(model, wb.load_pairs("format", "detectable_format:title"))
    with wb.steer(model, title, layer=24, mode="project"):
        print(wb.generate(model, ["Write a short poem about the sea."])[0])
"""

from .activations import collect_activations, load_activations, save_activations
from .data import (
    FAMILIES,
    PairDataset,
    PairRow,
    list_instructions,
    load_ifeval_jsonl,
    load_paired_jsonl,
    load_pairs,
    load_pairs_file,
)
from .analysis.monitor import monitor
from .directions import Direction, LayerDirection, compute_direction, compute_directions, compute_directions_by_method
from .errors import (
    DatasetError,
    LayerError,
    ModelNotFoundError,
    ShapeError,
    SteeringError,
    VectorFileError,
    WorkbenchError,
)
from .decoding import generate
from .models import BUILTIN_MODELS, DEFAULT_MODEL, PromptFormatter, load_model, model_info
from .steering import Condition, SteeringSpec, fit_condition, steer
from .transfer import LayerMatch, ResidualMap, fit_map, load_maps, match_layers, save_maps, transfer_direction
from .version import __version__

__all__ = [
    "BUILTIN_MODELS", "Condition", "DEFAULT_MODEL", "FAMILIES", "DatasetError", "Direction", "LayerDirection",
    "LayerError", "LayerMatch", "ModelNotFoundError", "PairDataset", "PairRow", "PromptFormatter", "ResidualMap", "ShapeError",
    "SteeringError", "SteeringSpec", "VectorFileError", "WorkbenchError", "__version__",
    "collect_activations", "compute_direction", "compute_directions", "compute_directions_by_method", "fit_condition", "fit_map", "generate", "list_instructions",
    "load_activations", "load_ifeval_jsonl", "load_maps", "load_model", "load_paired_jsonl", "load_pairs",
    "load_pairs_file", "match_layers", "model_info", "monitor", "save_activations", "save_maps", "steer", "transfer_direction",
]
