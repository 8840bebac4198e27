"""What a sweep steers and how a chosen cell becomes steering: :class:`SweepTarget`, the spec of one (layer, strength)
cell (:func:`steering_spec`), the specs and table columns of a selected cell (:func:`cell_specs`, :func:`cell_meta`),
and the format targets' names (one per language for ``language:response_language``, :func:`format_target_names`).

Shared by the sweep, the fast search and every experiment of ``reproduce``, so none of them imports another for these.

Strength: in ``add`` mode the added vector is ``strength * scale * |v_layer|`` along the unit direction (a multiple of
the layer's mean difference, so strengths carry over between models); in ``project`` mode the projection target is
``strength * scale * proj_with`` (1.0: the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..data import PairDataset
from ..directions import Direction
from ..errors import DatasetError, WorkbenchError
from ..steering import SteeringSpec, make_spec

LANGUAGE_ID = "language:response_language"


def steering_spec(direction: Direction, layer: int, strength: float, mode: str, scale: float = 1.0) -> SteeringSpec:
    """The spec for one sweep cell (see the module docstring for what ``strength`` means per mode)."""
    ld = direction.at(layer)
    if mode == "add":
        return make_spec(ld, layer, coeff=strength * scale * ld.norm, mode="add")
    if mode == "project":
        if ld.proj_with is None:
            raise WorkbenchError(f"direction {direction.name!r} stores no projection target for project mode")
        return make_spec(ld, layer, mode="project", target=strength * scale * ld.proj_with)
    return make_spec(ld, layer, mode=mode)


@dataclass(frozen=True)
class SweepTarget:
    """What one sweep row steers and scores: validation rows, a direction, a mode; ``group`` is the selection unit."""

    name: str
    rows: PairDataset
    direction: Direction
    mode: str = "project"
    group: str = ""
    scale: float = 1.0
    with_instruction: bool = False

    @property
    def group_name(self) -> str:
        return self.group or self.name

    def prompts(self) -> list[str]:
        return self.rows.prompts() if self.with_instruction else self.rows.prompts_without_instruction()


def cell_specs(direction: Direction, sel: dict[str, Any] | None, mode: str, scale: float = 1.0) -> list[SteeringSpec] | None:
    """The steering of a selected cell (``sel``: its ``layer`` and ``coeff``), or None when nothing was selected."""
    if sel is None:
        return None
    return [steering_spec(direction, sel["layer"], sel["coeff"], mode, scale)]


def cell_meta(sel: dict[str, Any] | None, mode: str | None) -> dict[str, Any]:
    """The table columns of a selected cell: ``layer``, ``strength`` and ``mode`` (None where nothing was selected)."""
    return {"layer": None if sel is None else sel["layer"], "strength": None if sel is None else sel["coeff"], "mode": mode}


def format_target_names(ids: Sequence[str]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(target name, IFEval id, kwargs)`` per direction: ``language:response_language`` is one direction per
    language (named as in the paper authors' files, ``language:response_language_kn``)."""
    from ..data.builtin import language_codes

    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for iid in ids:
        if iid == LANGUAGE_ID:
            out += [(f"{LANGUAGE_ID}_{c}", LANGUAGE_ID, {"language": c}) for c in language_codes()]
        elif iid.startswith(f"{LANGUAGE_ID}_"):
            code = iid[len(LANGUAGE_ID) + 1:]
            if code not in language_codes():
                raise DatasetError(f"no built-in phrasing for language {code!r} ({iid}); languages: {', '.join(language_codes())}")
            out.append((iid, LANGUAGE_ID, {"language": code}))
        else:
            out.append((iid, iid, None))
    return out


def run_targets(cfg: Any, covers: Callable[[str], bool], experiment: str) -> list[tuple[str, str, str, dict[str, Any] | None, str]]:
    """``(name, family, instruction id, kwargs, mode)`` of every direction an experiment that takes both format
    instructions and keyword inclusions (``--word``; add mode) steers, in table order, keeping those ``covers(name)``
    accepts; none left is one line."""
    out = [(name, "format", iid, kwargs, cfg.mode or "project") for name, iid, kwargs in format_target_names(cfg.instructions or [])]
    out += [(f"include:{w}", "keywords", "keywords:existence", {"keywords": [w]}, "add") for w in cfg.words or []]
    out = [t for t in out if covers(t[0])]
    if not out:
        raise DatasetError(f"{experiment}: no instruction to run (pass --instruction or --word)")
    return out
