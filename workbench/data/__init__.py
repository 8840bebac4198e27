"""Instruction pair data: built-in families (``load_pairs``) and external JSONL loaders."""

from __future__ import annotations

from .builtin import FAMILIES, list_instructions, load_pairs
from .pairs import (
    SPLITS,
    PairDataset,
    PairRow,
    load_ifeval_jsonl,
    load_paired_jsonl,
    load_pairs_file,
)

__all__ = [
    "FAMILIES",
    "SPLITS",
    "PairDataset",
    "PairRow",
    "list_instructions",
    "load_ifeval_jsonl",
    "load_paired_jsonl",
    "load_pairs",
    "load_pairs_file",
]
