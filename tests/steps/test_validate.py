"""The validate step (tasks/steps/validate.py): counts reconcile, bad rows are listed, fail vs quarantine."""

from __future__ import annotations

import json

import pytest

from tasks.core.errors import TrafficlipError
from tasks.steps import validate


def test_clean_dataset_has_no_problems(tiny_raw, tmp_path):
    report = validate.run(tiny_raw, "fail", tmp_path / "report.json")
    assert report["problems"] == 0 and report["ok"]
    for split in ("train", "val"):
        counts = report["splits"][split]
        assert counts["lines"] == counts["kept"] + counts["quarantined"] and counts["quarantined"] == 0
    assert report["splits"]["test"]["queries"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True


def test_quarantine_lists_every_bad_row_and_counts_reconcile(damaged_raw, tmp_path):
    raw_copy, victim = damaged_raw
    report = validate.run(raw_copy, "quarantine", tmp_path / "report.json")
    train_counts, val_counts = report["splits"]["train"], report["splits"]["val"]
    assert train_counts["quarantined"] == 2 and train_counts["lines"] == train_counts["kept"] + 2
    assert val_counts["quarantined"] >= 1 and val_counts["lines"] == val_counts["kept"] + val_counts["quarantined"]
    reasons = {(r["split"], r["line"], r["field"]) for r in report["rejected"]}
    assert ("train", 2, "line") in reasons and ("train", 3, "image") in reasons
    image_problem = [r for r in report["rejected"] if r["kind"] == "image"][0]
    assert image_problem["image"].endswith(victim.name) and "cannot decode" in image_problem["reason"]


def test_fail_writes_the_report_and_stops(damaged_raw, tmp_path):
    raw_copy, _ = damaged_raw
    with pytest.raises(TrafficlipError, match="validation failed with 3 problem"):
        validate.run(raw_copy, "fail", tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["problems"] == 3
