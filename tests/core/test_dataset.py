"""Scanning a dataset in the challenge's layout (tasks/core/dataset.py): every referenced image decoded once
(prepared at the size asked for), the test split's queries and images, and the report's rules. (The
validate step on damaged data: tests/steps/test_validate.py; the bad-input corpus:
tests/system/test_reliability_input.py.)"""

from __future__ import annotations

import pytest
from PIL import Image

from tasks.core import dataset
from tasks.core.errors import InputError, UserError


def test_a_clean_dataset_is_decoded_once_per_image_at_the_size_asked_for(tiny_raw):
    result = dataset.scan(tiny_raw, image_size=32)
    assert result.ok and result.report["problems"] == 0
    for split in ("train", "val"):
        scanned = result.splits[split]
        assert scanned.records and len(set(scanned.image_paths)) == len(scanned.image_paths)
        assert {r.image_path for r in scanned.records} == set(scanned.image_paths)
        assert len(scanned.image_arrays) == len(scanned.image_sizes) == len(scanned.image_paths)
        assert all(a.shape == (32, 32, 3) and a.dtype.name == "uint8" for a in scanned.image_arrays)
        with Image.open(tiny_raw / scanned.image_paths[0]) as first:
            assert scanned.image_sizes[0] == first.size                    # the original size is kept
        assert result.report["splits"][split]["kept"] == len(scanned.records)
    test = result.splits["test"]
    texts = (tiny_raw / "test" / "test_text.txt").read_text().splitlines()
    assert [q.text for q in test.queries] == texts
    assert len(test.image_paths) == len(list((tiny_raw / "test" / "test_images").iterdir()))
    assert dataset.scan(tiny_raw).splits["val"].image_arrays == []         # no size: nothing kept


def test_a_missing_folder_and_an_unknown_on_error_are_user_errors(tiny_raw, tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        dataset.scan(tmp_path / "nowhere")
    with pytest.raises(UserError, match="on_error must be one of fail, quarantine, got 'ignore'"):
        dataset.enforce(dataset.scan(tiny_raw), "ignore", tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()
