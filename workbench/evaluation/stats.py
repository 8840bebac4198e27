"""Uncertainty of accuracies: Wilson score intervals and McNemar's exact test for paired conditions.

Every accuracy the workbench reports carries its sample size and a 95% interval; two conditions
measured on the same prompts (with and without steering) are compared with McNemar's exact test,
which looks only at the prompts where the two disagree. Both come from ``scipy.stats``.

Example::

    >>> from workbench.evaluation.stats import wilson_interval, mcnemar_exact
    >>> [round(x, 3) for x in wilson_interval(7, 20)]
    [0.181, 0.567]
    >>> mcnemar_exact([True, True, False, True], [False, False, False, True]).p_value
    0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import WorkbenchError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (no continuity correction); NaNs when ``n == 0``."""
    from scipy.stats import binomtest

    if n < 0 or successes < 0 or successes > n:
        raise WorkbenchError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two paired pass/fail vectors: the discordant counts and the two-sided p-value."""

    only_a: int  # prompts where condition a passed and b failed
    only_b: int  # prompts where b passed and a failed
    p_value: float

    @property
    def significant(self) -> bool:
        """Whether the difference is significant at the 5% level."""
        return self.p_value < ALPHA


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's exact (binomial) test; ``a[i]`` and ``b[i]`` are the same prompt under two conditions."""
    from scipy.stats import binomtest

    if len(a) != len(b):
        raise WorkbenchError(f"mcnemar_exact: paired vectors differ in length ({len(a)} vs {len(b)})")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, min(1.0, p))


def rate_cell(passes: Sequence[bool], prefix: str = "accuracy") -> dict[str, float]:
    """``{prefix, prefix_lo, prefix_hi}``: the pass rate and its 95% Wilson interval (NaN when empty)."""
    n, k = len(passes), sum(bool(x) for x in passes)
    lo, hi = wilson_interval(k, n)
    return {prefix: k / n if n else math.nan, f"{prefix}_lo": lo, f"{prefix}_hi": hi}
