"""Step `register`: put the trained model in the MLflow registry, once per training run.

The registry's mechanism (idempotent find-or-create under a lock, version tags) is
tasks/mlops/registry.py; this step reads the pipeline's files and writes ``reports/registration.json``.
It is a DVC stage for the record, but the DAG runs it outside `dvc repro`: its real output is a model
version in a shared registry that DVC cannot cache or restore, so it must run even when the files it
reads are unchanged (a retry after the server failed), and it is idempotent instead.
"""

from __future__ import annotations

from pathlib import Path

from tasks.mlops import registry


def run(params: dict, train_summary: str | Path, metrics: str | Path, per_query: str | Path,
        out: str | Path) -> dict:
    """Register the model of the training run ``train_summary`` names; write ``out``."""
    return registry.register(params, train_summary, metrics, per_query, out)
