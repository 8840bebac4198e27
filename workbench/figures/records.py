"""Plain-record inputs of the sweep and condition figures, checked with errors that name the missing key."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from ..errors import DatasetError

SWEEP_KEYS = ("instruction_id", "layer", "coeff", "accuracy", "perplexity")
CONDITION_KEYS = ("instruction_id", "condition", "accuracy")
CONDITIONS = (
    "no instruction / no steering",
    "no instruction / steering",
    "instruction / no steering",
    "instruction / steering",
)
# Other spellings of the same conditions (e.g. workbench.experiments' keys and labels), mapped to CONDITIONS.
CONDITION_ALIASES = {
    **{key: c for key, c in zip(("no_instruction", "no_instruction_steered", "instruction", "instruction_steered"), CONDITIONS)},
    **{c.replace(" / ", ", "): c for c in CONDITIONS},
}


class RecordError(DatasetError):
    """Figure input records that are not a list of dicts with the documented keys and value types."""


def _number(value: Any, key: str, i: int, what: str, allow_nan: bool = False) -> float:
    if value is None:
        number = math.nan
    elif isinstance(value, (bool, str, bytes)):
        raise RecordError(f"{what} record {i}: {key!r} must be a number, got {value!r}")
    else:
        try:
            number = float(value)  # int, float, numpy or 0-d torch scalars
        except (TypeError, ValueError):
            raise RecordError(f"{what} record {i}: {key!r} must be a number, got {value!r}") from None
    if math.isnan(number) and not allow_nan:
        raise RecordError(f"{what} record {i}: {key!r} has no value (None or NaN)")
    if math.isinf(number):
        raise RecordError(f"{what} record {i}: {key!r} is infinite")
    return number


def _check_keys(records: Iterable[Mapping[str, Any]], keys: Sequence[str], what: str) -> list[Mapping[str, Any]]:
    if isinstance(records, Mapping) or isinstance(records, (str, bytes)):
        raise RecordError(f"{what}: expected a list of dict records, got a {type(records).__name__}")
    rows = list(records)
    if not rows:
        raise RecordError(f"{what}: no records")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise RecordError(f"{what} record {i}: expected a dict, got {type(row).__name__}")
        missing = [k for k in keys if k not in row]
        if missing:
            raise RecordError(
                f"{what} record {i} lacks key {missing[0]!r}"
                + (f" (and {missing[1:]})" if len(missing) > 1 else "")
                + f"; every record needs {list(keys)}"
            )
    return rows


def sweep_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check sweep records and return normalised copies (``layer`` int, numbers float, NaN perplexity allowed).

    Schema, one record per (instruction, layer, strength) cell, already aggregated over prompts:
    ``instruction_id`` (str), ``layer`` (int), ``coeff`` (float, the steering strength),
    ``accuracy`` (float in [0, 1], share of responses that follow the instruction) and
    ``perplexity`` (float, or NaN/None when not measured). Other keys are kept and ignored.
    """
    what = "sweep"
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int, float]] = set()
    for i, row in enumerate(_check_keys(records, SWEEP_KEYS, what)):
        layer = _number(row["layer"], "layer", i, what)
        if not layer.is_integer():
            raise RecordError(f"{what} record {i}: 'layer' must be an integer, got {row['layer']!r}")
        rec = dict(row)
        rec["instruction_id"] = str(row["instruction_id"])
        rec["layer"] = int(layer)
        rec["coeff"] = _number(row["coeff"], "coeff", i, what)
        rec["accuracy"] = _number(row["accuracy"], "accuracy", i, what)
        rec["perplexity"] = _number(row["perplexity"], "perplexity", i, what, allow_nan=True)
        if not 0.0 <= rec["accuracy"] <= 1.0:
            raise RecordError(f"{what} record {i}: 'accuracy' must lie in [0, 1], got {rec['accuracy']}")
        cell = (rec["instruction_id"], rec["layer"], rec["coeff"])
        if cell in seen:
            raise RecordError(f"{what} record {i}: duplicate cell instruction={cell[0]!r} layer={cell[1]} coeff={cell[2]:g}")
        seen.add(cell)
        out.append(rec)
    return out


def condition_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check four-condition records and return normalised copies.

    Schema, one record per (instruction, condition): ``instruction_id`` (str), ``condition`` (one
    of :data:`CONDITIONS`, or a spelling in :data:`CONDITION_ALIASES`) and ``accuracy`` (float in
    [0, 1]). Other keys are kept and ignored.
    """
    what = "condition"
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(_check_keys(records, CONDITION_KEYS, what)):
        rec = dict(row)
        rec["instruction_id"] = str(row["instruction_id"])
        condition = CONDITION_ALIASES.get(row["condition"], row["condition"])
        if condition not in CONDITIONS:
            raise RecordError(f"{what} record {i}: unknown condition {row['condition']!r}; choose one of {list(CONDITIONS)}")
        rec["condition"] = condition
        rec["accuracy"] = _number(row["accuracy"], "accuracy", i, what)
        if not 0.0 <= rec["accuracy"] <= 1.0:
            raise RecordError(f"{what} record {i}: 'accuracy' must lie in [0, 1], got {rec['accuracy']}")
        key = (rec["instruction_id"], rec["condition"])
        if key in seen:
            raise RecordError(f"{what} record {i}: duplicate record for {key[0]!r} / {key[1]!r}")
        seen.add(key)
        out.append(rec)
    return out
