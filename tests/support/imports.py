"""The project's import graph, read from the source (function-local imports included), never by importing.

Used by the layering test (tests/test_layers.py) and the stale-dependency test
(tests/system/test_pipeline_dvc.py): what a DVC stage runs is the closure of what its command imports.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = "tasks"


@dataclass(frozen=True)
class Import:
    source: str          # the importing module, dotted (tasks.steps.train)
    target: str          # the imported project module, dotted (tasks.core.models)
    line: int
    local: bool          # inside a function (runs when called, not at import)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module a dotted import name refers to (a name inside a module -> that module)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, known: dict[str, Path], package: str = PACKAGE) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from tasks.core import models` imports the module tasks.core.models
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in child.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = _resolve(target, known)
                    if resolved and resolved != name:
                        found.append(Import(name, resolved, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return found


def graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, list[Import]]:
    known = modules(root, package)
    return {name: imports_of(name, path, known, package) for name, path in known.items()}


def closure(start: list[str], edges: dict[str, list[Import]]) -> set[str]:
    """Every module reachable from ``start`` (the modules themselves included), with the packages
    whose ``__init__`` runs on the way (importing tasks.core.models runs tasks/core/__init__.py)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in edges)
        todo.extend(edge.target for edge in edges.get(current, []))
    return seen


def cycles(edges: dict[str, list[Import]]) -> list[list[str]]:
    """Each import cycle between modules once (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for edge in edges.get(node, []):
            if edge.target not in index:
                connect(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
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

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found
