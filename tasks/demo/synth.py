"""The deterministic synthetic demo dataset, written in the CVPR 2023 Foundation Model Challenge
Track 2 format (see docs/data-format.md).

``generate(out, vehicles, pedestrians, seed)`` draws vehicles and pedestrians with PIL and writes::

    OUT/train/train_label.txt        image$attribute$text
    OUT/train/train_images/*.jpg
    OUT/val/val_label.txt
    OUT/val/val_images/*.jpg
    OUT/test/test_text.txt           one query text per line
    OUT/test/test_images/*.jpg
    OUT/test/test_ground_truth.txt   text$img1$img2$... (every relevant test image)
    OUT/synth_truth.json             the true attributes of every image

This module holds the dataset: the checks of the arguments, the split sizes, the names, and the
drawing and writing of every item. What is drawn lives beside it:

    tasks/demo/vehicles.py      vehicle attributes and labels, ``draw_vehicle`` (colour, type and
                                brand visible; a label leaves out only what the picture hides)
    tasks/demo/pedestrians.py   pedestrian attribute bits, ``draw_pedestrian`` (all 21 visible)
    tasks/demo/drawing.py       colours, the cluttered background, distractors, noise and JPEG

Every attribute is drawn visibly so that a tiny CLIP model can learn it, and backgrounds are cluttered
and random so that they never give an answer away.

The output is byte-identical for the same arguments: every random choice comes from numpy Generators
seeded from ``seed`` (one per image), JPEGs use a fixed quality and no metadata.

The attribute sampling is separate from the drawing (``sample_vehicle_attributes``,
``sample_pedestrian_bits``) so that its frequencies can be checked without drawing anything. The
names of those modules that other code uses are importable from here too.
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from tasks.core.atomic import write_bytes, write_json, write_text
from tasks.core.errors import UserError
from tasks.core.labels import CATEGORIES
from tasks.core.vocab import pedestrian_caption
from tasks.demo.drawing import JPEG_QUALITY, finish
from tasks.demo.pedestrians import PEDESTRIAN_TARGETS, draw_pedestrian, sample_pedestrian_bits
from tasks.demo.vehicles import (
    _PLATE_RGB,
    BRAND_EMBLEMS,
    BRAND_TRIMS,
    COLOUR_RGB,
    EMBLEM_RGB,
    TRIM_RGB,
    VEHICLE_OMIT_P,
    VEHICLE_PARTS,
    draw_vehicle,
    sample_vehicle_attributes,
    vehicle_label,
)

__all__ = [
    "BRAND_EMBLEMS", "BRAND_TRIMS", "COLOUR_RGB", "EMBLEM_RGB", "JPEG_QUALITY", "PEDESTRIAN_TARGETS", "SPLITS",
    "TRIM_RGB", "VEHICLE_OMIT_P", "VEHICLE_PARTS", "_PLATE_RGB", "draw_pedestrian", "draw_vehicle", "generate",
    "sample_pedestrian_bits", "sample_vehicle_attributes", "split_sizes", "vehicle_label",
]

SPLITS = ("train", "val", "test")


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise UserError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise UserError(f"{name} must not be negative, got {value}")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise UserError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise UserError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def split_sizes(count: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many of ``count`` items go to train, val and test (val and test rounded half up)."""
    val = int(math.floor(count * val_fraction + 0.5))
    test = int(math.floor(count * test_fraction + 0.5))
    return {"train": count - val - test, "val": val, "test": test}


def _random_name(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        name = "".join(chr(ord("a") + int(k)) for k in rng.integers(0, 26, 10))
        if name not in taken:
            taken.add(name)
            return name


def _remove_old(out: Path) -> None:
    for name in (*SPLITS, "synth_truth.json"):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _render(item: dict) -> tuple[bytes, dict]:
    """The JPEG bytes of one sampled item and its synth_truth.json entry."""
    draw_rng = np.random.default_rng(item["draw_seed"])
    if item["category"] == "vehicle":
        a = item["attributes"]
        image = draw_vehicle(a["colour"], a["brand"], a["type"], draw_rng, unseen=a["label_omits"])
        entry = {"category": "vehicle", "colour": a["colour"], "brand": a["brand"], "type": a["type"],
                 "label_omits": list(a["label_omits"])}
    else:
        image = draw_pedestrian(item["bits"], draw_rng)
        entry = {"category": "pedestrian", "bits": list(item["bits"])}
    return finish(image, draw_rng), entry


def _drain(pending: list[Future], keep: int) -> None:
    """Wait for the oldest writes until at most ``keep`` are left; re-raise any failure."""
    while len(pending) > keep:
        pending.pop(0).result()


def generate(out: str | Path, vehicles: int, pedestrians: int, seed: int,
             val_fraction: float = 0.2, test_fraction: float = 0.2) -> dict:
    """Write the demo dataset under out; return a summary dict:
    {"out": str, "seed": int, "splits": {"train": {"vehicle": n, "pedestrian": m}, "val": {...}, "test": {...}},
     "test_queries": int}"""
    vehicles = _check_count("vehicles", vehicles)
    pedestrians = _check_count("pedestrians", pedestrians)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise UserError(f"seed must be a non-negative whole number, got {seed!r}")
    seed = int(seed)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"val_fraction + test_fraction must be below 1 so that train gets images, "
                              f"got {val_fraction} + {test_fraction}")
    if vehicles + pedestrians == 0:
        raise UserError("nothing to generate: vehicles and pedestrians are both 0")
    if pedestrians > 1_000_000:
        raise UserError(f"pedestrians must be at most 1000000 (their names are unique 6-digit "
                              f"numbers), got {pedestrians}")
    sizes = {"vehicle": split_sizes(vehicles, val_fraction, test_fraction),
             "pedestrian": split_sizes(pedestrians, val_fraction, test_fraction)}
    for category, count in (("vehicle", vehicles), ("pedestrian", pedestrians)):
        empty = [split for split in SPLITS if sizes[category][split] <= 0]
        if count > 0 and empty:
            raise UserError(
                f"{count} {category} image(s) with val_fraction={val_fraction} and test_fraction="
                f"{test_fraction} leave the {', '.join(empty)} split(s) without any {category}: "
                f"give more {category}s or other fractions (every split needs at least one of each "
                f"category that is generated)")

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    rng = np.random.default_rng([seed, 0x5EED])

    # Sample every item's attributes, name and split.
    items: list[dict] = []
    names: set[str] = set()
    for _ in range(vehicles):
        attributes = sample_vehicle_attributes(rng)
        phrase, text = vehicle_label(attributes)
        file_name = _random_name(rng, names) + ".jpg"
        items.append({"category": "vehicle", "attributes": attributes, "file": file_name,
                      "label_name": file_name, "attribute": phrase, "text": text,
                      "draw_seed": int(rng.integers(2 ** 63))})
    numbers = rng.choice(1_000_000, size=pedestrians, replace=False) if pedestrians else []
    for number in numbers:
        bits = sample_pedestrian_bits(rng)
        stem = f"{int(number):06d}"
        items.append({"category": "pedestrian", "bits": bits, "file": stem + ".jpg", "label_name": stem,
                      "attribute": ",".join(str(b) for b in bits), "text": pedestrian_caption(bits),
                      "draw_seed": int(rng.integers(2 ** 63))})
    by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for category in CATEGORIES:
        pool = [item for item in items if item["category"] == category]
        order = rng.permutation(len(pool))
        start = 0
        for split in SPLITS:
            chosen = [pool[int(i)] for i in order[start:start + sizes[category][split]]]
            start += sizes[category][split]
            by_split[split].extend(chosen)
    for split in SPLITS:
        order = rng.permutation(len(by_split[split]))
        by_split[split] = [by_split[split][int(i)] for i in order]

    # Draw and write.
    out.mkdir(parents=True, exist_ok=True)
    _remove_old(out)
    truth: dict[str, dict] = {}
    # Drawing is CPU-bound; the atomic writes (each fsynced) mostly wait on the disk, so they run
    # in a few threads alongside the drawing.
    with ThreadPoolExecutor(max_workers=4) as writers:
        pending = []
        for split in SPLITS:
            image_dir = out / split / f"{split}_images"
            image_dir.mkdir(parents=True, exist_ok=True)
            for item in by_split[split]:
                data, truth_entry = _render(item)
                pending.append(writers.submit(write_bytes, image_dir / item["file"], data))
                truth[f"{split}/{split}_images/{item['file']}"] = truth_entry
                if len(pending) >= 64:
                    _drain(pending, keep=16)
            if split != "test":
                lines = [f"{item['label_name']}${item['attribute']}${item['text']}\n" for item in by_split[split]]
                pending.append(writers.submit(write_text, out / split / f"{split}_label.txt", "".join(lines)))
        _drain(pending, keep=0)

    # Test queries: the distinct texts of the test images, shuffled; every relevant image per text.
    groups: dict[str, list[str]] = {}
    for item in by_split["test"]:
        groups.setdefault(item["text"], []).append(item["file"])
    texts = sorted(groups)
    texts = [texts[int(i)] for i in rng.permutation(len(texts))]
    write_text(out / "test" / "test_text.txt", "".join(text + "\n" for text in texts))
    write_text(out / "test" / "test_ground_truth.txt",
               "".join("$".join([text, *sorted(groups[text])]) + "\n" for text in texts))

    write_json(out / "synth_truth.json", {"seed": seed, "images": dict(sorted(truth.items()))})
    return {
        "out": str(out),
        "seed": seed,
        "splits": {split: {category: sum(1 for item in by_split[split] if item["category"] == category)
                           for category in CATEGORIES} for split in SPLITS},
        "test_queries": len(texts),
    }
