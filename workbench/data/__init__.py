"""Instruction pair data: built-in families (``load_pairs``) and external JSONL loaders."""

from __future__ import annotations

from .builtin import FAMILIES, list_instructions, load_pairs
from .files import LoadReport, ifeval_path, load_ifeval_jsonl, load_paired_jsonl, load_pairs_file, read_pairs_file
from .pairs import SPLITS, PairDataset, PairRow

__all__ = [
    "FAMILIES",
    "LoadReport",
    "SPLITS",
    "PairDataset",
    "PairRow",
    "ifeval_path",
    "list_instructions",
    "load_ifeval_jsonl",
    "load_paired_jsonl",
    "load_pairs",
    "load_pairs_file",
    "read_pairs_file",
]
