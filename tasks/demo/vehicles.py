"""Vehicles of the demo dataset: their attributes, their labels and their pictures.

Every attribute is drawn visibly so that a tiny CLIP model can learn it: a vehicle shows its colour
(the body), type (a silhouette per type) and brand, twice: a small emblem of a unique shape and colour
on a light plate at the middle of the body, as a real logo, and a trim along the body side (line,
double line, band or dashes in chrome, black or gold; a unique pair per brand), standing in for the
design language by which one tells a real brand at surveillance resolution. With the emblem alone,
the demo model never learned brands (docs/training.md).

A label leaves a part out because the picture does not show it, as an annotator would: a caption
without a colour goes with an infrared night shot (monochrome), one without a type with a close crop
of the middle of the body, one without a brand with a vehicle whose lower body (emblem, trim, wheels)
is behind a roadside barrier. Under the organisers' rule such a query is relevant only to images
labelled with the same omission, so the omission has to be something one can see.

The attribute sampling (``sample_vehicle_attributes``) is separate from the drawing
(``draw_vehicle``) so that its frequencies can be checked without drawing anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from tasks.core.vocab import COLOURS, DEMO_BRANDS, VEHICLE_TYPES, vehicle_caption, vehicle_phrase
from tasks.demo.drawing import RGB, background, distractors, hsv, jitter, random_colour, scale

VEHICLE_PARTS = ("colour", "brand", "type")

# Chance that a vehicle label leaves a part out (as in the real data); never all three at once.
VEHICLE_OMIT_P = {"colour": 0.12, "brand": 0.05, "type": 0.12}


# ---------------------------------------------------------------------------------------------
# Attributes and labels (no drawing)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Looks: body colours, brand emblems and trims
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Silhouettes, emblems and trims
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
    colour = jitter(TRIM_RGB[tone], rng, spread=0.06, channel=5)
    edge = scale(colour, 0.45) if tone != "black" else (150, 150, 154)
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


# ---------------------------------------------------------------------------------------------
# The picture
# ---------------------------------------------------------------------------------------------

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
    image = background(rng, width, height, rng.uniform(0.3, 0.65))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.6:  # lane markings
        y = rng.uniform(0.7, 0.98) * height
        mark = (230, 230, 225) if rng.random() < 0.6 else (230, 200, 40)
        dash = rng.uniform(0.08, 0.2) * width
        x = rng.uniform(-dash, 0)
        while x < width:
            draw.line((x, y, x + dash, y), fill=mark, width=int(rng.integers(1, 4)))
            x += dash * 2
    distractors(draw, rng, width, height, int(rng.integers(4, 10)))

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

    base = jitter(COLOUR_RGB[colour], rng, spread=0.08, channel=6)
    # A soft shadow under the vehicle.
    draw.ellipse((*at(-0.02, 0.05), *at(1.02, -0.05)), fill=scale(random_colour(rng), 0.25))
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
            draw.line((*at(u, v0 + 0.03), *at(u, v1 - 0.03)), fill=scale(base, 0.78), width=1)
    # Mild shading of the lower body: a highlight line and a darker rocker panel.
    v_low, v_high = shape["band"]
    stroke = max(1, int(round(body_height * 0.05)))
    u_end = 0.26 if shape["cargo"] else 0.985
    draw.line((*at(0.015, v_high - 0.08), *at(u_end, v_high - 0.08)), fill=scale(base, 1.18), width=stroke)
    draw.rectangle((*at(0.01, v_low + 0.08), *at(u_end, v_low)), fill=scale(base, 0.78))
    trim_top = _draw_trim(draw, at, BRAND_TRIMS[brand], v_low, v_high, rng)
    glass = jitter(_GLASS_RGB, rng, spread=0.15, channel=6)
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

    rim = jitter((170, 172, 176), rng, spread=0.1, channel=5)
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


# ---------------------------------------------------------------------------------------------
# What a label leaves out: a close crop, a barrier, a night shot
# ---------------------------------------------------------------------------------------------

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
    colour = jitter(((150, 150, 146), (46, 96, 44), (120, 118, 112))[int(rng.integers(3))], rng, 0.15, 8)
    draw.rectangle((0, top, width, height), fill=colour)
    for k in range(int(rng.integers(2, 5))):   # seams, rails or leaves: texture without meaning
        y = top + (height - top) * (k + rng.uniform(0.2, 0.8)) / 4
        draw.line((0, y, width, y), fill=scale(colour, rng.uniform(0.6, 0.85)), width=int(rng.integers(1, 3)))
    draw.line((0, top, width, top), fill=scale(colour, 1.25), width=2)


def _infrared_night(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A night frame of an infrared camera: monochrome and dark, so the body colour cannot be told."""
    grey = np.asarray(image.convert("L"), np.float32)
    grey = grey * rng.uniform(0.45, 0.7) + rng.uniform(0, 20)
    tint = np.array(hsv(rng.uniform(0.3, 0.55), rng.uniform(0.0, 0.12), 1.0), np.float32) / 255.0
    return Image.fromarray(np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8), "RGB")
