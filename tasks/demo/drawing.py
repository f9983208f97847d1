"""What every demo picture is made of: colour arithmetic, random colours kept apart from others, the
cluttered background scene, the distractor shapes on it, and the finish (sensor noise and a JPEG).

Every random choice comes from the numpy Generator passed in, so a picture is the same for the same
seed; vehicles.py and pedestrians.py draw on top of these.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

JPEG_QUALITY = 90


# ---------------------------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------------------------

def hsv(h: float, s: float, v: float) -> RGB:
    """An RGB triple from hue (any, wrapped to [0, 1)), saturation and value."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5))


def _clip(value: float) -> int:
    return int(min(255, max(0, round(value))))


def scale(rgb: Sequence[int], factor: float) -> RGB:
    """Brighter (factor > 1) or darker, clipped to 0..255."""
    return (_clip(rgb[0] * factor), _clip(rgb[1] * factor), _clip(rgb[2] * factor))


def jitter(rgb: Sequence[int], rng: np.random.Generator, spread: float = 0.1, channel: float = 7.0) -> RGB:
    """A variation of ``rgb``: brightness times 1 +- ``spread``, then +- ``channel`` per channel."""
    factor = rng.uniform(1 - spread, 1 + spread)
    noise = rng.uniform(-channel, channel, 3)
    return (_clip(rgb[0] * factor + noise[0]), _clip(rgb[1] * factor + noise[1]),
            _clip(rgb[2] * factor + noise[2]))


def _distance(a: Sequence[int], b: Sequence[int]) -> float:
    return math.sqrt(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b)))


def random_colour(rng: np.random.Generator) -> RGB:
    """A clothing / distractor colour: saturated or neutral, any hue."""
    if rng.random() < 0.3:
        return hsv(rng.random(), rng.uniform(0.0, 0.08), rng.uniform(0.08, 0.95))
    return hsv(rng.random(), rng.uniform(0.3, 0.95), rng.uniform(0.25, 0.95))


def colour_apart(rng: np.random.Generator, avoid: Sequence[Sequence[int]], min_distance: float,
                 sampler=random_colour) -> RGB:
    """A colour from ``sampler`` at least ``min_distance`` (RGB) from each of ``avoid``, if 30 more
    tries find one (otherwise the last one tried)."""
    colour = sampler(rng)
    for _ in range(30):
        if all(_distance(colour, other) >= min_distance for other in avoid):
            break
        colour = sampler(rng)
    return colour


# ---------------------------------------------------------------------------------------------
# The scene and the finish
# ---------------------------------------------------------------------------------------------

def background(rng: np.random.Generator, width: int, height: int, horizon: float) -> Image.Image:
    """A scene: a random-hue upper part, a road/pavement lower part, a gradient and blotches."""
    upper = np.array(hsv(rng.random(), rng.uniform(0.05, 0.65), rng.uniform(0.3, 0.92)), np.float32)
    lower = np.array(hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.7)), np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None]
    column = np.where(rows < int(height * horizon), upper[None, :], lower[None, :])  # (H, 3)
    column = column * (1.0 + rng.uniform(-0.25, 0.25) * (rows / max(1, height) - 0.5))
    column = np.clip(column + 0.5, 0, 255).astype(np.uint8)[:, None, :]
    base = Image.fromarray(column, "RGB").resize((width, height), Image.NEAREST)
    grid = rng.integers(0, 256, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3), dtype=np.uint8)
    blotches = Image.fromarray(grid, "RGB").resize((width, height), Image.BILINEAR)
    return Image.blend(base, blotches, float(rng.uniform(0.15, 0.45)))


def distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
                count: int, max_size: float = 0.35) -> None:
    """Random shapes and lines: clutter in which no shape or colour means anything."""
    for _ in range(count):
        kind = int(rng.integers(5))
        colour = random_colour(rng)
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


def finish(image: Image.Image, rng: np.random.Generator) -> bytes:
    """Add sensor noise to the drawing and encode it as a JPEG (fixed quality, no metadata)."""
    array = np.asarray(image, np.int16)
    spread = int(rng.integers(4, 12))
    array = array + rng.integers(-spread, spread + 1, array.shape, dtype=np.int16)
    out = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
