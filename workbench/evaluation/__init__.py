"""Evaluation: IFEval-style instruction checks on generated responses."""

from .checkers import CheckResult, check_response, follow_rate, follows, known_instruction_ids

__all__ = ["CheckResult", "check_response", "follow_rate", "follows", "known_instruction_ids"]
