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

Every attribute is drawn visibly so that a tiny CLIP model can learn it: vehicles show their colour
(the body), type (a silhouette per type) and brand, twice: a small emblem of a unique shape and colour
on a light plate at the middle of the body, as a real logo, and a trim along the body side (line,
double line, band or dashes in chrome, black or gold; a unique pair per brand), standing in for the
design language by which one tells a real brand at surveillance resolution. With the emblem alone,
the demo model never learned brands (docs/training.md). Pedestrians show all 21 attributes (hair,
face, sleeves, patterns, lower garment, coat, hat, glasses and bags). Backgrounds are cluttered and
random so that they never give an answer away.

A label leaves a part out because the picture does not show it, as an annotator would: a caption
without a colour goes with an infrared night shot (monochrome), one without a type with a close crop
of the middle of the body, one without a brand with a vehicle whose lower body (emblem, trim, wheels)
is behind a roadside barrier. Under the organisers' rule such a query is relevant only to images
labelled with the same omission, so the omission has to be something one can see.

The output is byte-identical for the same arguments: every random choice comes from numpy Generators
seeded from ``seed`` (one per image), JPEGs use a fixed quality and no metadata.

The attribute sampling is separate from the drawing (``sample_vehicle_attributes``,
``sample_pedestrian_bits``) so that its frequencies can be checked without drawing anything.
"""

from __future__ import annotations

import colorsys
import io
import math
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from numbers import Integral, Real
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from tasks.atomic import write_bytes, write_json, write_text
from tasks.errors import TrafficlipError
from tasks.vocab import (AGE_BITS, BIT, CARRIED_BITS, COLOURS, DEMO_BRANDS, GENDER_BIT, LOWER_BITS,
                         ORIENTATION_BITS, PEDESTRIAN_BITS, SLEEVE_BITS, UPPER_PATTERN_BITS,
                         VEHICLE_TYPES, pedestrian_caption, vehicle_caption, vehicle_phrase)

JPEG_QUALITY = 90
SPLITS = ("train", "val", "test")
VEHICLE_PARTS = ("colour", "brand", "type")

# ---------------------------------------------------------------------------------------------
# Attribute sampling (no drawing)
# ---------------------------------------------------------------------------------------------

# Chance that a vehicle label leaves a part out (as in the real data); never all three at once.
VEHICLE_OMIT_P = {"colour": 0.12, "brand": 0.05, "type": 0.12}

# Marginal frequencies of the pedestrian bits (PA-100k-like); the tests check the sampler against
# these. Lower-garment frequencies depend on gender (skirts mostly for women), see below.
PEDESTRIAN_TARGETS = {
    "Male": 0.55, "AgeLess18": 0.05, "Age18-60": 0.90, "AgeOver60": 0.05,
    "Front": 0.35, "Side": 0.30, "Back": 0.35, "LongSleeve": 0.60, "ShortSleeve": 0.40,
    "LongCoat": 0.05, "Trousers": 0.65, "Shorts": 0.18, "Skirt&Dress": 0.17,
    "UpperStride": 0.06, "UpperLogo": 0.14, "UpperPlaid": 0.09, "Hat": 0.05, "Glasses": 0.18,
    "HandBag": 0.15, "ShoulderBag": 0.18, "Backpack": 0.16,
}
_LOWER_P = {True: (0.77, 0.185, 0.045), False: (0.50, 0.18, 0.32)}  # male / female: T, S, Skirt
_PATTERN_P = (0.06, 0.14, 0.09)  # stripes, logo, plaid: at most one per shirt
# Glasses cannot be seen from the back, so they are only given to front and side views, at the
# rate that keeps their overall frequency at the target.
_GLASSES_P_VISIBLE = PEDESTRIAN_TARGETS["Glasses"] / (1.0 - PEDESTRIAN_TARGETS["Back"])


def _pick(rng: np.random.Generator, probabilities: Sequence[float]) -> int:
    """Index drawn from ``probabilities`` (they may sum to less than 1: the rest means -1)."""
    x = rng.random()
    for index, p in enumerate(probabilities):
        if x < p:
            return index
        x -= p
    return -1


def sample_vehicle_attributes(rng: np.random.Generator) -> dict:
    """Colour, brand and type (uniform) and the parts the label leaves out.

    Returns ``{"colour": str, "brand": str, "type": str, "label_omits": [part, ...]}``.
    """
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    brand = DEMO_BRANDS[int(rng.integers(len(DEMO_BRANDS)))]
    vehicle_type = VEHICLE_TYPES[int(rng.integers(len(VEHICLE_TYPES)))]
    while True:
        omits = [part for part in VEHICLE_PARTS if rng.random() < VEHICLE_OMIT_P[part]]
        if len(omits) < len(VEHICLE_PARTS):
            break
    return {"colour": colour, "brand": brand, "type": vehicle_type, "label_omits": omits}


def vehicle_label(attributes: dict) -> tuple[str, str]:
    """(attribute phrase, caption) of a vehicle as its label writes it (omitted parts left out)."""
    parts = [None if part in attributes["label_omits"] else attributes[part] for part in VEHICLE_PARTS]
    return vehicle_phrase(*parts), vehicle_caption(*parts)


def sample_pedestrian_bits(rng: np.random.Generator) -> list[int]:
    """A 21-bit pedestrian attribute vector with realistic (PA-100k-like) frequencies.

    Age, orientation, sleeve and lower garment are one-hot; at most one upper pattern.
    """
    bits = [0] * PEDESTRIAN_BITS
    male = rng.random() < PEDESTRIAN_TARGETS["Male"]
    bits[GENDER_BIT] = int(male)
    bits[AGE_BITS[_pick(rng, (0.05, 0.90, 0.05))]] = 1
    orientation = _pick(rng, (0.35, 0.30, 0.35))
    bits[ORIENTATION_BITS[orientation]] = 1
    bits[SLEEVE_BITS[0 if rng.random() < 0.60 else 1]] = 1
    bits[LOWER_BITS[_pick(rng, _LOWER_P[male])]] = 1
    bits[BIT["LongCoat"]] = int(rng.random() < PEDESTRIAN_TARGETS["LongCoat"])
    pattern = _pick(rng, _PATTERN_P)
    if pattern >= 0:
        bits[UPPER_PATTERN_BITS[pattern]] = 1
    bits[BIT["Hat"]] = int(rng.random() < PEDESTRIAN_TARGETS["Hat"])
    glasses = rng.random() < _GLASSES_P_VISIBLE
    bits[BIT["Glasses"]] = int(glasses and ORIENTATION_BITS[orientation] != BIT["Back"])
    for bit in CARRIED_BITS:
        name = next(n for n, i in BIT.items() if i == bit)
        bits[bit] = int(rng.random() < PEDESTRIAN_TARGETS[name])
    return bits


# ---------------------------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------------------------

RGB = tuple[int, int, int]

# Body colour prototypes, chosen to stay apart for a small network (grey / white / black,
# brown / orange, pink / purple / red).
COLOUR_RGB: dict[str, RGB] = {
    "black": (24, 24, 27), "blue": (28, 68, 205), "brown": (112, 66, 30), "green": (30, 142, 48),
    "grey": (128, 128, 130), "orange": (248, 134, 18), "pink": (250, 148, 192),
    "purple": (118, 38, 162), "red": (208, 24, 28), "white": (240, 240, 238),
    "yellow": (246, 214, 30),
}

# Brand emblems: unique (shape, colour). Two brands share each colour, one with a solid shape and
# one with a line shape, so that they stay apart even where the shape itself is only a few pixels.
BRAND_EMBLEMS: dict[str, tuple[str, str]] = {
    "Audi": ("ring", "black"), "Honda": ("square", "black"),
    "Ford": ("bars", "blue"), "BMW": ("circle", "blue"),
    "Kia": ("x", "red"), "Buick": ("triangle", "red"),
    "Nissan": ("cross", "green"), "Hyundai": ("diamond", "green"),
    "Chevrolet": ("chevron", "orange"), "Volkswagen": ("star", "orange"),
    "Toyota": ("frame", "purple"), "Mazda": ("two circles", "purple"),
}
EMBLEM_RGB: dict[str, RGB] = {
    "black": (18, 18, 18), "blue": (16, 56, 235), "red": (225, 16, 16), "green": (0, 165, 40),
    "orange": (255, 128, 0), "purple": (150, 24, 200),
}
# Brand trims: each brand's design language along the body side (pattern, tone), unique per brand,
# so that a brand shows at the scale of the whole vehicle as well as in its small emblem.
BRAND_TRIMS: dict[str, tuple[str, str]] = {
    "Audi": ("line", "chrome"), "Honda": ("band", "black"),
    "Ford": ("double", "chrome"), "BMW": ("dashes", "black"),
    "Kia": ("band", "chrome"), "Buick": ("line", "gold"),
    "Nissan": ("dashes", "chrome"), "Hyundai": ("double", "gold"),
    "Chevrolet": ("band", "gold"), "Volkswagen": ("double", "black"),
    "Toyota": ("dashes", "gold"), "Mazda": ("line", "black"),
}
TRIM_RGB: dict[str, RGB] = {"chrome": (236, 238, 240), "black": (14, 14, 16), "gold": (212, 168, 36)}
_PLATE_RGB = (236, 236, 228)
_GLASS_RGB = (58, 72, 92)
_TYRE_RGB = (28, 28, 30)

_SKIN_TONES: tuple[RGB, ...] = ((255, 224, 196), (241, 194, 160), (224, 172, 118), (198, 138, 84),
                                (150, 98, 56), (104, 66, 40))
_DARK_HAIR: tuple[RGB, ...] = ((20, 16, 12), (46, 30, 20), (72, 46, 26), (96, 62, 32), (32, 32, 36))


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5))


def _clip(value: float) -> int:
    return int(min(255, max(0, round(value))))


def _scale(rgb: Sequence[int], factor: float) -> RGB:
    return (_clip(rgb[0] * factor), _clip(rgb[1] * factor), _clip(rgb[2] * factor))


def _jitter(rgb: Sequence[int], rng: np.random.Generator, spread: float = 0.1, channel: float = 7.0) -> RGB:
    factor = rng.uniform(1 - spread, 1 + spread)
    noise = rng.uniform(-channel, channel, 3)
    return (_clip(rgb[0] * factor + noise[0]), _clip(rgb[1] * factor + noise[1]),
            _clip(rgb[2] * factor + noise[2]))


def _distance(a: Sequence[int], b: Sequence[int]) -> float:
    return math.sqrt(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b)))


def _random_colour(rng: np.random.Generator) -> RGB:
    """A clothing / distractor colour: saturated or neutral, any hue."""
    if rng.random() < 0.3:
        return _hsv(rng.random(), rng.uniform(0.0, 0.08), rng.uniform(0.08, 0.95))
    return _hsv(rng.random(), rng.uniform(0.3, 0.95), rng.uniform(0.25, 0.95))


def _colour_apart(rng: np.random.Generator, avoid: Sequence[Sequence[int]], min_distance: float,
                  sampler=_random_colour) -> RGB:
    colour = sampler(rng)
    for _ in range(30):
        if all(_distance(colour, other) >= min_distance for other in avoid):
            break
        colour = sampler(rng)
    return colour


def _background(rng: np.random.Generator, width: int, height: int, horizon: float) -> Image.Image:
    """A scene: a random-hue upper part, a road/pavement lower part, a gradient and blotches."""
    upper = np.array(_hsv(rng.random(), rng.uniform(0.05, 0.65), rng.uniform(0.3, 0.92)), np.float32)
    lower = np.array(_hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.7)), np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None]
    column = np.where(rows < int(height * horizon), upper[None, :], lower[None, :])  # (H, 3)
    column = column * (1.0 + rng.uniform(-0.25, 0.25) * (rows / max(1, height) - 0.5))
    column = np.clip(column + 0.5, 0, 255).astype(np.uint8)[:, None, :]
    base = Image.fromarray(column, "RGB").resize((width, height), Image.NEAREST)
    grid = rng.integers(0, 256, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3), dtype=np.uint8)
    blotches = Image.fromarray(grid, "RGB").resize((width, height), Image.BILINEAR)
    return Image.blend(base, blotches, float(rng.uniform(0.15, 0.45)))


def _distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
                 count: int, max_size: float = 0.35) -> None:
    """Random shapes and lines: clutter in which no shape or colour means anything."""
    for _ in range(count):
        kind = int(rng.integers(5))
        colour = _random_colour(rng)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        w = rng.uniform(0.04, max_size) * width
        h = rng.uniform(0.04, max_size) * height
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        elif kind == 2:
            draw.line((rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, width),
                       rng.uniform(0, height)), fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 3:
            draw.polygon([(cx + rng.uniform(-w, w), cy + rng.uniform(-h, h)) for _ in range(3)],
                         fill=colour)
        else:  # a pole / post
            pw = max(1.0, rng.uniform(0.01, 0.05) * width)
            draw.rectangle((cx - pw, rng.uniform(0, height * 0.5), cx + pw, height), fill=colour)


def _finish(image: Image.Image, rng: np.random.Generator) -> bytes:
    """Add sensor noise to the drawing and encode it as a JPEG (fixed quality, no metadata)."""
    array = np.asarray(image, np.int16)
    spread = int(rng.integers(4, 12))
    array = array + rng.integers(-spread, spread + 1, array.shape, dtype=np.int16)
    out = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Vehicles
# ---------------------------------------------------------------------------------------------

def _rect(u0: float, v0: float, u1: float, v1: float) -> list[tuple[float, float]]:
    return [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]


def _vehicle_shape(vehicle_type: str, rng: np.random.Generator) -> dict:
    """The silhouette of a type in body units: u along the length (0 = front), v up (0 = ground).

    ``ratio`` is height / length; ``aspect`` the image's width / height range.
    """
    j = lambda: rng.uniform(-0.025, 0.025)  # noqa: E731 - small jitter of proportions
    if vehicle_type == "Bus":
        wr = 0.12 + j() / 3
        n = int(rng.integers(6, 9))
        step = 0.82 / n
        windows = [_rect(0.15 + k * step, 0.56, 0.15 + k * step + step * 0.78, 0.88) for k in range(n)]
        windows += [_rect(0.008, 0.46, 0.05, 0.9), _rect(0.075, 0.2, 0.125, 0.88)]
        return dict(ratio=0.36, aspect=(1.85, 2.2), body=[_rect(0, wr * 0.9, 1, 1)], cargo=[],
                    windows=windows, wheels=[(0.17, wr), (0.83, wr)], emblem=(0.5 + j(), 0.34),
                    band=(wr * 0.9, 0.52), dark=[])
    if vehicle_type == "Microbus":
        wr = 0.12
        body = [[(0, wr), (1, wr), (1, 0.97), (0.24 + j(), 0.97), (0.02, 0.6), (0, 0.52)]]
        windows = [[(0.05, 0.61), (0.21, 0.9), (0.27, 0.9), (0.27, 0.61)],
                   _rect(0.32, 0.61, 0.5, 0.9), _rect(0.54, 0.61, 0.72, 0.9), _rect(0.76, 0.61, 0.95, 0.9)]
        return dict(ratio=0.6, aspect=(1.2, 1.5), body=body, cargo=[], windows=windows,
                    wheels=[(0.18, wr), (0.83, wr)], emblem=(0.55 + j(), 0.36), band=(wr, 0.56), dark=[])
    if vehicle_type == "Minivan":
        wr = 0.14
        lower = [(0, wr), (0, 0.45), (0.04, 0.52), (1, 0.52), (1, wr)]
        cabin = [(0.06, 0.52), (0.3 + j(), 0.92), (0.97, 0.92), (1, 0.52)]
        windows = [[(0.11, 0.555), (0.3, 0.88), (0.37, 0.88), (0.37, 0.555)],
                   _rect(0.41, 0.56, 0.6, 0.88), _rect(0.63, 0.56, 0.8, 0.88), _rect(0.83, 0.56, 0.96, 0.88)]
        return dict(ratio=0.46, aspect=(1.3, 1.65), body=[lower, cabin], cargo=[], windows=windows,
                    wheels=[(0.17, wr), (0.82, wr)], emblem=(0.55 + j(), 0.33), band=(wr, 0.5), dark=[])
    if vehicle_type == "SUV":
        wr = 0.19
        lower = [(0, wr + 0.02), (0, 0.56), (0.02, 0.6), (1, 0.6), (1, wr + 0.02)]
        cabin = [(0.2, 0.6), (0.3 + j(), 0.98), (0.985, 0.98), (1, 0.6)]
        windows = [[(0.245, 0.64), (0.32, 0.94), (0.6, 0.94), (0.6, 0.64)], _rect(0.64, 0.64, 0.95, 0.94)]
        dark = [_rect(0.3, 0.98, 0.95, 1.02)]
        return dict(ratio=0.54, aspect=(1.2, 1.5), body=[lower, cabin], cargo=[], windows=windows,
                    wheels=[(0.19, wr), (0.81, wr)], emblem=(0.55 + j(), 0.41), band=(wr + 0.02, 0.58),
                    dark=dark, arches=True)
    if vehicle_type == "Sedan":
        wr = 0.15
        lower = [(0, wr), (0, 0.48), (0.03, 0.54), (0.28, 0.58), (0.74, 0.58), (0.98, 0.55), (1, 0.48), (1, wr)]
        cabin = [(0.24, 0.58), (0.38 + j(), 0.96), (0.66 + j(), 0.96), (0.8, 0.58)]
        windows = [[(0.3, 0.615), (0.4, 0.92), (0.51, 0.92), (0.51, 0.615)],
                   [(0.54, 0.615), (0.54, 0.92), (0.64, 0.92), (0.74, 0.615)]]
        return dict(ratio=0.38, aspect=(1.3, 1.65), body=[lower, cabin], cargo=[], windows=windows,
                    wheels=[(0.19, wr), (0.81, wr)], emblem=(0.5 + j(), 0.37), band=(wr, 0.54), dark=[])
    if vehicle_type == "Truck":
        wr = 0.12
        cab = [(0, wr + 0.02), (0, 0.62), (0.05, 0.84), (0.26, 0.84), (0.26, wr + 0.02)]
        cargo = [_rect(0.29, wr + 0.07, 1, 1)]
        windows = [[(0.04, 0.58), (0.075, 0.78), (0.22, 0.78), (0.22, 0.58)]]
        dark = [_rect(0, wr * 0.8, 1, wr + 0.08)]
        return dict(ratio=0.47, aspect=(1.7, 2.2), body=[cab], cargo=cargo, windows=windows,
                    wheels=[(0.13, wr), (0.7, wr), (0.86, wr)], emblem=(0.645 + j(), 0.56),
                    band=(wr + 0.02, 0.5), dark=dark)
    raise ValueError(f"unknown vehicle type {vehicle_type!r}")


def _draw_emblem(draw: ImageDraw.ImageDraw, shape: str, colour: RGB, cx: float, cy: float,
                 size: float) -> None:
    r = size / 2
    line = max(2, int(round(size * 0.22)))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=line)
    elif shape == "square":
        q = r * 0.85
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=colour)
    elif shape == "frame":
        q = r * 0.9
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), outline=colour, width=line)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        t = size * 0.16
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=colour)
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=colour)
    elif shape == "x":
        q = r * 0.8
        draw.line((cx - q, cy - q, cx + q, cy + q), fill=colour, width=line)
        draw.line((cx - q, cy + q, cx + q, cy - q), fill=colour, width=line)
    elif shape == "bars":
        t = size * 0.1
        for dy in (-r * 0.66, 0.0, r * 0.66):
            draw.rectangle((cx - r, cy + dy - t, cx + r, cy + dy + t), fill=colour)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    elif shape == "two circles":
        q = r * 0.55
        draw.ellipse((cx - r, cy - q, cx - r + 2 * q, cy + q), fill=colour)
        draw.ellipse((cx + r - 2 * q, cy - q, cx + r, cy + q), fill=colour)
    elif shape == "chevron":
        q = r * 0.85
        draw.line((cx - q, cy - q * 0.7, cx, cy + q * 0.6, cx + q, cy - q * 0.7), fill=colour,
                  width=line, joint="curve")
    else:
        raise ValueError(f"unknown emblem shape {shape!r}")


def _draw_trim(draw: ImageDraw.ImageDraw, at, trim: tuple[str, str], v_low: float, v_high: float,
               rng: np.random.Generator) -> float:
    """The brand's trim along the lower body: a line, a double line, a broad band or dashes.
    Returns the trim's top (body units)."""
    pattern, tone = trim
    colour = _jitter(TRIM_RGB[tone], rng, spread=0.06, channel=5)
    edge = _scale(colour, 0.45) if tone != "black" else (150, 150, 154)
    v_mid = (v_low + v_high) / 2 + rng.uniform(-0.02, 0.02)
    u0, u1 = 0.03, 0.975  # along cab and cargo box alike
    thickness = {"line": 0.07, "double": 0.05, "band": 0.12, "dashes": 0.09}[pattern]

    def stripe(v: float, ua: float, ub: float, t: float) -> None:
        x0, y0 = at(ua, v + t / 2)
        x1, y1 = at(ub, v - t / 2)
        draw.rectangle((x0, y0, x1, y1), fill=colour, outline=edge)

    if pattern == "double":
        for dv in (-0.06, 0.06):
            stripe(v_mid + dv, u0, u1, thickness)
    elif pattern == "dashes":
        n = 6
        step = (u1 - u0) / n
        for k in range(n):
            stripe(v_mid, u0 + k * step, u0 + k * step + step * 0.55, thickness)
    else:
        stripe(v_mid, u0, u1, thickness)
    return v_mid + thickness / 2 + (0.06 if pattern == "double" else 0.0)


def draw_vehicle(colour: str, brand: str, vehicle_type: str, rng: np.random.Generator,
                 unseen: Sequence[str] = ()) -> Image.Image:
    """A side view of a vehicle on a cluttered road scene; wider than tall.

    ``unseen`` lists the parts the picture does not let one tell (why a label omits them):
    ``colour``: a night shot of an infrared camera (monochrome, dark); ``type``: a close crop of the
    middle of the body (no roof line, no ends); ``brand``: a roadside barrier hides the lower body
    (emblem, trim and wheels). Everything is drawn first, so the random stream, and with it the rest
    of the picture, is the same whatever is unseen.
    """
    shape = _vehicle_shape(vehicle_type, rng)
    width = int(rng.integers(90, 221))
    height = max(40, int(round(width / rng.uniform(*shape["aspect"]))))
    image = _background(rng, width, height, rng.uniform(0.3, 0.65))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.6:  # lane markings
        y = rng.uniform(0.7, 0.98) * height
        mark = (230, 230, 225) if rng.random() < 0.6 else (230, 200, 40)
        dash = rng.uniform(0.08, 0.2) * width
        x = rng.uniform(-dash, 0)
        while x < width:
            draw.line((x, y, x + dash, y), fill=mark, width=int(rng.integers(1, 4)))
            x += dash * 2
    _distractors(draw, rng, width, height, int(rng.integers(4, 10)))

    ratio = shape["ratio"] * rng.uniform(0.93, 1.07)
    length = width * rng.uniform(0.84, 0.95)
    body_height = length * ratio
    if body_height > 0.85 * height:
        body_height = 0.85 * height
        length = body_height / ratio
    x0 = (width - length) / 2 + rng.uniform(-0.04, 0.04) * width
    x0 = min(max(1.0, x0), width - length - 1.0)
    ground = height - (height - body_height) * rng.uniform(0.1, 0.6)

    def at(u: float, v: float) -> tuple[float, float]:
        return (x0 + u * length, ground - v * body_height)

    def poly(points) -> list[tuple[float, float]]:
        return [at(u, v) for u, v in points]

    base = _jitter(COLOUR_RGB[colour], rng, spread=0.08, channel=6)
    # A soft shadow under the vehicle.
    draw.ellipse((*at(-0.02, 0.05), *at(1.02, -0.05)), fill=_scale(_random_colour(rng), 0.25))
    for points in shape["dark"]:
        draw.polygon(poly(points), fill=(40, 40, 44))
    for points in shape["body"]:
        draw.polygon(poly(points), fill=base)
    for points in shape["cargo"]:
        draw.polygon(poly(points), fill=base)
        u0, v0 = points[0]
        u1, v1 = points[2]
        for k in range(1, 5):  # panel seams
            u = u0 + (u1 - u0) * k / 5
            draw.line((*at(u, v0 + 0.03), *at(u, v1 - 0.03)), fill=_scale(base, 0.78), width=1)
    # Mild shading of the lower body: a highlight line and a darker rocker panel.
    v_low, v_high = shape["band"]
    stroke = max(1, int(round(body_height * 0.05)))
    u_end = 0.26 if shape["cargo"] else 0.985
    draw.line((*at(0.015, v_high - 0.08), *at(u_end, v_high - 0.08)), fill=_scale(base, 1.18), width=stroke)
    draw.rectangle((*at(0.01, v_low + 0.08), *at(u_end, v_low)), fill=_scale(base, 0.78))
    trim_top = _draw_trim(draw, at, BRAND_TRIMS[brand], v_low, v_high, rng)
    glass = _jitter(_GLASS_RGB, rng, spread=0.15, channel=6)
    for points in shape["windows"]:
        draw.polygon(poly(points), fill=glass)
    draw.rectangle((*at(0.0, 0.42), *at(0.025, 0.36)), fill=(250, 240, 190))  # headlight

    emblem_shape, emblem_colour = BRAND_EMBLEMS[brand]
    # About a quarter of the body height; low, long bodies (sedan, bus) get a little more so that
    # the emblem keeps a few pixels at 64 px input.
    plate = max(body_height * 0.25, length * 0.105) * rng.uniform(0.93, 1.07)
    eu, ev = shape["emblem"]
    ex, ey = at(eu, ev + rng.uniform(-0.02, 0.02))
    draw.rounded_rectangle((ex - plate / 2, ey - plate / 2, ex + plate / 2, ey + plate / 2),
                           radius=plate * 0.15, fill=_PLATE_RGB, outline=(60, 60, 60), width=1)
    _draw_emblem(draw, emblem_shape, EMBLEM_RGB[emblem_colour], ex, ey, plate * 0.78)

    rim = _jitter((170, 172, 176), rng, spread=0.1, channel=5)
    for u, r in shape["wheels"]:
        cx, cy = at(u, r)
        radius = r * body_height
        if shape.get("arches"):
            arch = radius * 1.18
            draw.ellipse((cx - arch, cy - arch, cx + arch, cy + arch), fill=(36, 36, 40))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=_TYRE_RGB)
        inner = radius * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=rim)
        hub = radius * 0.18
        draw.ellipse((cx - hub, cy - hub, cx + hub, cy + hub), fill=(60, 60, 64))
    if "brand" in unseen:
        _behind_barrier(draw, width, height, min(ey - plate / 2, at(0, trim_top)[1]) - 0.04 * body_height, rng)
    if "type" in unseen:
        image = _close_crop(image, at, eu, body_height, length, rng, upper="brand" in unseen)
    if "colour" in unseen:
        image = _infrared_night(image, rng)
    return image


def _close_crop(image: Image.Image, at, emblem_u: float, body_height: float, length: float,
                rng: np.random.Generator, upper: bool = False) -> Image.Image:
    """The middle of the body only, as a detector crops a vehicle too near the camera: the ends and
    the roof line that tell a type apart are outside the picture; the emblem and trim are inside.
    Returned at an ordinary vehicle picture's size and an aspect ratio of 1.3 to 2.1. ``upper``: the
    band above a barrier instead (the brand hidden too)."""
    v0, v1 = rng.uniform(0.0, 0.06), rng.uniform(0.7, 0.76)
    if upper:
        v0, v1 = v0 + 0.66, v1 + 0.24
    crop_height = (v1 - v0) * body_height
    crop_length = min(crop_height * rng.uniform(1.3, 2.1), 0.6 * length) / length
    u_mid = min(max(emblem_u + rng.uniform(-0.04, 0.04), 0.2 + crop_length / 2), 0.8 - crop_length / 2)
    (x0, y1), (x1, y0) = at(u_mid - crop_length / 2, v0), at(u_mid + crop_length / 2, v1)
    crop = image.crop(tuple(int(round(c)) for c in (x0, y0, x1, y1)))
    width = int(rng.integers(90, 221))
    return crop.resize((width, max(40, round(width * crop.height / max(1, crop.width)))), Image.BILINEAR)


def _behind_barrier(draw: ImageDraw.ImageDraw, width: int, height: int, top: float,
                    rng: np.random.Generator) -> None:
    """A roadside barrier in front of the lower body, up to ``top`` (pixels): the emblem, the trim and
    the wheels are behind it; the roof line, the windows and the upper body's colour show."""
    colour = _jitter(((150, 150, 146), (46, 96, 44), (120, 118, 112))[int(rng.integers(3))], rng, 0.15, 8)
    draw.rectangle((0, top, width, height), fill=colour)
    for k in range(int(rng.integers(2, 5))):   # seams, rails or leaves: texture without meaning
        y = top + (height - top) * (k + rng.uniform(0.2, 0.8)) / 4
        draw.line((0, y, width, y), fill=_scale(colour, rng.uniform(0.6, 0.85)), width=int(rng.integers(1, 3)))
    draw.line((0, top, width, top), fill=_scale(colour, 1.25), width=2)


def _infrared_night(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A night frame of an infrared camera: monochrome and dark, so the body colour cannot be told."""
    grey = np.asarray(image.convert("L"), np.float32)
    grey = grey * rng.uniform(0.45, 0.7) + rng.uniform(0, 20)
    tint = np.array(_hsv(rng.uniform(0.3, 0.55), rng.uniform(0.0, 0.12), 1.0), np.float32) / 255.0
    return Image.fromarray(np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------------------
# Pedestrians
# ---------------------------------------------------------------------------------------------

def draw_pedestrian(bits: Sequence[int], rng: np.random.Generator) -> Image.Image:
    """A pedestrian on a cluttered street scene, every one of the 21 attributes drawn; taller than wide."""
    height = int(rng.integers(110, 261))
    width = max(40, int(round(height / rng.uniform(1.8, 2.8))))
    image = _background(rng, width, height, rng.uniform(0.55, 0.85))
    draw = ImageDraw.Draw(image)
    _distractors(draw, rng, width, height, int(rng.integers(4, 9)), max_size=0.3)

    male = bool(bits[GENDER_BIT])
    child = bool(bits[BIT["AgeLess18"]])
    old = bool(bits[BIT["AgeOver60"]])
    front, side, back = (bool(bits[i]) for i in ORIENTATION_BITS)

    if child:
        fh = height * rng.uniform(0.54, 0.64)
    else:
        fh = min(height * rng.uniform(0.84, 0.93), width * 2.2)
    feet = height - rng.uniform(0.01, 0.06) * height
    top = feet - fh
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    facing = 1 if rng.random() < 0.5 else -1  # side views: the direction the face points

    def Y(f: float) -> float:
        return top + f * fh

    def px(f: float) -> float:
        return f * fh

    head_r = px(0.088 if child else 0.068)
    head_cy = top + head_r * 1.05
    neck_y = head_cy + head_r * 0.9
    shoulder_y = Y(0.2 if child else 0.17)
    waist_y = Y(0.5)
    hip_y = Y(0.52)
    stoop = px(0.03) * facing if (old and side) else 0.0
    head_cx = cx + stoop
    sw = px(0.125 if male else 0.1) * (1.0 if child else rng.uniform(0.95, 1.05))
    if side:
        sw *= 0.55
    arm_w = max(2, int(round(px(0.05))))
    leg_half = px(0.042 if male else 0.038)

    skin = _jitter(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], rng, spread=0.05, channel=5)
    if old:
        hair = _hsv(0, 0, rng.uniform(0.6, 0.95))
    else:
        hair = _jitter(_DARK_HAIR[int(rng.integers(len(_DARK_HAIR)))], rng, spread=0.15, channel=6)
    shirt = _colour_apart(rng, [skin], 80)
    pants = _colour_apart(rng, [skin], 80)
    coat = _colour_apart(rng, [shirt, skin], 80)
    pattern_colour = _colour_apart(rng, [shirt], 130)
    bag_colours = [_colour_apart(rng, [shirt, pants], 70) for _ in range(3)]
    hat_colour = _colour_apart(rng, [hair, skin], 90)
    shoe = _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.05, 0.3))

    # Long hair behind the shoulders (female, front view).
    long_hair = not male
    if long_hair and front:
        draw.rounded_rectangle((head_cx - head_r * 1.3, head_cy - head_r, head_cx + head_r * 1.3, Y(0.27)),
                               radius=head_r, fill=hair)

    # Legs and lower garment.
    lower_trousers, lower_shorts, lower_skirt = (bool(bits[i]) for i in LOWER_BITS)
    pants_end = {True: Y(0.93), False: Y(0.64) if lower_shorts else hip_y}[lower_trousers]
    if side:
        stride = px(rng.uniform(0.05, 0.09))
        for dx in (-stride, stride):
            foot = (cx + dx, Y(0.955))
            hip = (cx, hip_y - px(0.02))
            draw.line((*hip, *foot), fill=skin, width=int(round(leg_half * 2)))
            if pants_end > hip_y:
                t = (pants_end - hip[1]) / (foot[1] - hip[1])
                mid = (hip[0] + (foot[0] - hip[0]) * t, pants_end)
                draw.line((*hip, *mid), fill=pants, width=int(round(leg_half * 2.1)))
            draw.ellipse((foot[0] - leg_half * 1.1 + facing * leg_half * 0.5, Y(0.94),
                          foot[0] + leg_half * 1.1 + facing * leg_half * 0.5, Y(0.995)), fill=shoe)
    else:
        for s in (-1, 1):
            lx = cx + s * px(0.048)
            draw.rectangle((lx - leg_half, hip_y - px(0.02), lx + leg_half, Y(0.95)), fill=skin)
            if pants_end > hip_y:
                draw.rectangle((lx - leg_half * 1.05, hip_y - px(0.02), lx + leg_half * 1.05, pants_end), fill=pants)
            draw.ellipse((lx - leg_half * 1.2, Y(0.935), lx + leg_half * 1.2, Y(0.995)), fill=shoe)
    if not lower_skirt:
        hip_half = sw * (1.0 if side else 0.82)
        draw.rectangle((cx - hip_half, waist_y - px(0.02), cx + hip_half, hip_y + px(0.03)), fill=pants)
    else:
        top_half = sw * (1.0 if side else 0.8)
        bottom_half = sw * (1.6 if side else 1.3)
        draw.polygon([(cx - top_half, waist_y - px(0.02)), (cx + top_half, waist_y - px(0.02)),
                      (cx + bottom_half, Y(0.74)), (cx - bottom_half, Y(0.74))], fill=pants)

    # Backpack seen from the side sticks out behind the back.
    if bits[BIT["Backpack"]] and side:
        bx = cx - facing * sw
        depth = px(0.1)
        draw.rounded_rectangle((min(bx, bx - facing * depth), shoulder_y + px(0.02),
                                max(bx, bx - facing * depth), Y(0.43)), radius=px(0.02), fill=bag_colours[2])

    # Torso (shirt) and its pattern.
    torso_top = shoulder_y
    waist_half = sw * 0.82
    torso = [(cx - sw + stoop * 0.5, torso_top), (cx + sw + stoop * 0.5, torso_top),
             (cx + waist_half, waist_y), (cx - waist_half, waist_y)]
    draw.polygon(torso, fill=shirt)
    draw.ellipse((cx - sw - px(0.02) + stoop * 0.5, torso_top - px(0.015),
                  cx + sw + px(0.02) + stoop * 0.5, torso_top + px(0.06)), fill=shirt)

    def half_width(y: float) -> float:
        t = (y - torso_top) / max(1e-6, waist_y - torso_top)
        return sw + (waist_half - sw) * t

    stripes, logo, plaid = (bool(bits[i]) for i in UPPER_PATTERN_BITS)
    if stripes:
        band = max(2.0, px(0.036))
        y = torso_top + band * 0.8
        while y + band < waist_y:
            hw = half_width(y + band / 2)
            draw.rectangle((cx - hw + 1, y, cx + hw - 1, y + band), fill=pattern_colour)
            y += band * 2
    if plaid:
        thin = max(1, int(round(px(0.02))))
        for k in range(1, 5):
            y = torso_top + (waist_y - torso_top) * k / 5
            hw = half_width(y)
            draw.line((cx - hw + 1, y, cx + hw - 1, y), fill=pattern_colour, width=thin)
        for k in (-2, -1, 0, 1, 2):
            x = cx + k * waist_half * 0.42
            draw.line((x, torso_top + 1, x, waist_y - 1), fill=pattern_colour, width=thin)
    if logo:
        size = px(0.055)
        lx = cx + (facing * sw * 0.25 if side else 0.0)
        ly = (torso_top + waist_y) / 2
        logo_colour = _colour_apart(rng, [shirt], 140, sampler=lambda g: _hsv(g.random(), 1.0, 1.0))
        if rng.random() < 0.5:
            draw.ellipse((lx - size, ly - size, lx + size, ly + size), fill=logo_colour)
        else:
            draw.rectangle((lx - size, ly - size, lx + size, ly + size), fill=logo_colour)

    # Long coat: open panels over the sides, down to the knees.
    if bits[BIT["LongCoat"]]:
        hem = Y(0.8)
        if side:
            back_x = cx - facing * (sw + px(0.015))
            draw.polygon([(back_x, torso_top), (cx + facing * sw * 0.1, torso_top),
                          (cx + facing * sw * 0.35, hem), (back_x - facing * px(0.04), hem)], fill=coat)
        else:
            for s in (-1, 1):
                draw.polygon([(cx + s * (sw + px(0.015)), torso_top), (cx + s * sw * 0.45, torso_top),
                              (cx + s * sw * 0.6, hem), (cx + s * sw * 1.3, hem)], fill=coat)

    # Arms: long sleeves are shirt-coloured to the wrist, short sleeves leave the forearm bare.
    long_sleeve = bool(bits[BIT["LongSleeve"]])
    sleeve_colour = shirt
    sleeve_end = 0.29
    if side:
        swing = rng.uniform(-1, 1)
        arms = [[(cx + stoop * 0.5, torso_top + px(0.02)), (cx + px(0.02) * swing, Y(0.34)),
                 (cx + px(0.06) * swing, Y(0.5))]]
    else:
        arms = []
        for s in (-1, 1):
            arms.append([(cx + s * (sw + arm_w * 0.3), torso_top + px(0.02)),
                         (cx + s * (sw + arm_w * 0.45), Y(0.34)),
                         (cx + s * (waist_half + arm_w * 0.9), Y(0.5))])
    hands = []
    for points in arms:
        if long_sleeve:
            draw.line([c for p in points for c in p], fill=sleeve_colour, width=arm_w, joint="curve")
        else:
            draw.line([c for p in points for c in p], fill=skin, width=int(arm_w * 0.85), joint="curve")
            (x0, y0), (x1, y1) = points[0], points[1]
            t = (Y(sleeve_end) - y0) / max(1e-6, y1 - y0)
            draw.line((x0, y0, x0 + (x1 - x0) * t, Y(sleeve_end)), fill=sleeve_colour, width=arm_w + 1)
        hx, hy = points[-1]
        hand_r = px(0.026)
        draw.ellipse((hx - hand_r, hy - hand_r, hx + hand_r, hy + hand_r * 1.2), fill=skin)
        hands.append((hx, hy + hand_r))

    # Neck and head.
    neck_half = head_r * 0.4
    draw.rectangle((head_cx - neck_half, neck_y - head_r * 0.3, head_cx + neck_half, torso_top + px(0.01)),
                   fill=skin if not back else _scale(skin, 0.9))
    head_box = (head_cx - head_r, head_cy - head_r * 1.05, head_cx + head_r, head_cy + head_r * 1.05)
    eye_r = max(0.8, head_r * 0.17)
    eye_y = head_cy - head_r * 0.05
    if back:
        draw.ellipse(head_box, fill=hair)
        if long_hair:
            draw.rounded_rectangle((head_cx - head_r * 1.15, head_cy, head_cx + head_r * 1.15, Y(0.28)),
                                   radius=head_r * 0.6, fill=hair)
    elif front:
        draw.ellipse(head_box, fill=hair)
        draw.ellipse((head_cx - head_r * 0.86, head_cy - head_r * 0.45, head_cx + head_r * 0.86,
                      head_cy + head_r * 1.05), fill=skin)
        for s in (-1, 1):
            ex = head_cx + s * head_r * 0.4
            draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(20, 20, 24))
        draw.line((head_cx - head_r * 0.25, head_cy + head_r * 0.55, head_cx + head_r * 0.25,
                   head_cy + head_r * 0.55), fill=_scale(skin, 0.6), width=1)
    else:  # side
        if long_hair:
            hx = head_cx - facing * head_r * 0.9
            draw.rounded_rectangle((min(hx, head_cx) - head_r * 0.35, head_cy - head_r * 0.3,
                                    max(hx, head_cx) + head_r * 0.35, Y(0.27)), radius=head_r * 0.5, fill=hair)
        draw.ellipse(head_box, fill=hair)
        draw.ellipse((head_cx - head_r * 0.8 + facing * head_r * 0.25, head_cy - head_r * 0.45,
                      head_cx + head_r * 0.8 + facing * head_r * 0.25, head_cy + head_r * 1.05), fill=skin)
        nose_x = head_cx + facing * head_r * 1.05
        draw.polygon([(nose_x - facing * head_r * 0.2, head_cy - head_r * 0.1),
                      (nose_x + facing * head_r * 0.22, head_cy + head_r * 0.25),
                      (nose_x - facing * head_r * 0.2, head_cy + head_r * 0.35)], fill=skin)
        ex = head_cx + facing * head_r * 0.55
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(20, 20, 24))

    if bits[BIT["Glasses"]]:
        lens_w, lens_h = head_r * 0.42, head_r * 0.3
        frame = (12, 12, 14)
        if front:
            for s in (-1, 1):
                ex = head_cx + s * head_r * 0.4
                draw.ellipse((ex - lens_w, eye_y - lens_h, ex + lens_w, eye_y + lens_h), fill=frame)
            draw.line((head_cx - head_r * 0.9, eye_y, head_cx + head_r * 0.9, eye_y), fill=frame,
                      width=max(1, int(round(head_r * 0.14))))
        elif side:
            ex = head_cx + facing * head_r * 0.55
            draw.ellipse((ex - lens_w, eye_y - lens_h, ex + lens_w, eye_y + lens_h), fill=frame)
            draw.line((ex, eye_y, head_cx - facing * head_r * 0.2, eye_y), fill=frame,
                      width=max(1, int(round(head_r * 0.18))))

    if bits[BIT["Hat"]]:
        draw.chord((head_cx - head_r * 1.08, head_cy - head_r * 1.3, head_cx + head_r * 1.08,
                    head_cy + head_r * 0.55), 180, 360, fill=hat_colour)
        brim_y = head_cy - head_r * 0.3
        if side:
            x0, x1 = sorted((head_cx - facing * head_r * 0.9, head_cx + facing * head_r * 1.7))
        else:
            x0, x1 = head_cx - head_r * 1.5, head_cx + head_r * 1.5
        draw.rectangle((x0, brim_y - head_r * 0.12, x1, brim_y + head_r * 0.16), fill=_scale(hat_colour, 0.8))

    # Bags: the handbag hangs from one hand, the shoulder bag at the other hip.
    bag_side = 1 if rng.random() < 0.5 else -1
    if bits[BIT["ShoulderBag"]]:
        s = -bag_side if not side else facing * (1 if rng.random() < 0.5 else -1)
        colour = bag_colours[1]
        bag_x = cx + s * (sw * 0.95)
        strap_w = max(1, int(round(px(0.024))))
        draw.line((cx - s * sw * 0.7, torso_top + px(0.01), bag_x, Y(0.46)), fill=_scale(colour, 0.7),
                  width=strap_w)
        bw, bh = px(0.075), px(0.1)
        draw.rectangle((bag_x - bw, Y(0.45), bag_x + bw, Y(0.45) + bh), fill=colour,
                       outline=_scale(colour, 0.6))
    if bits[BIT["HandBag"]]:
        hx, hy = hands[0] if side else hands[0 if bag_side < 0 else 1]
        colour = bag_colours[0]
        bw, bh = px(0.06), px(0.075)
        draw.line((hx - bw * 0.6, hy + bh * 0.45, hx, hy - px(0.01), hx + bw * 0.6, hy + bh * 0.45),
                  fill=_scale(colour, 0.6), width=max(1, int(round(px(0.012)))))
        draw.rectangle((hx - bw, hy + bh * 0.4, hx + bw, hy + bh * 1.4), fill=colour)
    if bits[BIT["Backpack"]]:
        colour = bag_colours[2]
        if back:
            draw.rounded_rectangle((cx - sw * 0.78, shoulder_y + px(0.025), cx + sw * 0.78, Y(0.45)),
                                   radius=px(0.025), fill=colour, outline=_scale(colour, 0.6))
            draw.rectangle((cx - sw * 0.55, Y(0.33), cx + sw * 0.55, Y(0.41)), fill=_scale(colour, 0.8))
        elif front:
            strap_w = max(2, int(round(px(0.03))))
            for s in (-1, 1):
                x = cx + s * sw * 0.55
                draw.line((x, torso_top, x + s * px(0.005), Y(0.42)), fill=_scale(colour, 0.75), width=strap_w)
        else:
            x = cx - facing * sw * 0.1
            draw.line((x, torso_top, x - facing * px(0.02), Y(0.42)), fill=_scale(colour, 0.75),
                      width=max(2, int(round(px(0.026)))))

    if old and rng.random() < 0.6:  # a walking stick
        hx, hy = hands[-1]
        draw.line((hx, hy - px(0.02), hx + (facing if side else 1) * px(0.03), feet), fill=(92, 60, 30),
                  width=max(1, int(round(px(0.018)))))
    return image


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------

def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TrafficlipError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise TrafficlipError(f"{name} must not be negative, got {value}")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise TrafficlipError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise TrafficlipError(f"{name} must be in [0, 1), got {value}")
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
    return _finish(image, draw_rng), entry


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
        raise TrafficlipError(f"seed must be a non-negative whole number, got {seed!r}")
    seed = int(seed)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise TrafficlipError(f"val_fraction + test_fraction must be below 1 so that train gets images, "
                              f"got {val_fraction} + {test_fraction}")
    if vehicles + pedestrians == 0:
        raise TrafficlipError("nothing to generate: vehicles and pedestrians are both 0")
    if pedestrians > 1_000_000:
        raise TrafficlipError(f"pedestrians must be at most 1000000 (their names are unique 6-digit "
                              f"numbers), got {pedestrians}")
    sizes = {"vehicle": split_sizes(vehicles, val_fraction, test_fraction),
             "pedestrian": split_sizes(pedestrians, val_fraction, test_fraction)}
    for category, count in (("vehicle", vehicles), ("pedestrian", pedestrians)):
        empty = [split for split in SPLITS if sizes[category][split] <= 0]
        if count > 0 and empty:
            raise TrafficlipError(
                f"{count} {category} image(s) with val_fraction={val_fraction} and test_fraction="
                f"{test_fraction} leave the {', '.join(empty)} split(s) without any {category}: "
                f"give more {category}s or other fractions (every split needs at least one of each "
                f"category that is generated)")

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrafficlipError(f"{out} exists and is not a folder")
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
    for category in ("vehicle", "pedestrian"):
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
                           for category in ("vehicle", "pedestrian")} for split in SPLITS},
        "test_queries": len(texts),
    }
