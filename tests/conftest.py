"""Shared fixtures. Tests run offline: any accidental Hugging Face hub access fails at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
# Airflow reads its configuration when first imported: a private home (SQLite metadata database),
# the project's DAGs, no examples. Tests that run Airflow processes derive their environment from this.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="trafficlip-airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")
# the gallery embedding cache (tasks/batch.py) of the tests: never the user's ~/.cache
os.environ["TRAFFICLIP_EMBEDDING_CACHE"] = tempfile.mkdtemp(prefix="trafficlip-embeddings-")

from tasks import params as params_mod  # noqa: E402
from tasks import prepare, synth  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TINY_TRAIN = {"epochs": 2, "batch_size": 16, "warmup_steps": 2, "lr": 2e-3, "threads": 1}


def tiny_params(**train_overrides) -> dict:
    """Tiny training, MLflow tracking off (tests of tracking turn it on)."""
    params = params_mod.defaults()
    params["train"].update(TINY_TRAIN, **train_overrides)
    params["mlflow"]["enabled"] = False
    return params


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


def tracked_params(**mlflow_overrides) -> dict:
    """tiny_params with tracking on (in the session's private store)."""
    params = tiny_params()
    params["mlflow"].update(enabled=True, experiment="tests", gallery_queries=2, bootstrap_samples=500,
                            **mlflow_overrides)
    return params


@pytest.fixture(scope="session")
def tracked(tiny_prepared, tmp_path_factory, mlflow_store) -> SimpleNamespace:
    """One tiny training and evaluation with MLflow tracking on, shared by the tracking and registry tests."""
    from tasks import evaluate, train
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


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
WORKSPACE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")
# what the tiny workspace changes in params.yaml (line edits, so its comments stay as a user has them)
TINY_WORKSPACE_EDITS = {"warmup_steps: 50 ": "warmup_steps: 2  ", "threads: 0 ": "threads: 1 ",
                        "bootstrap_samples: 2000": "bootstrap_samples: 200 ", "gallery_queries: 6 ": "gallery_queries: 2 ",
                        "epochs: 8 ": "epochs: 2 ", "batch_size: 64 ": "batch_size: 16 ", "floor: 0.05 ": "floor: 0.0  "}


def tool_env(**extra: str) -> dict:
    """The environment for the project's commands in a subprocess: this venv's bin first."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **GIT_ENV,
            **extra}


def make_workspace(target: Path, raw: Path) -> Path:
    """A workspace as a deployment has one: a git + DVC checkout of the project (its dvc.yaml,
    params.yaml with tiny training values, tasks/) with ``raw`` tracked as data/raw, committed."""
    target.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        shutil.copy(ROOT / name, target / name)
    text = (target / "params.yaml").read_text()
    for old, new in TINY_WORKSPACE_EDITS.items():
        assert old in text, f"params.yaml no longer has {old!r}: update TINY_WORKSPACE_EDITS"
        text = text.replace(old, new)
    (target / "params.yaml").write_text(text)
    shutil.copytree(ROOT / "tasks", target / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / ".dvc", target / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    shutil.copytree(raw, target / "data" / "raw")
    for cmd in (["git", "init", "-q"], ["dvc", "add", "-q", "data/raw"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "workspace"]):
        subprocess.run(cmd, cwd=target, env=tool_env(), check=True, capture_output=True)
    return target
