"""Prompt formatting: the tokenizer's chat template for instruct models, ``Q: ...\\nA:`` for base models."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Int

from ..arguments import check_text
from ..errors import ContextLengthError, WorkbenchError  # ContextLengthError: defined in errors, importable here

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

    def special_strings(self) -> list[str]:
        """The text of every special token (``<|im_start|>``, ``<bos>``...) the tokenizer would parse out of a string."""
        decoder = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        found = {t.content for t in decoder.values() if getattr(t, "special", False) and t.content}
        found.update(t for t in getattr(self.tokenizer, "all_special_tokens", []) if t)
        return sorted(found, key=len, reverse=True)

    def template_prefix(self) -> tuple[int, ...]:
        """The token ids every formatted prompt starts with: a chat template's system turn and the user turn's
        header (24 tokens for SmolLM2), or just a BOS. Kept prompt states run it once (``PromptStates.prefix``).

        >>> len(formatter.template_prefix())
        24
        """
        cached = self.__dict__.get("_prefix_cache")
        if cached is None:
            a, b = self.token_ids("Hello."), self.token_ids("3 + 4?")
            n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            cached = self.__dict__["_prefix_cache"] = tuple(a[:n])
        return cached

    def _specials(self) -> list[str]:
        cached = self.__dict__.get("_special_cache")
        if cached is None:
            cached = self.__dict__["_special_cache"] = self.special_strings()
        return cached

    def pad(self, rows: Sequence[Sequence[int]], padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
        """Pad token rows into ``(input_ids, attention_mask)`` with the tokenizer's pad token."""
        enc = self.tokenizer.pad({"input_ids": [list(r) for r in rows]}, padding=True, return_tensors="pt",
                                 padding_side=padding_side)
        return enc["input_ids"], enc["attention_mask"]

    def token_rows(
        self,
        texts: Sequence[str],
        formatted: bool = False,
        max_tokens: int | None = None,
        truncate: str | None = None,
        parse_special_tokens: bool = False,
    ) -> list[list[int]]:
        """Token ids of every prompt, checked against ``max_tokens`` (see :meth:`encode`), unpadded."""
        if isinstance(texts, str):
            texts = [texts]
        if texts is None or isinstance(texts, (bytes, dict)) or not isinstance(texts, Sequence):
            raise WorkbenchError(f"prompts must be a string or a list of strings, got {type(texts).__name__}")
        if len(texts) == 0:
            raise WorkbenchError("no prompts given")
        if truncate not in TRUNCATE:
            raise WorkbenchError(f"truncate must be None or 'left', got {truncate!r}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise WorkbenchError(f"prompt {i} is a {type(text).__name__} ({text!r:.60}), expected a string")
            check_text(text, f"prompt {i}")  # invalid UTF-8 from argv or a file read with surrogateescape
        rows = [self.token_ids(t, formatted, parse_special_tokens) for t in texts]
        return rows if max_tokens is None else fit_context(rows, max_tokens, truncate)

    def token_ids(self, text: str, formatted: bool = False, parse_special_tokens: bool = False) -> list[int]:
        """Token ids of one prompt; special-token text inside the user's text stays text unless ``parse_special_tokens``.

        The template's own control tokens are always real ones. Only a user text that holds a
        special token's string is tokenised in parts (template prefix, text, template suffix), so
        every other prompt gets exactly the ids of tokenising its formatted string whole.

        >>> formatter.token_ids("Hi <|im_start|>system")  # the user's '<|im_start|>' is tokenised as characters
        """
        if not isinstance(text, str):
            raise WorkbenchError(f"a prompt must be a string, got {type(text).__name__}: {text!r:.60}")
        check_text(text, "a prompt")
        tok, asp = self.tokenizer, self.add_special_tokens
        full = text if formatted else self.format(text)
        if formatted or parse_special_tokens or not any(s in text for s in self._specials()):
            return list(tok(full, add_special_tokens=asp)["input_ids"])
        return self.text_safe_ids(text)

    def text_safe_ids(self, text: str) -> list[int]:
        """Token ids of ``format(text)`` in which special tokens written inside ``text`` are plain text.

        The formatted prompt is tokenised whole, as usual; each special token whose characters lie
        inside the user's text is then replaced by the tokens of those characters read as text.
        The template's own control tokens and all other tokens are exactly those of the whole
        string, so a text without special-token strings gets the usual ids.
        """
        tok, asp = self.tokenizer, self.add_special_tokens
        full = self.format(text)
        sentinel = "\ue000WORKBENCH\ue001"
        before, sep, after = self.format(sentinel).partition(sentinel)
        if not sep or not (full.startswith(before) and full.endswith(after)):
            raise WorkbenchError("cannot locate the user text inside the prompt template; pass formatted=True")
        lo, hi = len(before), len(full) - len(after)
        enc = tok(full, add_special_tokens=asp, return_offsets_mapping=True)
        special = self._special_ids()
        ids: list[int] = []
        for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            if token in special and lo <= start < end <= hi:
                ids.extend(tok(full[start:end], add_special_tokens=False, split_special_tokens=True)["input_ids"])
            else:
                ids.append(token)
        return ids

    def _special_ids(self) -> set[int]:
        cached = self.__dict__.get("_special_id_cache")
        if cached is None:
            decoder = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
            cached = {int(i) for i, t in decoder.items() if getattr(t, "special", False)}
            cached.update(int(i) for i in getattr(self.tokenizer, "all_special_ids", []) if i is not None)
            self.__dict__["_special_id_cache"] = cached
        return cached

    def encode(
        self,
        texts: Sequence[str],
        padding_side: str = "left",
        formatted: bool = False,
        max_tokens: int | None = None,
        truncate: str | None = None,
        parse_special_tokens: bool = False,
    ) -> tuple[Int[torch.Tensor, "batch seq"], Int[torch.Tensor, "batch seq"]]:
        """Tokenise a batch of texts (formatting them unless ``formatted``): ``(input_ids, attention_mask)``.

        ``max_tokens``: the most tokens a prompt may have (the model's context less the room
        generation needs). A longer prompt raises :class:`ContextLengthError`, or with
        ``truncate="left"`` loses its first tokens, with a warning saying how many. Special
        tokens written in a user text are tokenised as text unless ``parse_special_tokens``
        (``formatted=True`` prompts are full templates: their special tokens are parsed).

        >>> ids, mask = formatter.encode(["Hi.", "Tell me a story."], max_tokens=1024)
        """
        rows = self.token_rows(texts, formatted, max_tokens, truncate, parse_special_tokens)
        return self.pad(rows, padding_side)

TRUNCATE = (None, "left")


def fit_context(rows: list[list[int]], max_tokens: int, truncate: str | None = None) -> list[list[int]]:
    """Refuse token rows longer than ``max_tokens``, or with ``truncate="left"`` keep their last ``max_tokens``.

    >>> fit_context([[1, 2, 3]], 2, truncate="left")  # warns: dropped 1 token
    [[2, 3]]
    """
    if max_tokens < 1:
        raise ContextLengthError(f"no room for a prompt: the context leaves {max_tokens} tokens for it")
    long = [(i, len(r)) for i, r in enumerate(rows) if len(r) > max_tokens]
    if not long:
        return rows
    if truncate is None:
        i, n = max(long, key=lambda x: x[1])
        raise ContextLengthError(
            f"{len(long)} prompt(s) exceed the context: prompt {i} has {n} tokens, at most {max_tokens} fit "
            "(pass truncate='left' / --truncate left to drop the earliest tokens)"
        )
    dropped = sum(n - max_tokens for _, n in long)
    warnings.warn(
        f"truncate='left': dropped {dropped} token(s) from the start of {len(long)} prompt(s) to fit {max_tokens} tokens",
        stacklevel=3,
    )
    return [r[-max_tokens:] if len(r) > max_tokens else r for r in rows]
