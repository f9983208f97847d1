"""The validation report: counts reconcile, bad rows are listed, fail vs quarantine."""

from __future__ import annotations

import json

import pytest

from tasks import prepare, validate
from tasks.errors import TrafficlipError
from tests.conftest import tiny_params


def _damage(raw):
    label = raw / "train" / "train_label.txt"
    lines = label.read_text().splitlines()
    lines.insert(1, "nofields")
    lines.insert(2, "../../etc/passwd$A white Audi.$This is a white Audi.")
    label.write_text("\n".join(lines) + "\n")
    victim = sorted((raw / "val" / "val_images").iterdir())[0]
    victim.write_bytes(b"not an image")
    return victim


def test_clean_dataset_has_no_problems(tiny_raw, tmp_path):
    report = validate.run(tiny_raw, "fail", tmp_path / "report.json")
    assert report["problems"] == 0 and report["ok"]
    for split in ("train", "val"):
        counts = report["splits"][split]
        assert counts["lines"] == counts["kept"] + counts["quarantined"] and counts["quarantined"] == 0
    assert report["splits"]["test"]["queries"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True


def test_quarantine_lists_every_bad_row_and_counts_reconcile(raw_copy, tmp_path):
    victim = _damage(raw_copy)
    report = validate.run(raw_copy, "quarantine", tmp_path / "report.json")
    train_counts, val_counts = report["splits"]["train"], report["splits"]["val"]
    assert train_counts["quarantined"] == 2 and train_counts["lines"] == train_counts["kept"] + 2
    assert val_counts["quarantined"] >= 1 and val_counts["lines"] == val_counts["kept"] + val_counts["quarantined"]
    reasons = {(r["split"], r["line"], r["field"]) for r in report["rejected"]}
    assert ("train", 2, "line") in reasons and ("train", 3, "image") in reasons
    image_problem = [r for r in report["rejected"] if r["kind"] == "image"][0]
    assert image_problem["image"].endswith(victim.name) and "cannot decode" in image_problem["reason"]


def test_fail_writes_the_report_and_stops(raw_copy, tmp_path):
    _damage(raw_copy)
    with pytest.raises(TrafficlipError, match="validation failed with 3 problem"):
        validate.run(raw_copy, "fail", tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["problems"] == 3


def test_prepare_quarantines_and_caches_only_good_rows(raw_copy, tmp_path):
    _damage(raw_copy)
    result = prepare.run(tiny_params(), raw_copy, tmp_path / "prepared")
    assert result["problems"] == 3
    manifest = json.loads((tmp_path / "prepared" / "train" / "manifest.json").read_text())
    index = json.loads((tmp_path / "prepared" / "train" / "images.json").read_text())
    assert index["count"] == len(manifest["images"]) and all(p["image"] < index["count"] for p in manifest["pairs"])


def test_prepare_with_fail_stops_before_writing_a_cache(raw_copy, tmp_path):
    _damage(raw_copy)
    params = tiny_params()
    params["data"]["on_error"] = "fail"
    with pytest.raises(TrafficlipError):
        prepare.run(params, raw_copy, tmp_path / "prepared")
    assert (tmp_path / "prepared" / "validation_report.json").is_file()
    assert not (tmp_path / "prepared" / "train").exists()
