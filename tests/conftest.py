"""Shared fixtures (the helpers are in tests/support/). Tests run offline: any accidental Hugging Face
hub access fails at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import ROOT

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
# Airflow reads its configuration when first imported: a private home (SQLite metadata database),
# the project's DAGs, no examples. Tests that run Airflow processes derive their environment from this.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="trafficlip-airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
# the gallery embedding cache (tasks/serving/retrieve.py) of the tests: never the user's ~/.cache
os.environ["TRAFFICLIP_EMBEDDING_CACHE"] = tempfile.mkdtemp(prefix="trafficlip-embeddings-")

# (the helpers live in tests/support/; those imported here stay importable from tests.conftest, as
# benchmarks/overheads.py imports make_workspace and tool_env)
from tasks.demo import synth  # noqa: E402
from tasks.steps import prepare  # noqa: E402
from tests.support import airflow  # noqa: E402
from tests.support.params import TINY_TRAIN, tiny_params, tracked_params  # noqa: E402,F401
from tests.support.workspace import make_workspace, tool_env  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> Path:
    """A private MLflow store for the whole session: no test writes the project's mlruns.db."""
    folder = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlruns.db'}"
    return folder


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A tiny demo dataset in the challenge's layout (60 vehicles, 60 pedestrians)."""
    out = tmp_path_factory.mktemp("tiny") / "raw"
    synth.generate(out, vehicles=60, pedestrians=60, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_prepared") / "prepared"
    prepare.run(tiny_params(), tiny_raw, out)
    return out


@pytest.fixture
def raw_copy(tiny_raw, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    target = tmp_path / "raw"
    shutil.copytree(tiny_raw, target)
    return target


@pytest.fixture(scope="session")
def tracked(tiny_prepared, tmp_path_factory, mlflow_store) -> SimpleNamespace:
    """One tiny training and evaluation with MLflow tracking on, shared by the tracking and registry tests."""
    from tasks.steps import evaluate, train
    folder = tmp_path_factory.mktemp("tracked")
    params = tracked_params()
    summary = train.run(params, tiny_prepared, folder / "models", folder / "reports")
    evaluate.run(params, tiny_prepared, folder / "models" / "model", folder / "models" / "initial",
                 folder / "metrics" / "eval.json", folder / "reports" / "eval_queries.json",
                 folder / "reports" / "train_summary.json")
    return SimpleNamespace(folder=folder, params=params, summary=summary, data=tiny_prepared,
                           model=folder / "models" / "model", metrics=folder / "metrics" / "eval.json",
                           per_query=folder / "reports" / "eval_queries.json",
                           train_summary=folder / "reports" / "train_summary.json")


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Airflow's metadata database (SQLite in the session's private AIRFLOW_HOME) with the DAGs' pools."""
    airflow.setup()
    return os.environ["AIRFLOW_HOME"]
