"""Shared fixtures. Tests run offline: any accidental Hugging Face hub access fails at once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

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
