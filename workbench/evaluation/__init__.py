"""Evaluation: IFEval-style instruction checks (offline Punkt), and response quality (perplexity, repetition)."""

from .checkers import (
    AccuracyReport,
    CheckResult,
    accuracy_report,
    check_response,
    follow_rate,
    follows,
    known_instruction_ids,
)
from .punkt import count_sentences, ensure_punkt, sentence_tokenizer
from .quality import degeneration, response_perplexities, score_quality

__all__ = [
    "AccuracyReport", "CheckResult", "accuracy_report", "check_response", "count_sentences", "degeneration",
    "ensure_punkt", "follow_rate", "follows", "known_instruction_ids", "response_perplexities", "score_quality",
    "sentence_tokenizer",
]
