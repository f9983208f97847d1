"""Step `promote`: gate the registered version against `@champion` and move the aliases.

The gate (paired bootstrap over the validation queries) and the alias moves are
tasks/mlops/registry.py; this step reads ``reports/registration.json`` and writes
``reports/promotion.json``. Like `register`, the DAG runs it outside `dvc repro`: the aliases live in
the shared registry, which other runs and people change too, so the decision is made against the
registry as it is now, never restored from DVC's cache.
"""

from __future__ import annotations

from pathlib import Path

from tasks.mlops import registry


def run(params: dict, registration: str | Path, out: str | Path, data: str | Path | None = None) -> dict:
    """Promote the version ``registration`` names if it passes the gate; write ``out``."""
    return registry.promote(params, registration, out, data)
