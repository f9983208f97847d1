"""The predict step (tasks/steps/predict.py): the submission keeps the queries' texts and order, a query
of neither category is reported, a pedestrian query gets pedestrian images only."""

from __future__ import annotations

import json
import shutil

import pytest

from tasks.core import models
from tasks.steps import predict, prepare
from tests.support.params import RETRIEVAL_ALL_ON, tiny_params


@pytest.fixture(scope="module")
def prepared_with_odd_query(tiny_raw, tmp_path_factory):
    raw = tmp_path_factory.mktemp("odd") / "raw"
    shutil.copytree(tiny_raw, raw)
    with open(raw / "test" / "test_text.txt", "a") as handle:
        handle.write("Lorem ipsum dolor.\n")
    out = raw.parent / "prepared"
    prepare.run(tiny_params(), raw, out)
    return raw, out


def test_predict_keeps_texts_and_reports_an_uncategorised_query(prepared_with_odd_query, tmp_path):
    raw, data = prepared_with_odd_query
    models.save_checkpoint(models.build("TrafficCLIP-Tiny", seed=0), tmp_path / "model")
    params = tiny_params()
    params["retrieval"].update(RETRIEVAL_ALL_ON)
    predict.run(params, data, tmp_path / "model", tmp_path / "sub.json", tmp_path / "report.json")
    submission = json.loads((tmp_path / "sub.json").read_text())["results"]
    assert [r["text"] for r in submission] == (raw / "test" / "test_text.txt").read_text().splitlines()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["uncategorised_queries"] == [{"line": len(submission), "text": "Lorem ipsum dolor."}]
    manifest = json.loads((data / "test" / "manifest.json").read_text())
    is_vehicle = {i["image"]: i["width"] >= i["height"] for i in manifest["images"]}
    for result in submission:
        if "pedestrian" in result["text"]:
            assert not any(is_vehicle[name] for name in result["image_names"])
