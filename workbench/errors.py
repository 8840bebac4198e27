"""Exception types: every error the workbench raises on bad input is a ``WorkbenchError``.

The CLI prints ``str(error)`` on one line and exits non-zero; notebooks see a short message
that names the problem instead of a stack trace from deep inside torch.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class for all errors caused by bad input or a missing resource."""


class ModelNotFoundError(WorkbenchError):
    """An unknown model name, a missing path, or weights that are not installed or cached."""


class DatasetError(WorkbenchError):
    """An empty, malformed or unknown dataset (file, line and field are named)."""


class ShapeError(WorkbenchError):
    """Tensors whose shapes do not fit together (e.g. a vector from a model with another d_model)."""


class LayerError(WorkbenchError):
    """A layer index outside the model's range."""


class VectorFileError(WorkbenchError):
    """A direction or activation file that is missing, truncated, corrupt or of the wrong kind."""


class SteeringError(WorkbenchError):
    """An invalid steering request (unknown mode or positions, NaN in a vector, ...)."""


class ContextLengthError(WorkbenchError):
    """A prompt (plus the tokens to generate) longer than the model's context."""


class RunFolderBusy(WorkbenchError):
    """Another process holds the lock on the run folder."""
