"""Tiny training parameters for the tests, and names no other test uses."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tasks.core import params as params_mod
from tasks.core.errors import InputError

TINY_TRAIN = {"epochs": 2, "batch_size": 16, "warmup_steps": 2, "lr": 2e-3, "threads": 1}
# params.yaml `retrieval:` with every technique on (re-ranking a tiny gallery's top 12), and off
RETRIEVAL_ALL_ON = {"prompt_enhancement": True, "prompt_suffix": "image taken by traffic surveillance cameras",
                    "category_split": True, "gallery_classifier": "aspect_ratio", "rerank": True, "rerank_k": 12,
                    "rerank_blend": 0.5, "rerank_flip": True}
RETRIEVAL_ALL_OFF = {**RETRIEVAL_ALL_ON, "prompt_enhancement": False, "category_split": False, "rerank": False}


def tiny_params(**train_overrides) -> dict:
    """Tiny training, MLflow tracking off (tests of tracking turn it on)."""
    params = params_mod.defaults()
    params["train"].update(TINY_TRAIN, **train_overrides)
    params["mlflow"]["enabled"] = False
    return params


def tracked_params(**mlflow_overrides) -> dict:
    """tiny_params with tracking on (in the session's private store)."""
    params = tiny_params()
    params["mlflow"].update(enabled=True, experiment="tests", gallery_queries=2, bootstrap_samples=500,
                            **mlflow_overrides)
    return params


def unique_name(prefix: str) -> str:
    """A registered model's name no other test uses (the session shares one MLflow store)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def params_error(folder: Path, text: str) -> InputError:
    """The error loading a params.yaml that holds ``text`` gives (failing if it loads)."""
    path = folder / "params.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        params_mod.load(path)
    return info.value
