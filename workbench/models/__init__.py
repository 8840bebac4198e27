"""Models: built-in names, GGUF conversion and caching, prompt formatting, loading as a bridge."""

from .loading import ModelInfo, load_model, model_info
from .prompts import PromptFormatter
from .registry import BUILTIN_MODELS, DEFAULT_MODEL, BuiltinModel

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "BuiltinModel", "ModelInfo", "PromptFormatter", "load_model", "model_info"]
