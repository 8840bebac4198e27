"""SDPA attention that keeps grouped key/value heads unrepeated, also under an attention mask.

With a mask, ``transformers``' SDPA path repeats each key/value head for its query heads before
calling the kernel, which copies the whole KV cache at every layer and token. PyTorch's SDPA
takes grouped heads itself (``enable_gqa``); on a static cache (always masked) at batch 16 this
nearly doubled compiled decoding on CPU (SmolLM2: 110 -> 211 tokens/s), with the same tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "workbench_sdpa_gqa"
_registered = False


def sdpa_gqa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``transformers`` attention-function signature; returns ``[batch, query, heads, head_dim]``."""
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def use_sdpa_gqa(model: torch.nn.Module) -> bool:
    """Switch a plain ``transformers`` model from SDPA to :func:`sdpa_gqa_attention`; False if it was not on SDPA."""
    global _registered
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, sdpa_gqa_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    model.set_attn_implementation(NAME)
    return True
