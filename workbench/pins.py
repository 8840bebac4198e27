"""The project's pinned packages (``pyproject.toml``'s ``dependencies``) against what this environment imports.

Used by ``workbench gpu-check``: on a lent machine whose image brings its own torch and a newer ``transformers``,
a wrong version shows here, before a benchmark fails in some obscure way.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def read_pins(pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement strings of ``[project] dependencies``; empty when there is no source tree (a wheel install)."""
    if not pyproject.is_file():
        return []
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover  (Python 3.10)
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            return []
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return list(data.get("project", {}).get("dependencies", []))


def _import_names(dist: str) -> list[str]:
    """Top-level modules a distribution provides (``scikit-learn`` -> ``sklearn``): the one named like it first
    (``torch``, not ``functorch``), then the other public ones."""
    from packaging.utils import canonicalize_name

    want = canonicalize_name(dist)
    names = sorted(mod for mod, dists in metadata.packages_distributions().items()
                   if any(canonicalize_name(d) == want for d in dists))
    return sorted(names, key=lambda n: (n.replace("_", "-").lower() != want, n.startswith("_"), n))


def check_pins(pins: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per pinned package: its pin, the installed version, whether it satisfies the pin and imports."""
    from packaging.requirements import Requirement

    rows = []
    for text in read_pins() if pins is None else pins:
        req = Requirement(text)
        row: dict[str, Any] = {"package": req.name, "pin": str(req.specifier) or "any", "installed": None,
                               "satisfies_pin": False, "module": None, "imports": False, "error": None}
        try:
            row["installed"] = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            row["error"] = "not installed"
            rows.append(row)
            continue
        row["satisfies_pin"] = req.specifier.contains(row["installed"], prereleases=True)
        modules = _import_names(req.name)
        row["module"] = modules[0] if modules else None
        try:
            if not modules:
                raise ImportError("the distribution names no top-level module")
            importlib.import_module(modules[0])
            row["imports"] = True
        except Exception as exc:  # noqa: BLE001  (any import failure is what this check reports)
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The pins as a Markdown table."""
    lines = ["| package | pin | installed | satisfies pin | imports |", "|---|---|---|---|---|"]
    for r in rows:
        module = f" (`{r['module']}`)" if r.get("module") and r["module"] != r["package"] else ""
        imports = ("yes" if r["imports"] else f"**no** ({r['error']})").replace("|", "\\|")
        lines.append(f"| {r['package']}{module} | {r['pin']} | {r['installed'] or '-'} | "
                     f"{'yes' if r['satisfies_pin'] else '**no**'} | {imports} |")
    return "\n".join(lines)
