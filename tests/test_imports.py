"""No import cycles inside ``workbench/``: module-level and function-level imports both count.

Every module is parsed with ``ast`` (nothing is imported); each ``import`` and ``from ... import`` anywhere in
it, a function body included, is an edge to the module it names: relative imports resolved against the
importing module's package, and ``from pkg import name`` to the submodule ``pkg.name`` when there is one (else
to ``pkg``). A strongly connected component of more than one module fails the test, naming one cycle in it
with the file and line of each import.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "workbench"

Edge = tuple[str, int]  # (imported module, line of the import)


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of ``package`` (``pkg/__init__.py``: ``pkg``)."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _nearest_module(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is one of ``modules``, else its closest enclosing package among them."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The workbench modules ``module`` imports anywhere in its source, with the line of each import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges: list[Edge] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
        else:
            continue
        for target in targets:
            found = _nearest_module(target, modules)
            if found is not None and found != module:
                edges.append((found, node.lineno))
    return edges


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """Module -> {imported module: line of its first import there}."""
    modules = module_files(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        deps: dict[str, int] = {}
        for target, line in imported_modules(name, path, modules):
            deps.setdefault(target, line)
        graph[name] = deps
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Components of more than one module (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def shortest_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as ``[a, b, ..., a]``."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1] + [start]  # no module imports itself, so node != start
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start} in {component}")


def describe_cycle(graph: dict[str, dict[str, int]], cycle: list[str], modules: dict[str, Path]) -> str:
    """``a (a.py:12) -> b (b.py:40) -> a``: each arrow's import and where it is."""
    steps = [f"{a} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def test_the_graph_sees_relative_absolute_and_function_level_imports(tmp_path):
    """The parser resolves every import form the cycle check relies on (on a small package written here)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import c\nimport pkg.a\n")
    (pkg / "c.py").write_text("from pkg.sub.b import x\nfrom .sub import missing_name\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.sub.b": 2},  # a function-level import, to the submodule it names
        "pkg.c": {"pkg.sub.b": 1, "pkg.sub": 2},  # a name that is no submodule: the package itself
        "pkg.sub": {},
        "pkg.sub.b": {"pkg.c": 1, "pkg.a": 2},
    }
    components = strongly_connected(graph)
    assert components == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert shortest_cycle(graph, components[0]) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_no_import_cycles_in_workbench():
    modules = module_files()
    assert len(modules) > 50, "the walk should find the whole package"
    graph = import_graph()
    cycles = [describe_cycle(graph, shortest_cycle(graph, c), modules) + f"  [{len(c)} modules: {', '.join(c)}]"
              for c in strongly_connected(graph)]
    if cycles:
        pytest.fail("import cycles in workbench/ (move the shared helper to the module it belongs to, split the "
                    "module, or pass it as an argument):\n" + "\n".join(cycles), pytrace=False)
