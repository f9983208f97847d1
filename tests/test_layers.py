"""The layering rule, read from the source: every import (function-local ones too) points down.

    cli ─▶ demo ─▶ steps ─▶ report ─▶ mlops ─▶ core        orchestration ─▶ core
                   serving ─▶ report, mlops, core

core imports only core (and never mlflow or airflow); a step never imports another step; no two
modules import each other, even through others; orchestration (what the DAG parser loads) pulls in
neither torch nor mlflow when imported. The rule is docs/architecture.md's "Layers".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.support import imports

# layer -> the layers it may import (itself included where its modules may import each other)
ALLOWED = {
    "core": {"core"},
    "mlops": {"core", "mlops"},
    "report": {"core", "mlops", "report"},
    "steps": {"core", "mlops", "report"},
    "serving": {"core", "mlops", "report", "serving"},
    "orchestration": {"core", "orchestration"},
    "demo": {"core", "mlops", "report", "steps", "demo"},
    "cli": {"core", "mlops", "report", "steps", "serving", "orchestration", "demo", "cli"},
    "package": set(),
}
FORBIDDEN_IN_CORE = ("mlflow", "airflow")


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1] if len(parts) > 2 or parts[1] in ALLOWED else "package"


def violations(edges: dict[str, list[imports.Import]]) -> list[str]:
    """Every import that breaks the rule, as 'file:line source -> target (why)'."""
    found = []
    for source, targets in edges.items():
        for edge in targets:
            src, dst = layer(edge.source), layer(edge.target)
            where = f"{edge.source}:{edge.line} -> {edge.target}"
            if src == dst == "steps":
                found.append(f"{where} (a step never imports another step)")
            elif dst not in ALLOWED[src] and dst != "package":
                found.append(f"{where} ({src} may not import {dst})")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in imports.cycles(edges)]
    return found


def test_every_import_follows_the_layering_rule():
    assert violations(imports.graph()) == []


def test_core_never_imports_mlflow_or_airflow():
    offenders = []
    for name, path in imports.modules().items():
        if layer(name) != "core":
            continue
        import ast
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_CORE]
    assert offenders == []


def test_the_rule_catches_a_planted_cycle_and_a_forbidden_arrow(tmp_path):
    """The checker is not vacuous: a small package with a core module importing a step, two steps
    importing each other and a cycle through a function-local import is refused on each count."""
    package = tmp_path / "tasks"
    for sub in ("core", "steps", "mlops"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "core" / "paths.py").write_text("from tasks.steps import train\n")
    (package / "steps" / "train.py").write_text("from tasks.core import paths\nfrom tasks.steps import evaluate\n")
    (package / "steps" / "evaluate.py").write_text("def f():\n    from tasks.steps.train import x\n")
    (package / "mlops" / "tracking.py").write_text("from tasks.core.paths import RAW\n")
    found = violations(imports.graph(tmp_path))
    assert any("tasks.core.paths:1 -> tasks.steps.train (core may not import steps)" in v for v in found)
    assert any("tasks.steps.train:2 -> tasks.steps.evaluate (a step never imports another step)" in v for v in found)
    assert any("tasks.steps.evaluate:2 -> tasks.steps.train (a step never imports another step)" in v for v in found)
    cycle = [v for v in found if v.startswith("import cycle:")]
    assert cycle == ["import cycle: tasks.core.paths -> tasks.steps.evaluate -> tasks.steps.train"]
    assert not any(v.startswith("tasks.mlops.tracking") for v in found)


@pytest.mark.parametrize("module", ["tasks.orchestration.workspace", "tasks.orchestration.runners",
                                    "tasks.orchestration.dag_defaults", "tasks.core.paths", "tasks.core.params"])
def test_what_the_dag_parser_loads_pulls_in_no_torch_or_mlflow(module):
    code = textwrap.dedent(f"""
        import sys, {module}
        heavy = sorted(m for m in ("torch", "mlflow", "open_clip") if m in sys.modules)
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} loads {out}"
