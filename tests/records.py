"""Comparing sweep records across runs that packed their units differently.

A packed response's perplexity is scored from the layer its steering first changed, on hidden states its decode
computed: batches of other shapes give other float rounding there (about 1e-7 relative), and nothing else differs.
"""

from __future__ import annotations

import math
from typing import Any


def assert_same_records(a: Any, b: Any, rel: float = 1e-5, where: str = "") -> None:
    """``a == b`` except that floats need only agree within ``rel`` (NaN equals NaN)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} != {b!r}"
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a.keys() ^ b.keys())} differ"
        for key in a:
            assert_same_records(a[key], b[key], rel, f"{where}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_records(x, y, rel, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
