"""Prompt formatting: the tokenizer's chat template for instruct models, ``Q: ...\\nA:`` for base models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Int

from ..errors import WorkbenchError

STYLES = ("chat", "qa", "raw")


@dataclass
class PromptFormatter:
    """Turns user texts into model inputs in the style the model was trained on.

    ``chat`` applies the tokenizer's chat template with a generation prompt; ``qa`` writes the
    paper's ``Q: {text}\\nA:`` for base models; ``raw`` passes the text through unchanged.
    """

    tokenizer: Any
    style: str = "chat"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise WorkbenchError(f"unknown prompt style {self.style!r}; choose one of {STYLES}")
        if self.style == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise WorkbenchError("prompt style 'chat' needs a tokenizer with a chat template; use 'qa'")

    def format(self, text: str) -> str:
        """The full prompt string for one user text."""
        if self.style == "chat":
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        if self.style == "qa":
            return f"Q: {text}\nA:"
        return text

    @property
    def add_special_tokens(self) -> bool:
        """Chat templates write their own BOS; other styles let the tokenizer add it."""
        return self.style != "chat"

    def encode(
        self, texts: Sequence[str], padding_side: str = "left", formatted: bool = False
    ) -> tuple[Int[torch.Tensor, "batch seq"], Int[torch.Tensor, "batch seq"]]:
        """Tokenise a batch of texts (formatting them unless ``formatted``): ``(input_ids, attention_mask)``."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise WorkbenchError("no prompts given")
        prompts = list(texts) if formatted else [self.format(t) for t in texts]
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = padding_side
        try:
            enc = self.tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens
            )
        finally:
            self.tokenizer.padding_side = old_side
        return enc["input_ids"], enc["attention_mask"]
