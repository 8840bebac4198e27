"""Random-weight twins of the paper's model families, built locally from ``transformers`` configs.

Each twin keeps what makes its family different (Phi-3's fused QKV and gate/up projections,
Gemma-2's attention and logit soft-capping and sliding window, Mistral's sliding window,
Llama-3's rope scaling with grouped-query attention, Qwen2's QKV biases) at a few narrow layers,
with the byte-level tokenizer of ``tiny-random-llama``. They are saved as ordinary Hugging Face
folders, so tests load them by path exactly as a user loads a checkpoint.

:data:`SHAPES` adds twins at real models' shapes (``smollm2``, ``llama3-3b``, ``mistral-7b``,
``gemma2-2b``): the family's config with the real model's layer count, widths, heads and
vocabulary, for measuring speed on any hardware without downloading weights. Their weights are
random and their tokenizer is still the byte-level one (ids past it decode to nothing), so what
they generate means nothing; :func:`twin_folder` builds one once into the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import WorkbenchError

WINDOW = 8  # sliding window (tokens) of the Gemma-2 and Mistral twins: shorter than the test prompts


def _common(tok: Any, hidden_size: int = 64) -> dict[str, Any]:
    return dict(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


# Each builder takes the tokenizer and keyword overrides of its config (a shape's real numbers, see SHAPES).
def _phi3(tok: Any, **over: Any) -> Any:
    from transformers import Phi3Config

    return Phi3Config(**{**_common(tok), "tie_word_embeddings": False, **over})


def _gemma2(tok: Any, **over: Any) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(**{**_common(tok), "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": WINDOW,
                           "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
                           **over})


def _mistral(tok: Any, **over: Any) -> Any:
    from transformers import MistralConfig

    return MistralConfig(**{**_common(tok), "head_dim": 16, "sliding_window": WINDOW, "tie_word_embeddings": False, **over})


def _llama3(tok: Any, **over: Any) -> Any:
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return LlamaConfig(**{**_common(tok), "head_dim": 16, "rope_parameters": rope, "tie_word_embeddings": False, **over})


def _qwen2(tok: Any, hidden_size: int = 64, **over: Any) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**{**_common(tok, hidden_size), "tie_word_embeddings": False, **over})


# Gemma multiplies embeddings by sqrt(d_model): shrink them, or the residual stream is the
# current token's embedding alone and greedy decoding cycles through one or two tokens.
EMBED_SCALE = {"gemma2": 0.125}

TWINS: dict[str, Callable[[Any], Any]] = {
    "phi3": _phi3, "gemma2": _gemma2, "mistral": _mistral, "llama3": _llama3, "qwen2": _qwen2,
}


def build_twin(family: str, out_dir: str | Path, seed: int = 0, scale: float = 0.2, hidden_size: int | None = None) -> Path:
    """Write a random-weight twin of ``family`` (one of :data:`TWINS`) to ``out_dir``; return the folder.

    A name of :data:`SHAPES` (``smollm2``, ``mistral-7b``, ...) builds that real shape instead
    (:func:`build_shape_twin`, the default init).

    Matrices are drawn with standard deviation ``scale`` (larger than the default init), so the
    unsteered greedy output is varied text and steering visibly changes it. ``hidden_size`` (``qwen2``
    only; default 64) gives a twin of another width, e.g. for transfer between models of different widths.

    >>> folder = build_twin("gemma2", "/tmp/gemma2-twin"); model = load_model(str(folder))
    """
    from transformers import AutoModelForCausalLM

    from .tiny import build_tokenizer

    if family in SHAPES and hidden_size is None:
        return build_shape_twin(family, out_dir, seed=seed)
    if family not in TWINS:
        raise WorkbenchError(f"unknown twin {family!r}; choose one of {', '.join([*TWINS, *SHAPES])}")
    tok = build_tokenizer()
    if hidden_size is not None and family != "qwen2":
        raise WorkbenchError(f"hidden_size is offered for the qwen2 twin only, not {family!r}")
    config = TWINS[family](tok) if hidden_size is None else _qwen2(tok, hidden_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, scale)
        embed.mul_(EMBED_SCALE.get(family, 1.0))
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# --- twins at real models' shapes (speed only) ----------------------------------------------
TWIN_VERSION = "v1"  # bump when a shape's config or the way its weights are drawn changes (cached folders are keyed by it)


@dataclass(frozen=True)
class TwinShape:
    """A real model's shape on the config of one :data:`TWINS` family (the real model's numbers in ``config``)."""

    family: str  # the TWINS builder whose config class (and family traits) the shape uses
    real: str  # the model whose shape it copies
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])


SHAPES: dict[str, TwinShape] = {
    "smollm2": TwinShape("llama3", "HuggingFaceTB/SmolLM2-135M-Instruct", dict(
        num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True)),
    "llama3-3b": TwinShape("llama3", "meta-llama/Llama-3.2-3B-Instruct", dict(
        num_hidden_layers=28, hidden_size=3072, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
        intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True)),
    "mistral-7b": TwinShape("mistral", "mistralai/Mistral-7B-Instruct-v0.2", dict(
        num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, sliding_window=None,
        tie_word_embeddings=False)),
    "gemma2-2b": TwinShape("gemma2", "google/gemma-2-2b-it", dict(
        num_hidden_layers=26, hidden_size=2304, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        intermediate_size=9216, vocab_size=256000, max_position_embeddings=8192, rms_norm_eps=1e-6,
        query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        tie_word_embeddings=True)),
}
DTYPES = ("float32", "bfloat16", "float16")


def check_shape(name: str, layers: int | None = None) -> TwinShape:
    """The shape called ``name``, with ``layers`` (a reduced layer count) checked; a one-line error otherwise."""
    if name not in SHAPES:
        raise WorkbenchError(f"unknown twin {name!r}; choose one of {', '.join(SHAPES)}")
    shape = SHAPES[name]
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= shape.n_layers):
        raise WorkbenchError(f"twin {name}: layers must be 1..{shape.n_layers} (the real model's count), got {layers!r}")
    return shape


def shape_config(name: str, layers: int | None = None) -> Any:
    """The ``transformers`` config of the twin ``name`` (``layers``: fewer layers than the real model), without weights."""
    from .tiny import build_tokenizer

    shape = check_shape(name, layers)
    over = dict(shape.config)
    if layers is not None:
        over["num_hidden_layers"] = layers
    return TWINS[shape.family](build_tokenizer(), **over)


def build_shape_twin(name: str, out_dir: str | Path, layers: int | None = None, dtype: str = "float32", seed: int = 0,
                     device: str = "cpu") -> Path:
    """Write the twin ``name`` (one of :data:`SHAPES`) with seeded random weights to ``out_dir``; return the folder.

    Weights are drawn by ``transformers``' own init (``initializer_range``) in ``dtype`` on ``device`` (a GPU
    draws a 7B model in seconds; the values depend on the device, the shapes do not).

    >>> folder = build_shape_twin("smollm2", "/tmp/smollm2-twin", layers=2); model = load_model(str(folder))
    """
    from transformers import AutoModelForCausalLM

    from .tiny import build_tokenizer

    if dtype not in DTYPES:
        raise WorkbenchError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    config = shape_config(name, layers)
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    out = Path(out_dir)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per build is noise
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    build_tokenizer().save_pretrained(out)
    return out


def twin_folder(name: str, layers: int | None = None, dtype: str = "float32", seed: int = 0, device: str = "cpu",
                say: Callable[[str], None] = print) -> Path:
    """The cached folder of a twin at a real shape, built once (atomically) by :func:`build_shape_twin`.

    Keyed by name, layer count, dtype, seed and :data:`TWIN_VERSION`, under the model cache (``WORKBENCH_CACHE``).
    """
    from . import cache

    shape = check_shape(name, layers)
    n = shape.n_layers if layers is None else layers
    folder = cache.cache_root() / "twins" / f"{name}-L{n}-{dtype}-s{seed}-{TWIN_VERSION}"
    if cache.is_complete(folder):
        return folder
    say(f"[workbench] building the random-weight twin {name} ({n} layers, {dtype}) once; cached in {folder}")
    with cache.building(folder) as tmp:
        build_shape_twin(name, tmp, layers=layers, dtype=dtype, seed=seed, device=device)
    return folder


def describe_twin(name: str, layers: int | None = None) -> dict[str, Any]:
    """What a report says about a twin: random weights, the shape it copies and its numbers."""
    shape = check_shape(name, layers)
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "tie_word_embeddings")
    numbers = {k: shape.config[k] for k in keys}
    if layers is not None:
        numbers["num_hidden_layers"] = layers
    return {"name": name, "shape_of": shape.real, "weights": "random (seeded; speed only, the text means nothing)",
            "tokenizer": "byte-level (prompts are 3-4x more tokens than with the real tokenizer)", "config": numbers,
            "real_layers": shape.n_layers}
