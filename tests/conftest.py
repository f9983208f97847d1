"""Shared fixtures. Tests run offline: any accidental Hugging Face hub access fails at once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

from tasks import params as params_mod  # noqa: E402
from tasks import prepare, synth  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TINY_TRAIN = {"epochs": 2, "batch_size": 16, "warmup_steps": 2, "lr": 2e-3, "threads": 1}


def tiny_params(**train_overrides) -> dict:
    params = params_mod.defaults()
    params["train"].update(TINY_TRAIN, **train_overrides)
    return params


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
