"""Tests of the synthetic demo dataset (tasks/demo/synth.py)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.errors import TrafficlipError
from tasks.core.vocab import (
    AGE_BITS,
    BIT,
    COLOURS,
    DEMO_BRANDS,
    LOWER_BITS,
    ORIENTATION_BITS,
    PEDESTRIAN_ATTRIBUTES,
    PEDESTRIAN_BITS,
    SLEEVE_BITS,
    UPPER_PATTERN_BITS,
    VEHICLE_TYPES,
    pedestrian_caption,
    vehicle_caption,
    vehicle_phrase,
)
from tasks.demo import synth

VEHICLES, PEDESTRIANS, SEED = 400, 100, 11


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    summary = synth.generate(out, VEHICLES, PEDESTRIANS, SEED)
    return out, summary


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _label_lines(out: Path, split: str) -> list[list[str]]:
    text = (out / split / f"{split}_label.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text
    return [line.split("$") for line in text.splitlines()]


def _truth(out: Path) -> dict:
    return json.loads((out / "synth_truth.json").read_text(encoding="utf-8"))


def _is_vehicle(name: str) -> bool:
    return name.endswith(".jpg")


def _to64(image: Image.Image) -> np.ndarray:
    """What the model sees: zero-padded to a square, resized to 64 px."""
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return np.asarray(square.resize((64, 64), Image.BICUBIC), np.float32)


# --- determinism --------------------------------------------------------------------------------

def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert synth.generate(a, 20, 20, 5)["seed"] == 5
    synth.generate(b, 20, 20, 5)
    synth.generate(c, 20, 20, 6)
    hashes_a, hashes_b, hashes_c = _hashes(a), _hashes(b), _hashes(c)
    assert len(hashes_a) == 20 + 20 + 5  # images + 2 labels + text + GT + truth
    assert hashes_a == hashes_b
    assert set(hashes_a.values()).isdisjoint(hashes_c.values())


def test_regenerating_replaces_the_old_dataset(tmp_path):
    synth.generate(tmp_path, 30, 30, 1)
    stray = tmp_path / "train" / "train_images" / "zzzzzzzzzz.jpg"
    stray.write_bytes(b"old")
    keep = tmp_path / "notes.txt"
    keep.write_text("not ours")
    summary = synth.generate(tmp_path, 10, 10, 2)
    assert not stray.exists()
    assert keep.read_text() == "not ours"
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg")}
    assert files == set(_truth(tmp_path)["images"])
    assert len(files) == 20 == sum(sum(s.values()) for s in summary["splits"].values())
    assert not list(tmp_path.rglob("*.tmp"))


# --- format -------------------------------------------------------------------------------------

def test_summary_matches_the_files(dataset):
    out, summary = dataset
    assert summary["out"] == str(out) and summary["seed"] == SEED
    assert summary["splits"] == {"train": {"vehicle": 240, "pedestrian": 60},
                                 "val": {"vehicle": 80, "pedestrian": 20},
                                 "test": {"vehicle": 80, "pedestrian": 20}}
    for split in ("train", "val"):
        names = [fields[0] for fields in _label_lines(out, split)]
        assert sum(map(_is_vehicle, names)) == summary["splits"][split]["vehicle"]
        assert sum(not _is_vehicle(n) for n in names) == summary["splits"][split]["pedestrian"]
        assert len(list((out / split / f"{split}_images").iterdir())) == len(names)
    test_images = list((out / "test" / "test_images").iterdir())
    assert len(test_images) == sum(summary["splits"]["test"].values())
    texts = (out / "test" / "test_text.txt").read_text(encoding="utf-8").splitlines()
    assert summary["test_queries"] == len(texts)


def test_label_lines(dataset):
    out, _ = dataset
    vocabulary = set(COLOURS) | set(VEHICLE_TYPES) | set(DEMO_BRANDS)
    all_names: list[str] = []
    for split in ("train", "val"):
        for fields in _label_lines(out, split):
            assert len(fields) == 3 and all(fields)
            name, attribute, text = fields
            all_names.append(name)
            if _is_vehicle(name):
                assert len(name) == 14 and name[:10].isalpha() and name[:10].islower()
                assert attribute.startswith(("A ", "An ")) and attribute.endswith(".")
                words = attribute[:-1].split(" ")[1:]
                assert 1 <= len(words) <= 3 and set(words) <= vocabulary
                assert text == "This is " + attribute[0].lower() + attribute[1:]
                assert (out / split / f"{split}_images" / name).is_file()
            else:
                assert len(name) == 6 and name.isdigit()
                bits = [int(b) for b in attribute.split(",")]
                assert len(bits) == PEDESTRIAN_BITS and set(bits) <= {0, 1}
                assert attribute == ",".join(map(str, bits))
                assert sum(bits[i] for i in AGE_BITS) == 1
                assert sum(bits[i] for i in ORIENTATION_BITS) == 1
                assert text == pedestrian_caption(bits)
                assert (out / split / f"{split}_images" / f"{name}.jpg").is_file()
    assert len(all_names) == len(set(all_names))


def test_names_unique_across_splits(dataset):
    out, _ = dataset
    files = [p.name for p in out.rglob("*.jpg")]
    assert len(files) == len(set(files)) == VEHICLES + PEDESTRIANS


def test_images_decode_with_the_right_shapes(dataset):
    out, _ = dataset
    sizes = {"vehicle": set(), "pedestrian": set()}
    for relative, entry in _truth(out)["images"].items():
        with Image.open(out / relative) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            image.load()
            w, h = image.size
        if entry["category"] == "vehicle":
            assert w > h and 1.1 <= w / h <= 2.3 and 90 <= w <= 220
        else:
            assert h > w and 1.7 <= h / w <= 2.9 and 110 <= h <= 260
        sizes[entry["category"]].add((w, h))
    assert len(sizes["vehicle"]) > 50 and len(sizes["pedestrian"]) > 50


# --- vocabulary ---------------------------------------------------------------------------------

def test_vehicle_vocabulary_coverage_and_omissions(dataset):
    out, _ = dataset
    images = _truth(out)["images"]
    vehicles = [e for e in images.values() if e["category"] == "vehicle"]
    assert len(vehicles) == VEHICLES
    assert {e["colour"] for e in vehicles} == set(COLOURS)
    assert {e["type"] for e in vehicles} == set(VEHICLE_TYPES)
    assert len({e["brand"] for e in vehicles}) >= 10
    omits = [tuple(e["label_omits"]) for e in vehicles]
    assert any("colour" in o for o in omits) and any("type" in o for o in omits)
    assert all(len(o) < 3 for o in omits)
    # The label as written agrees with the truth and its omissions.
    labels = {fields[0]: fields[1] for split in ("train", "val") for fields in _label_lines(out, split)}
    for relative, entry in images.items():
        name = relative.rsplit("/", 1)[1]
        if entry["category"] == "vehicle" and name in labels:
            parts = [None if p in entry["label_omits"] else entry[p] for p in ("colour", "brand", "type")]
            assert labels[name] == vehicle_phrase(*parts)


def test_vehicle_omission_frequencies():
    rng = np.random.default_rng(0)
    samples = [synth.sample_vehicle_attributes(rng) for _ in range(4000)]
    for part, target in synth.VEHICLE_OMIT_P.items():
        rate = sum(part in s["label_omits"] for s in samples) / len(samples)
        assert abs(rate - target) < 0.02, (part, rate)
    assert all(len(s["label_omits"]) < 3 for s in samples)


def test_pedestrian_frequencies():
    rng = np.random.default_rng(2023)
    bits = np.array([synth.sample_pedestrian_bits(rng) for _ in range(2000)])
    assert bits.shape == (2000, PEDESTRIAN_BITS)
    for group in (AGE_BITS, ORIENTATION_BITS, SLEEVE_BITS, LOWER_BITS):
        assert (bits[:, list(group)].sum(axis=1) == 1).all()
    assert (bits[:, list(UPPER_PATTERN_BITS)].sum(axis=1) <= 1).all()
    # Glasses are only given where they can be seen.
    assert not (bits[:, BIT["Glasses"]] & bits[:, BIT["Back"]]).any()
    rates = bits.mean(axis=0)
    for index, (name, _) in enumerate(PEDESTRIAN_ATTRIBUTES):
        assert abs(rates[index] - synth.PEDESTRIAN_TARGETS[name]) < 0.035, (name, rates[index])
    male = bits[:, BIT["Male"]] == 1
    assert bits[~male, BIT["Skirt&Dress"]].mean() > 3 * bits[male, BIT["Skirt&Dress"]].mean()


def test_emblems_and_colours_are_distinct():
    assert set(synth.BRAND_EMBLEMS) == set(DEMO_BRANDS)
    assert len(set(synth.BRAND_EMBLEMS.values())) == len(DEMO_BRANDS)
    assert set(synth.COLOUR_RGB) == set(COLOURS)
    for a, b in itertools.combinations(COLOURS, 2):
        assert np.linalg.norm(np.subtract(synth.COLOUR_RGB[a], synth.COLOUR_RGB[b])) > 80, (a, b)


# --- the drawings carry the attributes ------------------------------------------------------------

@pytest.mark.parametrize("vehicle_type", VEHICLE_TYPES)
def test_body_colour_is_a_large_area(vehicle_type):
    for colour in COLOURS:
        image = np.asarray(synth.draw_vehicle(colour, "Kia", vehicle_type, np.random.default_rng(3)), np.float32)
        near = np.linalg.norm(image - np.array(synth.COLOUR_RGB[colour], np.float32), axis=2) < 45
        assert near.mean() > 0.1, (colour, vehicle_type, near.mean())


def test_brand_shows_in_its_emblem_and_trim_on_the_body_only():
    assert set(synth.BRAND_TRIMS) == set(DEMO_BRANDS)
    assert len(set(synth.BRAND_TRIMS.values())) == len(DEMO_BRANDS)  # a trim alone tells the brand
    for seed, vehicle_type in enumerate(VEHICLE_TYPES):
        plain = np.asarray(synth.draw_vehicle("red", "Kia", vehicle_type, np.random.default_rng(seed)), np.int16)
        images = [_to64(synth.draw_vehicle("red", brand, vehicle_type, np.random.default_rng(seed)))
                  for brand in DEMO_BRANDS]
        for a, b in itertools.combinations(range(len(DEMO_BRANDS)), 2):
            changed = np.abs(images[a] - images[b]).max(axis=2) > 40
            assert changed.sum() >= 6, (vehicle_type, DEMO_BRANDS[a], DEMO_BRANDS[b], changed.sum())
        # what a brand changes lies on the body: the background and the wheels stay as they are
        other = np.asarray(synth.draw_vehicle("red", "Toyota", vehicle_type, np.random.default_rng(seed)), np.int16)
        rows, cols = np.nonzero(np.abs(plain - other).max(axis=2) > 0)
        red = np.linalg.norm(plain - np.array(synth.COLOUR_RGB["red"]), axis=2) < 60
        body_rows, body_cols = np.nonzero(red)
        assert body_rows.min() - 2 <= rows.min() and rows.max() <= body_rows.max() + 2, vehicle_type
        assert body_cols.min() - 2 <= cols.min() and cols.max() <= body_cols.max() + 2, vehicle_type


# --- what a label omits cannot be seen ------------------------------------------------------------

def _saturation(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image, np.float32)
    return rgb.max(axis=2) - rgb.min(axis=2)


@pytest.mark.parametrize("vehicle_type", VEHICLE_TYPES)
def test_omitted_colour_is_a_monochrome_night_shot(vehicle_type):
    for seed, colour in enumerate(COLOURS):
        day = synth.draw_vehicle(colour, "Ford", vehicle_type, np.random.default_rng(seed))
        night = synth.draw_vehicle(colour, "Ford", vehicle_type, np.random.default_rng(seed), unseen=["colour"])
        assert night.size == day.size
        assert _saturation(night).max() <= 40, (colour, _saturation(night).max())  # no hue to read
        assert np.asarray(night, np.float32).mean() < np.asarray(day, np.float32).mean()


@pytest.mark.parametrize("vehicle_type", VEHICLE_TYPES)
def test_omitted_type_is_a_close_crop_of_the_body_with_the_brand_inside(vehicle_type):
    for seed in range(6):
        crop = synth.draw_vehicle("red", "Kia", vehicle_type, np.random.default_rng(seed), unseen=["type"])
        w, h = crop.size
        assert 90 <= w <= 220 and 1.1 <= w / h <= 2.3
        rgb = np.asarray(crop, np.float32)
        body = np.linalg.norm(rgb - np.array(synth.COLOUR_RGB["red"]), axis=2) < 60
        # the body runs off both sides of the picture: neither end of the vehicle is in it
        assert body[:, :3].any() and body[:, -3:].any(), (vehicle_type, seed)
        assert body.mean() > 0.2, (vehicle_type, seed, body.mean())
        emblem_red = np.linalg.norm(rgb - np.array(synth.EMBLEM_RGB["red"]), axis=2) < 40
        plate = np.linalg.norm(rgb - np.array(synth._PLATE_RGB), axis=2) < 30
        assert plate.sum() > 20 and emblem_red.any()


@pytest.mark.parametrize("vehicle_type", VEHICLE_TYPES)
def test_omitted_brand_is_hidden_behind_a_barrier(vehicle_type):
    for seed in range(4):
        def picture(brand: str, unseen=("brand",)) -> np.ndarray:
            return np.asarray(synth.draw_vehicle("red", brand, vehicle_type, np.random.default_rng(seed),
                                                 unseen=list(unseen)), np.int16)
        # nothing of the brand shows: every brand gives the same picture
        hidden = [picture(brand) for brand in DEMO_BRANDS]
        assert all(np.array_equal(hidden[0], other) for other in hidden[1:]), (vehicle_type, seed)
        # the colour still does
        body = np.linalg.norm(hidden[0] - np.array(synth.COLOUR_RGB["red"]), axis=2) < 60
        assert body.mean() > 0.02, (vehicle_type, seed, body.mean())
        # with the type unseen too: a crop above the barrier, still the same for every brand, still red
        both = [picture(brand, ("brand", "type")) for brand in DEMO_BRANDS[:3]]
        assert all(np.array_equal(both[0], other) for other in both[1:])
        assert (np.linalg.norm(both[0] - np.array(synth.COLOUR_RGB["red"]), axis=2) < 60).mean() > 0.05


def _person(orientation: str, **changes: int) -> list[int]:
    bits = [0] * PEDESTRIAN_BITS
    for name in ("Male", "Age18-60", orientation, "LongSleeve", "Trousers"):
        bits[BIT[name]] = 1
    for name, value in changes.items():
        bits[BIT[name.replace("_", "&")]] = value
    return bits


TOGGLES = {
    "Hat": {"Hat": 1}, "Glasses": {"Glasses": 1}, "HandBag": {"HandBag": 1},
    "ShoulderBag": {"ShoulderBag": 1}, "Backpack": {"Backpack": 1}, "LongCoat": {"LongCoat": 1},
    "ShortSleeve": {"LongSleeve": 0, "ShortSleeve": 1}, "Shorts": {"Trousers": 0, "Shorts": 1},
    "Skirt": {"Trousers": 0, "Skirt_Dress": 1}, "UpperStride": {"UpperStride": 1},
    "UpperPlaid": {"UpperPlaid": 1}, "UpperLogo": {"UpperLogo": 1}, "Female": {"Male": 0},
    "AgeOver60": {"Age18-60": 0, "AgeOver60": 1}, "AgeLess18": {"Age18-60": 0, "AgeLess18": 1},
}


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_each_pedestrian_attribute_is_visible_at_64px(toggle):
    for orientation in ("Front", "Side", "Back"):
        if toggle == "Glasses" and orientation == "Back":
            continue
        for seed in range(3):
            plain = synth.draw_pedestrian(_person(orientation), np.random.default_rng(seed))
            changed = synth.draw_pedestrian(_person(orientation, **TOGGLES[toggle]), np.random.default_rng(seed))
            assert plain.size == changed.size
            difference = np.abs(_to64(plain) - _to64(changed))
            assert difference.mean() > 0.05, (toggle, orientation, seed, difference.mean())
            if toggle in ("Hat", "Glasses"):  # drawn on the head only
                pixels = np.abs(np.asarray(plain, np.int16) - np.asarray(changed, np.int16))
                rows = np.nonzero(pixels.max(axis=(1, 2)))[0]
                assert rows.max() < 0.3 * plain.height


def test_orientation_changes_the_figure():
    images = {o: _to64(synth.draw_pedestrian(_person(o), np.random.default_rng(7))) for o in ("Front", "Side", "Back")}
    for a, b in itertools.combinations(images, 2):
        assert np.abs(images[a] - images[b]).mean() > 0.5


# --- the test split -----------------------------------------------------------------------------

def test_test_texts_and_ground_truth(dataset):
    out, _ = dataset
    texts = (out / "test" / "test_text.txt").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(set(texts)) > 10
    gt_lines = [line.split("$") for line in
                (out / "test" / "test_ground_truth.txt").read_text(encoding="utf-8").splitlines()]
    assert [fields[0] for fields in gt_lines] == texts
    assert texts != sorted(texts)  # shuffled
    test_dir = out / "test" / "test_images"
    truth = {rel.rsplit("/", 1)[1]: entry for rel, entry in _truth(out)["images"].items()
             if rel.startswith("test/test_images/")}
    assert set(truth) == {p.name for p in test_dir.iterdir()}

    def label(entry: dict) -> str:
        if entry["category"] == "vehicle":
            parts = [None if p in entry["label_omits"] else entry[p] for p in ("colour", "brand", "type")]
            return vehicle_caption(*parts)
        return pedestrian_caption(entry["bits"])

    listed = []
    for text, *images in gt_lines:
        assert images and all((test_dir / name).is_file() for name in images)
        assert set(images) == {name for name, entry in truth.items() if label(entry) == text}
        listed.extend(images)
    assert sorted(listed) == sorted(truth)  # every test image is relevant to exactly one text
    # Some query has more than one relevant image (equal labels).
    assert any(len(fields) > 2 for fields in gt_lines)


def test_truth_file(dataset):
    out, _ = dataset
    truth = _truth(out)
    assert truth["seed"] == SEED
    for relative, entry in truth["images"].items():
        assert (out / relative).is_file()
        if entry["category"] == "vehicle":
            assert set(entry) == {"category", "colour", "brand", "type", "label_omits"}
            assert entry["colour"] in COLOURS and entry["type"] in VEHICLE_TYPES and entry["brand"] in DEMO_BRANDS
        else:
            assert set(entry) == {"category", "bits"} and len(entry["bits"]) == PEDESTRIAN_BITS


# --- bad arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(vehicles=-1, pedestrians=10),
    dict(vehicles=10, pedestrians=-5),
    dict(vehicles=2.5, pedestrians=10),
    dict(vehicles=0, pedestrians=0),
    dict(vehicles=10, pedestrians=1_000_001),   # more than 6-digit names allow
    dict(vehicles=20, pedestrians=20, seed=-1),
    dict(vehicles=20, pedestrians=20, val_fraction=-0.1),
    dict(vehicles=20, pedestrians=20, val_fraction=1.0),
    dict(vehicles=20, pedestrians=20, test_fraction=1.5),
    dict(vehicles=20, pedestrians=20, val_fraction=0.5, test_fraction=0.5),
    dict(vehicles=20, pedestrians=20, val_fraction=float("nan")),
    dict(vehicles=2, pedestrians=20),           # val and test would get no vehicle
    dict(vehicles=20, pedestrians=20, test_fraction=0.0),
])
def test_bad_arguments(tmp_path, kwargs):
    kwargs = {"seed": 1, **kwargs}
    with pytest.raises(TrafficlipError):
        synth.generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_one_category_only(tmp_path):
    summary = synth.generate(tmp_path, 0, 10, 4)
    assert all(s["vehicle"] == 0 and s["pedestrian"] > 0 for s in summary["splits"].values())
