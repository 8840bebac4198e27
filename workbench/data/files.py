"""External pair files as they are: IFEval's own JSONL, paired files in both conventions, renamed fields.

Three schemas:

- **IFEval** (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``): prompts with their instructions,
  several per row allowed; no instruction-free twin. IFEval's 541 prompts ship with the package
  (``load_pairs_file("ifeval")``; Apache-2.0, see ``workbench/data/ifeval/README.md``).
- **paired** (``prompt``, ``prompt_without_instruction``, ``instruction_id_list``, ``kwargs``) with an
  optional ``instruction_id_list_for_eval`` read in one of two conventions: ``eval`` (the ids to check)
  or ``steering`` (the paper authors' files: the key of the steering direction, such as
  ``language:response_language_kn``, with ``instruction_id_list`` checked). ``auto`` picks ``steering``
  when some ``instruction_id_list_for_eval`` entry is not an IFEval id.
- **queries** (``query``, optional ``key``/``base_id``): base queries without any instruction, for the
  length and keywords experiments, which append their instruction exactly as the built-in rows do
  (:func:`workbench.data.builtin.rows_from_queries`); e.g. a user's own queries, or IFEval prompts with
  their constraints removed (``--fields query=prompt``).

Files that name their fields differently load with ``fields={"prompt": "original_prompt", ...}``; the
paper authors' layout (``original_prompt`` with the instruction, ``prompt`` without) is recognised.
A row whose instruction-free prompt equals its prompt (a failed rewrite) keeps its prompt but loses
its twin, so it is left out of the no-instruction conditions; :class:`LoadReport` names such rows.

Example::

    from workbench.data.files import load_pairs_file
    data = load_pairs_file("paper_format.jsonl", fields={"prompt": "original_prompt", "prompt_without_instruction": "prompt"})
    ifeval = load_pairs_file("ifeval")          # the packaged IFEval prompts
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import DatasetError
from ..io import read_jsonl
from .pairs import EXTERNAL_SPLIT, PairDataset, PairRow

CANONICAL_FIELDS = ("key", "base_id", "prompt", "prompt_without_instruction", "instruction_id_list",
                    "instruction_id_list_for_eval", "kwargs", "query")
QUERIES_SCHEMA = "queries"  # base queries only (a ``query`` field): the length and keywords runs append their instruction
CONVENTIONS = ("auto", "eval", "steering")
IFEVAL_NAME = "ifeval"
# The paper authors' released files: the instructed prompt in `original_prompt`, the rewrite without it in `prompt`.
AUTHORS_FIELDS = {"prompt": "original_prompt", "prompt_without_instruction": "prompt"}


@dataclass
class LoadReport:
    """How a file was read: schema, convention, field mapping, and the rows that lost their twin."""

    path: str
    schema: str = ""
    convention: str | None = None
    convention_reason: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    failed_rewrites: list[str] = field(default_factory=list)  # base ids whose prompt_without_instruction == prompt
    n_rows: int = 0

    def lines(self) -> list[str]:
        """What to print in a run log."""
        out = [f"{self.path}: {self.n_rows} rows, {self.schema} schema"
               + (f", fields mapped {self.fields}" if self.fields else "")]
        if self.convention:
            out.append(f"  instruction_id_list_for_eval read in the {self.convention!r} convention ({self.convention_reason})")
        if self.failed_rewrites:
            shown = ", ".join(self.failed_rewrites[:10]) + (" ..." if len(self.failed_rewrites) > 10 else "")
            out.append(f"  {len(self.failed_rewrites)} row(s) whose prompt_without_instruction equals the prompt "
                       f"(failed rewrites), left out of the no-instruction conditions: {shown}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "schema": self.schema, "convention": self.convention,
                "convention_reason": self.convention_reason, "fields": dict(self.fields),
                "failed_rewrites": list(self.failed_rewrites), "n_rows": self.n_rows}


def ifeval_path() -> Path:
    """The packaged IFEval prompts (``input_data.jsonl``, 541 rows, Apache-2.0)."""
    return Path(str(resources.files(__package__).joinpath("ifeval", "input_data.jsonl")))


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``"ifeval"`` names the packaged IFEval file; anything else is a path."""
    return ifeval_path() if str(path) == IFEVAL_NAME else Path(path)


def parse_fields(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"prompt=original_prompt,prompt_without_instruction=model_output"`` -> a mapping (ours -> the file's)."""
    if text is None:
        return {}
    pairs = dict(text) if isinstance(text, Mapping) else {}
    if not isinstance(text, Mapping):
        for part in (p.strip() for p in str(text).split(",") if p.strip()):
            ours, sep, theirs = part.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise DatasetError(f"field mapping {part!r} is not OURS=THEIRS (e.g. prompt=original_prompt)")
            pairs[ours.strip()] = theirs.strip()
    unknown = sorted(set(pairs) - set(CANONICAL_FIELDS))
    if unknown:
        raise DatasetError(f"field mapping names unknown field(s) {unknown}; mappable: {', '.join(CANONICAL_FIELDS)}")
    return pairs


# --- reading ------------------------------------------------------------------------------------
def _read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line (:func:`~workbench.io.read_jsonl`, which splits
    at newlines only); DatasetError on any problem, and for a file without rows."""
    records = read_jsonl(path).records
    if not records:
        raise DatasetError(f"{path}: file has no rows (empty)")
    return records


def _apply_fields(records: list[tuple[int, dict[str, Any]]], fields: dict[str, str], path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rename the file's fields to ours (a mapped field missing from the first row is an error)."""
    if not fields:
        return records
    first_line, first = records[0]
    missing = [theirs for theirs in fields.values() if theirs not in first]
    if missing:
        raise DatasetError(f"{path}: the field mapping names {missing}, which line {first_line} lacks "
                           f"(it has {', '.join(sorted(first))})")
    out = []
    for lineno, obj in records:
        mapped = {k: v for k, v in obj.items() if k not in fields.values() and k not in fields}
        mapped.update({ours: obj[theirs] for ours, theirs in fields.items() if theirs in obj})
        out.append((lineno, mapped))
    return out


def _field(obj: dict[str, Any], name: str, where: str) -> Any:
    if name not in obj:
        raise DatasetError(f"{where}: field {name!r} missing")
    return obj[name]


def _str_field(obj: dict[str, Any], name: str, where: str, nullable: bool = False) -> str | None:
    value = _field(obj, name, where)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _id_list(obj: dict[str, Any], name: str, where: str, allow_empty: bool = False) -> list[str]:
    value = _field(obj, name, where)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{where}: field {name!r} must be a list of strings")
    if not value and not allow_empty:
        raise DatasetError(f"{where}: field {name!r} is empty")
    return value


def _kwargs_list(obj: dict[str, Any], where: str) -> list[dict[str, Any]]:
    value = _field(obj, "kwargs", where)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DatasetError(f"{where}: field 'kwargs' must be a list of objects")
    # IFEval's own file stores unused arguments as null: the checkers want them absent.
    return [{k: v for k, v in d.items() if v is not None} for d in value]


def _base_id(obj: dict[str, Any], lineno: int) -> str:
    for key in ("base_id", "key"):
        if obj.get(key) is not None:
            return str(obj[key])
    return str(lineno)


def _known_ids() -> set[str]:
    from ..evaluation.checkers import known_instruction_ids

    return set(known_instruction_ids())


def _check_ids(rows: list[PairRow], path: Path, known: set[str]) -> None:
    """One error listing every checked id the IFEval checkers do not know."""
    unknown = sorted({i for r in rows for i in r.eval_instruction_ids} - known)
    if unknown:
        raise DatasetError(f"{path}: unknown IFEval instruction id(s) to check: {', '.join(unknown)}")


# --- the two schemas ------------------------------------------------------------------------------
def _ifeval_rows(path: Path, records: list[tuple[int, dict[str, Any]]]) -> list[PairRow]:
    rows: list[PairRow] = []
    for lineno, obj in records:
        where = f"{path} line {lineno}"
        key = _field(obj, "key", where)
        prompt = _str_field(obj, "prompt", where)
        ids = _id_list(obj, "instruction_id_list", where)
        kwargs = _kwargs_list(obj, where)
        if len(kwargs) != len(ids):
            raise DatasetError(
                f"{where}: field 'kwargs' has {len(kwargs)} entries but 'instruction_id_list' has {len(ids)}"
            )
        rows.append(PairRow(prompt=prompt, prompt_without_instruction=None, instruction_id="+".join(ids),  # type: ignore[arg-type]
                            kwargs=kwargs[0], base_id=str(key), eval_instruction_ids=tuple(ids), eval_kwargs=tuple(kwargs),
                            split=EXTERNAL_SPLIT))
    return rows


def _detect_convention(records: list[tuple[int, dict[str, Any]]], known: set[str]) -> tuple[str, str]:
    keys = {i for _, obj in records for i in (obj.get("instruction_id_list_for_eval") or []) if isinstance(i, str)}
    if not keys:
        return "eval", "no row has instruction_id_list_for_eval"
    foreign = sorted(keys - known)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        return "steering", f"detected: {len(foreign)} of its ids are not IFEval ids, e.g. {shown}"
    return "eval", "detected: every id is an IFEval id"


def _paired_rows(path: Path, records: list[tuple[int, dict[str, Any]]], convention: str, report: LoadReport) -> list[PairRow]:
    rows: list[PairRow] = []
    for lineno, obj in records:
        where = f"{path} line {lineno}"
        prompt = _str_field(obj, "prompt", where)
        without = _str_field(obj, "prompt_without_instruction", where, nullable=True)
        ids = _id_list(obj, "instruction_id_list", where)
        kwargs = _kwargs_list(obj, where)
        base_id = _base_id(obj, lineno)
        has_for_eval = "instruction_id_list_for_eval" in obj
        for_eval = _id_list(obj, "instruction_id_list_for_eval", where, allow_empty=True) if has_for_eval else ids
        if convention == "steering":  # the authors' files: for_eval keys the direction, instruction_id_list is checked
            if len(kwargs) != len(ids):
                raise DatasetError(f"{where}: field 'kwargs' has {len(kwargs)} entries but 'instruction_id_list' has {len(ids)}")
            steer_key, eval_ids, eval_kwargs, first = "+".join(for_eval or ids), ids, kwargs, kwargs[0]
        else:
            eval_ids = for_eval
            if len(kwargs) == len(eval_ids):
                eval_kwargs = kwargs
                first = kwargs[eval_ids.index(ids[0])] if ids[0] in eval_ids else {}
            elif len(kwargs) == len(ids):
                first = kwargs[0]
                eval_kwargs = [kwargs[ids.index(i)] if i in ids else {} for i in eval_ids]
            else:
                raise DatasetError(
                    f"{where}: field 'kwargs' has {len(kwargs)} entries but 'instruction_id_list' has {len(ids)}"
                    f" and 'instruction_id_list_for_eval' has {len(eval_ids)}"
                )
            steer_key = "+".join(ids)
        if without is not None and without.strip() == prompt.strip():  # type: ignore[union-attr]
            report.failed_rewrites.append(base_id)
            without = None
        rows.append(PairRow(prompt=prompt, prompt_without_instruction=without, instruction_id=steer_key,  # type: ignore[arg-type]
                            kwargs=first, base_id=base_id, eval_instruction_ids=tuple(eval_ids),
                            eval_kwargs=tuple(eval_kwargs), split=EXTERNAL_SPLIT))
    return rows


def _schema_of(first: dict[str, Any], path: Path, line: int) -> str:
    if "query" in first and "prompt" not in first:
        return QUERIES_SCHEMA
    if "prompt_without_instruction" in first:
        return "paired"
    if {"key", "prompt", "instruction_id_list", "kwargs"} <= set(first):
        return "ifeval"
    raise DatasetError(
        f"{path} line {line}: no known schema: a paired file needs prompt, prompt_without_instruction, "
        f"instruction_id_list, kwargs; an IFEval file needs key, prompt, instruction_id_list, kwargs; a file of base "
        f"queries needs query (the row has {', '.join(sorted(first)) or 'no fields'}; rename fields with --fields OURS=THEIRS)"
    )


def _query_rows(path: Path, records: list[tuple[int, dict[str, Any]]]) -> list[PairRow]:
    """Base queries (no instruction yet): one row each, its prompt the query; blank queries are left out."""
    rows: list[PairRow] = []
    for lineno, obj in records:
        text = _str_field(obj, "query", f"{path} line {lineno}")
        if text and text.strip():
            rows.append(PairRow(prompt=text.strip(), prompt_without_instruction=text.strip(), instruction_id="", kwargs={},
                                base_id=_base_id(obj, lineno), eval_instruction_ids=(), eval_kwargs=(), split=EXTERNAL_SPLIT))
    if not rows:
        raise DatasetError(f"{path}: no usable query (every 'query' field is blank)")
    return rows


def read_pairs_file(
    path: str | os.PathLike[str],
    fields: str | Mapping[str, str] | None = None,
    convention: str = "auto",
    schema: str | None = None,
) -> tuple[PairDataset, LoadReport]:
    """Load a pair file of either schema and say how it was read (see the module docstring)."""
    if convention not in CONVENTIONS:
        raise DatasetError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    p = resolve_path(path)
    mapping = parse_fields(fields)
    records = _read_records(p)
    first_line, first = records[0]
    if not mapping and "original_prompt" in first and "prompt" in first and "prompt_without_instruction" not in first:
        mapping = dict(AUTHORS_FIELDS)  # the paper authors' released layout
    records = _apply_fields(records, mapping, p)
    schema = schema or _schema_of(records[0][1], p, first_line)
    report = LoadReport(path=str(path), schema=schema, fields=mapping)
    known = _known_ids()
    if schema == QUERIES_SCHEMA:
        rows = _query_rows(p, records)
    elif schema == "ifeval":
        rows = _ifeval_rows(p, records)
    else:
        used, reason = (_detect_convention(records, known) if convention == "auto" else (convention, "given"))
        report.convention, report.convention_reason = used, reason
        rows = _paired_rows(p, records, used, report)
    _check_ids(rows, p, known)
    report.n_rows = len(rows)
    return PairDataset(rows, name=str(path)), report


def load_pairs_file(
    path: str | os.PathLike[str],
    fields: str | Mapping[str, str] | None = None,
    convention: str = "auto",
    say: Callable[[str], None] | None = None,
) -> PairDataset:
    """Load a JSONL pair file of either schema (``"ifeval"``: the packaged IFEval prompts).

    >>> data = load_pairs_file("ifeval")
    >>> len(data), data.filter(instruction="detectable_format:title").base_ids()[:2]  # doctest: +SKIP
    """
    data, report = read_pairs_file(path, fields, convention)
    if say is not None:
        for line in report.lines():
            say(line)
    return data


def load_ifeval_jsonl(path: str | os.PathLike[str]) -> PairDataset:
    """Load an IFEval-schema file (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``)."""
    return read_pairs_file(path, schema="ifeval")[0]


def load_paired_jsonl(path: str | os.PathLike[str], fields: str | Mapping[str, str] | None = None,
                      convention: str = "auto") -> PairDataset:
    """Load a paired file (``prompt``, ``prompt_without_instruction``, ``instruction_id_list``, ``kwargs``).

    ``instruction_id_list_for_eval`` is read in ``convention`` (module docstring); in the ``eval``
    convention ``kwargs`` is aligned with it when the lengths match, else with ``instruction_id_list``.
    """
    return read_pairs_file(path, fields, convention, schema="paired")[0]
