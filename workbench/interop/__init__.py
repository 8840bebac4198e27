"""Vector interop: llama.cpp control vectors, plain ``transformers`` models, other steering tools' files.

- :func:`export_control_vector` / :func:`load_control_vector`: the GGUF files llama.cpp reads with
  ``--control-vector`` (``direction.N`` is added to the output of block N, our ``blocks.N.hook_resid_post``).
- :func:`load_vectors` / :func:`import_direction`: per-layer tensors from torch or safetensors files
  (never unpickling anything but tensors), or any supported file detected by content.
"""

from .gguf_control import export_control_vector, llama_cpp_index, load_control_vector
from .importing import import_direction
from .torch_vectors import detect_format, load_vectors, parse_layer_key

__all__ = [
    "detect_format", "export_control_vector", "import_direction",
    "llama_cpp_index", "load_control_vector", "load_vectors", "parse_layer_key",
]
