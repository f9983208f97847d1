"""Scanning a dataset in the challenge's layout (tasks/core/dataset.py): every referenced image decoded once
(prepared at the size asked for), the test split's queries and images, and the report's rules. (The
validate step on damaged data: tests/steps/test_validate.py; the bad-input corpus:
tests/system/test_reliability_input.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.core import dataset, images
from tasks.core.errors import InputError, UserError


class _Collect:
    """A sink keeping every array, each split's in order; ``expected``: what ``expect`` announced."""

    def __init__(self):
        self.arrays: dict[str, list[np.ndarray]] = {}
        self.expected: dict[str, int] = {}
        self.finished: dict[str, dataset.SplitScan] = {}   # in the order done() came

    def expect(self, split, count):
        assert split not in self.arrays            # before the split's first image
        self.expected[split] = count

    def add(self, split, array, digest):
        splits = ["train", "val", "test"]
        assert list(self.finished) == splits[:splits.index(split)]    # each earlier split done, this one not yet
        self.arrays.setdefault(split, []).append(array)

    def done(self, split, result):
        assert split not in self.finished
        assert len(result.image_paths) == len(self.arrays.get(split, []))     # after its last image
        self.finished[split] = result


def _collecting() -> tuple[dict[str, list[np.ndarray]], dataset.Sink]:
    sink = _Collect()
    return sink.arrays, sink


def test_a_clean_dataset_is_decoded_once_per_image_at_the_size_asked_for(tiny_raw):
    arrays, sink = _collecting()
    result = dataset.scan(tiny_raw, image_size=32, sink=sink)
    assert result.ok and result.report["problems"] == 0
    for split in ("train", "val"):
        scanned = result.splits[split]
        assert scanned.records and len(set(scanned.image_paths)) == len(scanned.image_paths)
        assert {r.image_path for r in scanned.records} == set(scanned.image_paths)
        assert len(arrays[split]) == len(scanned.image_sizes) == len(scanned.image_paths) == sink.expected[split]
        assert all(a.shape == (32, 32, 3) and a.dtype.name == "uint8" for a in arrays[split])
        first = images.prepare_image(images.load_image(tiny_raw / scanned.image_paths[0]), 32)
        assert np.array_equal(arrays[split][0], first)                     # the sink gets them in order
        with Image.open(tiny_raw / scanned.image_paths[0]) as first:
            assert scanned.image_sizes[0] == first.size                    # the original size is kept
        assert result.report["splits"][split]["kept"] == len(scanned.records)
    test = result.splits["test"]
    texts = (tiny_raw / "test" / "test_text.txt").read_text().splitlines()
    assert [q.text for q in test.queries] == texts
    assert len(test.image_paths) == len(list((tiny_raw / "test" / "test_images").iterdir()))
    assert len(arrays["test"]) == len(test.image_paths)
    assert not hasattr(test, "image_arrays")                               # scanning keeps no pixels
    assert list(sink.finished) == ["train", "val", "test"]                 # each split's final scan, in turn
    assert all(sink.finished[split] is result.splits[split] for split in sink.finished)
    with pytest.raises(ValueError, match="a sink needs an image_size"):
        dataset.scan(tiny_raw, sink=sink)


def test_two_workers_scan_exactly_as_one_even_with_bad_rows(raw_copy):
    """The pool changes nothing: the same report (bad rows in the same order), the same images in the
    same order to the sink, with a size and without one."""
    label = raw_copy / "train" / "train_label.txt"
    lines = label.read_text().splitlines()
    lines.insert(1, "nofields")
    lines.insert(2, lines[5])                                        # an image twice (a second caption)
    label.write_text("\n".join(lines) + "\n")
    sorted((raw_copy / "val" / "val_images").iterdir())[0].write_bytes(b"not an image")
    (raw_copy / "test" / "test_images" / "notes.txt").write_text("not an image")
    sorted((raw_copy / "test" / "test_images").glob("*.jpg"))[3].write_bytes(b"\xff\xd8 truncated")
    runs = {}
    for workers in (1, 2):
        arrays, sink = _collecting()
        result = dataset.scan(raw_copy, image_size=24, sink=sink, workers=workers)
        runs[workers] = (result.report, {s: (r.image_paths, r.image_sizes) for s, r in result.splits.items()}, arrays)
        assert dataset.scan(raw_copy, workers=workers).report == result.report
    train = runs[1][0]["splits"]["train"]
    assert runs[1][0]["problems"] == 4 and train["kept"] == train["images"] + 1   # the repeated image decoded once
    assert runs[1][0] == runs[2][0] and runs[1][1] == runs[2][1]
    assert runs[1][2].keys() == runs[2][2].keys() == {"train", "val", "test"}
    for split, arrays in runs[1][2].items():
        assert len(arrays) == len(runs[2][2][split])
        assert all(np.array_equal(a, b) for a, b in zip(arrays, runs[2][2][split]))


def test_a_missing_folder_and_an_unknown_on_error_are_user_errors(tiny_raw, tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        dataset.scan(tmp_path / "nowhere")
    with pytest.raises(UserError, match="on_error must be one of fail, quarantine, got 'ignore'"):
        dataset.enforce(dataset.scan(tiny_raw), "ignore", tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()
