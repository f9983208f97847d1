"""Reliability, item 1: the bad-input corpus (tests/support/badinput.py) through validate, prepare and the CLI.

What tests/core/test_labels.py, test_images.py, test_params.py and test_submission.py already check case by
case (the parsers' messages) is not repeated here; this file runs the whole corpus as one dataset, as
a user meets it: every problem is one entry of the validation report naming file, line and field, or
one error line with `fail`; nothing else is dropped, counts reconcile, and no file outside the dataset
root is ever opened. docs/reliability.md maps each case to its test.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.cli import main
from tasks.core import images
from tasks.core.errors import InputError, TrafficlipError
from tasks.steps import prepare, validate
from tests.support import ROOT, badinput, cli
from tests.support.params import params_error, tiny_params


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> badinput.Corpus:
    return badinput.write_dataset(tmp_path_factory.mktemp("corpus"))


def _entry(report: dict, split: str, line, field: str, kind: str, words: str) -> list[dict]:
    return [r for r in report["rejected"] if r["split"] == split and r["line"] == line and r["field"] == field
            and r["kind"] == kind and words in r["reason"]]


def test_quarantine_reports_every_corpus_case_once_and_counts_reconcile(corpus, tmp_path):
    report = validate.run(corpus.root, "quarantine", tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text()) == {**report}
    for case, (split, line, field, words, kind) in corpus.expected.items():
        found = _entry(report, split, line, field, kind, words) if line is not None else [
            r for r in report["rejected"] if r["split"] == split and r["kind"] == kind and words in r["reason"]
            and r["image"].endswith(case.split(": ")[1])]
        assert len(found) == 1, (case, [r for r in report["rejected"] if r["line"] == line])
        entry = found[0]
        assert entry["file"] and entry["expected"], case          # names the file and what was expected
        if line is not None:
            assert entry["file"].endswith(f"{split}_label.txt" if split != "test" else "test_text.txt"), case
    assert report["problems"] == len(report["rejected"]) == len(corpus.expected)
    for split in ("train", "val"):
        counts = report["splits"][split]
        quarantined = sum(r["split"] == split for r in report["rejected"])
        assert counts["lines"] == corpus.lines[split] == counts["kept"] + counts["quarantined"], split
        assert counts["kept"] == corpus.kept[split] and counts["quarantined"] == quarantined, split
    test = report["splits"]["test"]
    assert {k: test[k] for k in corpus.test_images} == corpus.test_images
    assert test["image_files"] == test["images"] + test["quarantined_images"]
    query_lines = [line for line in (corpus.root / "test" / "test_text.txt").read_bytes().split(b"\n") if line.strip()]
    assert test["queries"] + test["query_lines_rejected"] == len(query_lines)


def test_bom_and_crlf_are_accepted_and_every_unusual_image_is_kept(corpus, tmp_path):
    result = prepare.run(tiny_params(), corpus.root, tmp_path / "prepared")
    manifest = json.loads((tmp_path / "prepared" / "train" / "manifest.json").read_text())
    by_name = {Path(image["path"]).name: image for image in manifest["images"]}
    for unusual in badinput.UNUSUAL_IMAGES:
        assert (by_name[unusual.name]["width"], by_name[unusual.name]["height"]) == unusual.size, unusual.name
    # the BOM is not part of the first name, CRLF not part of any text
    assert "good.jpg" in by_name and all("\r" not in p["text"] and "\ufeff" not in p["text"] for p in manifest["pairs"])
    assert by_name["ped_a.jpg"]["category"] == "pedestrian"
    assert len(manifest["pairs"]) == result["counts"]["train"]["kept"]
    cache = images.ImageCache(tmp_path / "prepared" / "train")
    assert len(cache) == len(manifest["images"])
    one_pixel = cache[[list(by_name).index("one_pixel.png")]][0].numpy()
    assert (one_pixel[28:36, 28:36] == [0, 0, 255]).all()           # a 1x1 image fills the 64 x 64 square
    test_manifest = json.loads((tmp_path / "prepared" / "test" / "manifest.json").read_text())
    assert [image["image"] for image in test_manifest["images"]] == ["t1.jpg", "t2_cmyk.jpg"]


def test_fail_mode_is_one_line_naming_file_line_and_field_with_the_report_written(corpus, tmp_path):
    report = tmp_path / "report.json"
    result = cli.run("validate", "--data", str(corpus.root), "--on-error", "fail", "--report", str(report),
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    first = min(v[1] for v in corpus.expected.values() if v[0] == "train" and v[1])
    assert f"train_label.txt:{first}: line has 2 '$'-separated fields" in lines[0]
    assert f"validation failed with {len(corpus.expected)} problem(s)" in lines[0] and str(report) in lines[0]
    assert json.loads(report.read_text())["problems"] == len(corpus.expected)


def test_prepare_with_fail_writes_no_cache(corpus, tmp_path):
    settings = tiny_params()
    settings["data"]["on_error"] = "fail"
    with pytest.raises(TrafficlipError, match="validation failed"):
        prepare.run(settings, corpus.root, tmp_path / "prepared")
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["validation_report.json"]


AUDIT = textwrap.dedent("""
    import json, os, sys
    from tasks.steps import validate
    opened, recording = [], [False]
    def hook(event, args):
        if recording[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(os.fsdecode(args[0])))
    sys.addaudithook(hook)
    recording[0] = True
    report = validate.run(sys.argv[1], "quarantine", None)
    recording[0] = False
    print(json.dumps({"opened": opened, "problems": report["problems"]}))
""")


def test_path_traversal_never_opens_a_file_outside_the_dataset_root(corpus):
    """Every file the validation opens is recorded (a Python audit hook): the images that the `../`,
    absolute, backslash and symlinked names point at are valid JPEGs that would be accepted if read;
    none of them is opened, and every data file opened lies inside the dataset root."""
    result = subprocess.run([sys.executable, "-c", AUDIT, str(corpus.root)], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    opened = set(seen["opened"])
    for path in corpus.outside:
        assert str(path.resolve()) not in opened, path
    code = (".py", ".pyc", ".so", ".pth", ".json")    # modules imported lazily while validating
    data_files = {p for p in opened if not p.endswith(code) and not p.startswith(("/proc/", "/dev/"))}
    root = str(corpus.root.resolve())
    assert str(corpus.root.resolve() / "train" / "train_images" / "good.jpg") in data_files   # the hook works
    assert all(p.startswith(root + os.sep) for p in data_files), sorted(data_files)


@pytest.mark.parametrize("name", ["val/val_label.txt", "test/test_text.txt"])
def test_a_label_or_query_file_linked_out_of_the_root_is_refused(raw_copy, tmp_path, name):
    outside = tmp_path / "elsewhere.txt"
    outside.write_bytes((raw_copy / name).read_bytes())            # valid content: refused for where it is
    (raw_copy / name).unlink()
    (raw_copy / name).symlink_to(outside)
    with pytest.raises(InputError, match=f"a link to {outside}, outside the dataset root") as info:
        validate.run(raw_copy, "quarantine", None)
    assert info.value.file == str(raw_copy / name)


# --- images -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("unusual", badinput.UNUSUAL_IMAGES, ids=[u.name for u in badinput.UNUSUAL_IMAGES])
def test_unusual_images_decode_to_the_right_rgb(tmp_path, unusual):
    path = tmp_path / unusual.name
    unusual.write(path)
    image = images.load_image(path)
    assert image.mode == "RGB" and image.size == unusual.size
    for (x, y), colour in unusual.pixels.items():
        got = image.getpixel((x, y))
        assert max(abs(a - b) for a, b in zip(got, colour)) <= unusual.tolerance, (unusual.name, (x, y), got, colour)
    array = images.prepare_image(image, 64)
    assert array.shape == (64, 64, 3) and array.dtype == np.uint8


def test_elongated_images_are_prepared_without_a_giant_canvas(monkeypatch):
    """A 100000 x 10 strip is a megapixel (accepted), but its padded square would be 10 gigapixels:
    no canvas beyond the decompression-bomb limit is ever allocated, and the strip stays where the
    padding geometry puts it."""
    requested = []
    real_new = Image.new

    def recording_new(mode, size, *args, **kwargs):
        requested.append(size[0] * size[1])
        assert size[0] * size[1] <= images.MAX_PIXELS, f"a {size[0]} x {size[1]} canvas"  # (not allocated)
        return real_new(mode, size, *args, **kwargs)
    monkeypatch.setattr(Image, "new", recording_new)
    strip = real_new("RGB", (100_000, 10), (255, 255, 255))
    array = images.prepare_image(strip, 64)
    assert max(requested) <= images.MAX_PIXELS
    wide = images.prepare_image(real_new("RGB", (10_000, 10), (255, 255, 255)), 64)
    assert array.shape == wide.shape == (64, 64, 3)
    assert array[:30].max() == 0 and array[34:].max() == 0         # the strip is a faint line at the centre


def test_damaged_image_bytes_are_always_input_errors():
    """Seeded mutations (cut, overwritten bytes) of JPEG/PNG/BMP/WebP/GIF/TIFF files: the decoder may
    raise anything on such input; the user always gets an InputError naming the image."""
    rng = random.Random(8)
    sources = []
    for fmt in ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF"):
        picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8))
        sources.append(badinput.encoded(picture, fmt))
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(600):
        data = bytearray(rng.choice(sources))
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            images.load_image(bytes(data), label="mutant.jpg")
            outcomes["decoded"] += 1
        except InputError as error:
            assert error.file == "mutant.jpg" and error.field == "image"
            outcomes["refused"] += 1
    assert outcomes["decoded"] > 50 and outcomes["refused"] > 50, outcomes


# --- params.yaml and the submission: what test_params.py / test_submission.py do not cover -----------

@pytest.mark.parametrize("text, line, words", [
    ("train:\n  epochs: 3\n  epochs: 5\n", 3, "'train.epochs' is given twice (lines 2 and 3)"),
    ("train:\n  epochs: 3\nmodel:\n  name: TrafficCLIP-Tiny\ntrain:\n  lr: 0.1\n", 5, "'train' is given twice"),
    ("train:\n  lr: 1e-3\n", 2, "YAML reads 1e-3 as text: write it with a dot, e.g. 0.001"),
    ("train:\n  epochs: 2.5\n", 2, "field 'train.epochs': 2.5 has the wrong type (expected an integer 1..200)"),
], ids=["duplicate key", "duplicate section", "1e-3 is text to YAML", "a float for an integer"])
def test_params_duplicates_and_yaml_number_traps_name_key_and_line(tmp_path, text, line, words):
    error = params_error(tmp_path, text)
    assert error.line == line and f"params.yaml:{line}" in str(error) and words in str(error)


def _cases() -> list[tuple[str, dict]]:
    names = [f"img{i}.jpg" for i in range(10)]
    good = [{"text": "a", "image_names": names}, {"text": "b", "image_names": names}]
    return [("missing key", {"results": [{"text": "a"}, good[1]]}, "results[0].image_names"),
            ("9 names", {"results": [{"text": "a", "image_names": names[:9]}, good[1]]}, "9 image names"),
            ("11 names", {"results": [good[0], {"text": "b", "image_names": names + ["x.jpg"]}]}, "11 image names"),
            ("out of order", {"results": [good[1], good[0]]}, "results[0].text"),
            ("no results", {"result": good}, "'results': missing")]


@pytest.mark.parametrize("case, doc, words", _cases(), ids=[c[0] for c in _cases()])
def test_bad_submissions_through_the_cli_are_one_line_with_exit_2(tmp_path, capsys, case, doc, words):
    (tmp_path / "gt.txt").write_text("a$img1.jpg\nb$img2.jpg\n")
    (tmp_path / "submission.json").write_text(json.dumps(doc))
    assert main(["score", "--submission", str(tmp_path / "submission.json"),
                 "--ground-truth", str(tmp_path / "gt.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "submission.json") in err[0] and words in err[0], err
