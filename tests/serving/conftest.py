"""Fixtures of the serving tests: the tiny tracked model as @champion of its own registered model, and
the tiny dataset's test images as the gallery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.mlops import registry

MODEL_NAME = "traffic-clip-search"


@pytest.fixture(scope="module")
def champion(tracked, tmp_path_factory):
    """The tiny tracked model registered and promoted as @champion of its own registered model."""
    folder = tmp_path_factory.mktemp("search")
    params = json.loads(json.dumps(tracked.params))
    params["mlflow"].update(registered_model=MODEL_NAME, floor=0.0)
    registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, folder / "registration.json")
    decision = registry.promote(params, folder / "registration.json", folder / "promotion.json")
    assert decision["champion_after"] == 1
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return folder, params_file


@pytest.fixture(scope="module")
def gallery(tiny_raw) -> Path:
    return tiny_raw / "test" / "test_images"
