"""Label parsing: both categories, normalised keys, vocabulary, malformed lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tasks.core import labels
from tasks.core.errors import InputError


def _dataset(tmp_path: Path, lines: list[str], images: list[str]) -> Path:
    folder = tmp_path / "train" / "train_images"
    folder.mkdir(parents=True)
    for name in images:
        Image.new("RGB", (20, 10), (255, 255, 255)).save(folder / name)
    (tmp_path / "train" / "train_label.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


PED = "090000$0,0,1,0,1,0,0,0,1,0,0,0,0,0,1,0,0,0,0,0,0$A female pedestrian is someone who walks on foot."


def test_both_categories_and_extensionless_names(tmp_path):
    root = _dataset(tmp_path, ["pmitevanhx.jpg$A white Audi.$This is a white Audi.", PED],
                    ["pmitevanhx.jpg", "090000.jpg"])
    parsed = labels.read_split(root, "train")
    assert parsed.errors == []
    vehicle, pedestrian = parsed.records
    assert vehicle.category == "vehicle"
    assert (vehicle.vehicle.colour, vehicle.vehicle.brand, vehicle.vehicle.vehicle_type) == ("white", "Audi", None)
    assert vehicle.key == "vehicle:white|audi|"
    assert pedestrian.category == "pedestrian" and pedestrian.image == "090000"
    assert pedestrian.image_path == "train/train_images/090000.jpg"
    assert pedestrian.bits[2] == 1 and sum(pedestrian.bits) == 4
    assert pedestrian.key == "pedestrian:001010001000001000000"


@pytest.mark.parametrize("phrase, expected", [
    ("A white Audi Sedan.", ("white", "Audi", "Sedan")),
    ("An orange SUV.", ("orange", None, "SUV")),
    ("A Land Rover.", (None, "Land Rover", None)),
    ("a GRAY bmw suv", ("grey", "bmw", "SUV")),
    ("A red Great Wall Truck.", ("red", "Great Wall", "Truck")),
])
def test_vehicle_phrases(phrase, expected):
    parsed = labels.parse_vehicle_phrase(phrase)
    assert (parsed.colour, parsed.brand, parsed.vehicle_type) == expected


def test_keys_are_normalised_so_case_and_spelling_variants_match():
    a = labels.parse_vehicle_phrase("A white Audi Sedan.")
    b = labels.parse_vehicle_phrase("a white AUDI sedan")
    c = labels.parse_vehicle_phrase("A white Audi.")
    assert a.key == b.key != c.key


@pytest.mark.parametrize("line, field, words", [
    ("a.jpg$A white Audi.", "line", "2 '$'-separated fields"),
    ("a.jpg$A white Audi.$text$extra", "line", "4 '$'-separated fields"),
    ("a.jpg$A white Audi.$   ", "text", "text is empty"),
    ("a.jpg$$This is a car.", "attribute", "attribute is empty"),
    ("a.jpg$0,0,1$A female pedestrian.", "attribute", "has 3 values"),
    ("a.jpg$" + ",".join("0" * 20) + "$A pedestrian.", "attribute", "has 20 values"),
    ("a.jpg$" + ",".join("0" * 22) + "$A pedestrian.", "attribute", "has 22 values"),
    ("a.jpg$" + ",".join(["2"] + ["0"] * 20) + "$A pedestrian.", "attribute", "non-binary"),
    ("../secret.jpg$A white Audi.$This is a white Audi.", "image", "is a path"),
    ("/etc/passwd$A white Audi.$This is a white Audi.", "image", "is a path"),
    ("missing.jpg$A white Audi.$This is a white Audi.", "image", "not found"),
    ("a.jpg$A.$This is a.", "attribute", "names no colour"),
])
def test_malformed_lines_name_file_line_and_field(tmp_path, line, field, words):
    root = _dataset(tmp_path, ["a.jpg$A white Audi.$This is a white Audi.", line], ["a.jpg"])
    parsed = labels.read_split(root, "train")
    assert len(parsed.records) == 1 and len(parsed.errors) == 1
    error = parsed.errors[0]
    assert error.line == 2 and error.field == field
    assert words in str(error) and "train_label.txt:2" in str(error)
    assert parsed.lines == len(parsed.records) + len(parsed.errors)


def test_a_repeated_attribute_is_parsed_once_and_each_bad_line_still_named(tmp_path):
    """read_split remembers each distinct attribute's parse (a label file repeats a few thousand over
    100,000 lines): the records are what parsing each line alone gives, and a bad attribute is an
    error on every line that has it, each with its own line number."""
    bad = ",".join("0" * 20)
    ped = PED.split("$")[1]
    lines = ["a.jpg$A white Audi.$one", f"b.jpg${ped}$two", "c.jpg$A white Audi.$three", f"d.jpg${bad}$four",
             f"e.jpg${ped}$five", f"f.jpg${bad}$six"]
    root = _dataset(tmp_path, lines, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"])
    parsed = labels.read_split(root, "train")
    folder = labels.Folder(root / "train" / "train_images", root)
    alone = [labels.parse_line(line, file=parsed.file, line=n, split="train", folder=folder)
             for n, line in enumerate(lines, start=1) if bad not in line]
    assert parsed.records == alone
    assert [r.line for r in parsed.records] == [1, 2, 3, 5]
    assert [(e.line, e.field) for e in parsed.errors] == [(4, "attribute"), (6, "attribute")]
    assert all("has 20 values" in str(e) for e in parsed.errors)


def test_conflicting_duplicate_image_is_an_error_but_a_second_caption_is_not(tmp_path):
    root = _dataset(tmp_path, ["a.jpg$A white Audi.$This is a white Audi.",
                               "a.jpg$A white Audi.$A white Audi car.",
                               "a.jpg$A red Audi.$This is a red Audi."], ["a.jpg"])
    parsed = labels.read_split(root, "train")
    assert len(parsed.records) == 2
    assert len(parsed.errors) == 1 and parsed.errors[0].line == 3 and "line 1" in str(parsed.errors[0])


def test_bom_crlf_and_non_utf8(tmp_path):
    root = _dataset(tmp_path, [], ["a.jpg"])
    (root / "train" / "train_label.txt").write_bytes(
        b"\xef\xbb\xbfa.jpg$A white Audi.$This is a white Audi.\r\n"
        b"a.jpg$A white Audi.$caf\xe9\r\n")
    parsed = labels.read_split(root, "train")
    assert [r.text for r in parsed.records] == ["This is a white Audi."]
    assert parsed.errors[0].line == 2 and "UTF-8" in str(parsed.errors[0])


def test_missing_label_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="label file not found"):
        labels.read_split(tmp_path, "train")


def test_vocabulary_from_training_labels(tiny_raw):
    parsed = labels.read_split(tiny_raw, "train")
    vocabulary = labels.extract_vocabulary(parsed.records)
    assert set(vocabulary.colours) <= {"black", "blue", "brown", "green", "grey", "orange", "pink",
                                       "purple", "red", "white", "yellow"}
    assert len(vocabulary.colours) >= 5 and len(vocabulary.types) >= 4 and len(vocabulary.brands) >= 5
    assert sum(vocabulary.counts["colours"].values()) <= len(parsed.records)


@pytest.mark.parametrize("text, category", [
    ("This is a white Audi Sedan.", "vehicle"),
    ("A male pedestrian is someone who walks on foot.", "pedestrian"),
    ("A woman with a red bag.", "pedestrian"),
    ("This is a Kia.", "vehicle"),
    ("This is a white.", "vehicle"),          # a label naming only the colour
    ("Lorem ipsum dolor.", None),
])
def test_query_category(text, category):
    vocabulary = labels.Vocabulary([], [], ["Kia"], {})
    assert labels.query_category(text, vocabulary) == category


def test_links_are_judged_by_where_they_lead_with_the_folder_listed_once(tmp_path):
    """read_split lists each image folder once and resolves only links (tasks/core/labels.py Folder):
    the answers are outside_root's, file by file, for plain files, links inside the root, links into a
    DVC cache, links out, and an image folder that is itself a link out of the root."""
    import os

    outside, cache = tmp_path / "elsewhere", tmp_path / "repo" / ".dvc" / "cache" / "files" / "md5"
    for folder in (outside, cache):
        folder.mkdir(parents=True)
        Image.new("RGB", (20, 10)).save(folder / "x.jpg")
    root = _dataset(tmp_path / "data", [f"{n}$A white Audi.$This is a white Audi." for n in
                                        ("plain.jpg", "inside", "cached.jpg", "out.jpg", "broken.jpg")],
                    ["plain.jpg"])
    images = root / "train" / "train_images"
    os.symlink(images / "plain.jpg", images / "inside.jpg")
    os.symlink(cache / "x.jpg", images / "cached.jpg")
    os.symlink(outside / "x.jpg", images / "out.jpg")
    os.symlink(tmp_path / "missing.jpg", images / "broken.jpg")
    parsed = labels.read_split(root, "train")
    assert [r.image_path for r in parsed.records] == [
        "train/train_images/plain.jpg", "train/train_images/inside.jpg", "train/train_images/cached.jpg"]
    assert [(e.line, e.field) for e in parsed.errors] == [(4, "image"), (5, "image")]
    assert f"a link to {outside / 'x.jpg'}, outside the dataset root" in str(parsed.errors[0])
    assert "not found" in str(parsed.errors[1])
    for name in ("plain.jpg", "inside.jpg", "cached.jpg", "out.jpg"):
        assert labels.Folder(images, root).outside(name) == labels.outside_root(images / name, root)

    # the whole image folder a link out of the root: every image in it leads outside, but for the one
    # whose link goes on into the DVC cache
    moved = tmp_path / "moved"
    images.rename(moved)
    os.symlink(moved, images)
    parsed = labels.read_split(root, "train")
    assert [r.image for r in parsed.records] == ["cached.jpg"]
    assert [e.line for e in parsed.errors if "outside the dataset root" in str(e)] == [1, 2, 4]
