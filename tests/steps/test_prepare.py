"""The prepare step (tasks/steps/prepare.py) on a damaged dataset: only the good rows reach the image
cache, and fail mode stops before writing one."""

from __future__ import annotations

import json

import pytest

from tasks.core.errors import TrafficlipError
from tasks.steps import prepare
from tests.support.params import tiny_params


def test_prepare_quarantines_and_caches_only_good_rows(damaged_raw, tmp_path):
    raw_copy, _ = damaged_raw
    result = prepare.run(tiny_params(), raw_copy, tmp_path / "prepared")
    assert result["problems"] == 3
    manifest = json.loads((tmp_path / "prepared" / "train" / "manifest.json").read_text())
    index = json.loads((tmp_path / "prepared" / "train" / "images.json").read_text())
    assert index["count"] == len(manifest["images"]) and all(p["image"] < index["count"] for p in manifest["pairs"])


def test_prepare_with_fail_stops_before_writing_a_cache(damaged_raw, tmp_path):
    raw_copy, _ = damaged_raw
    params = tiny_params()
    params["data"]["on_error"] = "fail"
    with pytest.raises(TrafficlipError):
        prepare.run(params, raw_copy, tmp_path / "prepared")
    assert (tmp_path / "prepared" / "validation_report.json").is_file()
    assert not (tmp_path / "prepared" / "train").exists()
