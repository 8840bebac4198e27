"""Random-weight twins of the paper's model families, built locally from ``transformers`` configs.

Each twin keeps what makes its family different (Phi-3's fused QKV and gate/up projections,
Gemma-2's attention and logit soft-capping and sliding window, Mistral's sliding window,
Llama-3's rope scaling with grouped-query attention, Qwen2's QKV biases) at a few narrow layers,
with the byte-level tokenizer of ``tiny-random-llama``. They are saved as ordinary Hugging Face
folders, so tests load them by path exactly as a user loads a checkpoint.
"""

from __future__ import annotations

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


def _phi3(tok: Any) -> Any:
    from transformers import Phi3Config

    return Phi3Config(**_common(tok), tie_word_embeddings=False)


def _gemma2(tok: Any) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(**_common(tok), head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=True)


def _mistral(tok: Any) -> Any:
    from transformers import MistralConfig

    return MistralConfig(**_common(tok), head_dim=16, sliding_window=WINDOW, tie_word_embeddings=False)


def _llama3(tok: Any) -> Any:
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return LlamaConfig(**_common(tok), head_dim=16, rope_parameters=rope, tie_word_embeddings=False)


def _qwen2(tok: Any, hidden_size: int = 64) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**_common(tok, hidden_size), tie_word_embeddings=False)


# Gemma multiplies embeddings by sqrt(d_model): shrink them, or the residual stream is the
# current token's embedding alone and greedy decoding cycles through one or two tokens.
EMBED_SCALE = {"gemma2": 0.125}

TWINS: dict[str, Callable[[Any], Any]] = {
    "phi3": _phi3, "gemma2": _gemma2, "mistral": _mistral, "llama3": _llama3, "qwen2": _qwen2,
}


def build_twin(family: str, out_dir: str | Path, seed: int = 0, scale: float = 0.2, hidden_size: int | None = None) -> Path:
    """Write a random-weight twin of ``family`` (one of :data:`TWINS`) to ``out_dir``; return the folder.

    Matrices are drawn with standard deviation ``scale`` (larger than the default init), so the
    unsteered greedy output is varied text and steering visibly changes it. ``hidden_size`` (``qwen2``
    only; default 64) gives a twin of another width, e.g. for transfer between models of different widths.

    >>> folder = build_twin("gemma2", "/tmp/gemma2-twin"); model = load_model(str(folder))
    """
    from transformers import AutoModelForCausalLM

    from .tiny import build_tokenizer

    if family not in TWINS:
        raise WorkbenchError(f"unknown twin {family!r}; choose one of {', '.join(TWINS)}")
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
