"""Pedestrians of the demo dataset: their attribute bits and their pictures.

A pedestrian shows all 21 attributes: gender (build, long hair), age (a child's height and head, an
old person's grey hair, stoop and walking stick), orientation, sleeves, the shirt's pattern, the lower
garment, a long coat, hat, glasses and bags. The attribute sampling (``sample_pedestrian_bits``) is
separate from the drawing (``draw_pedestrian``) so that its frequencies can be checked without
drawing anything.

``draw_pedestrian`` paints back to front: the street scene, then the figure's build and pose
(``Figure``) and colours (``Palette``), then one function per part, in the order in which the parts
cover one another. The parts take their random draws from the one Generator, so the order of the
calls is part of the picture: changing it changes every later pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from tasks.core.vocab import (
    AGE_BITS,
    BIT,
    CARRIED_BITS,
    GENDER_BIT,
    LOWER_BITS,
    ORIENTATION_BITS,
    PEDESTRIAN_BITS,
    SLEEVE_BITS,
    UPPER_PATTERN_BITS,
)
from tasks.demo.drawing import RGB, background, colour_apart, distractors, hsv, jitter, scale

Point = tuple[float, float]

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


# ---------------------------------------------------------------------------------------------
# Attribute bits (no drawing)
# ---------------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, probabilities: Sequence[float]) -> int:
    """Index drawn from ``probabilities`` (they may sum to less than 1: the rest means -1)."""
    x = rng.random()
    for index, p in enumerate(probabilities):
        if x < p:
            return index
        x -= p
    return -1


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
# The picture
# ---------------------------------------------------------------------------------------------

def draw_pedestrian(bits: Sequence[int], rng: np.random.Generator) -> Image.Image:
    """A pedestrian on a cluttered street scene, every one of the 21 attributes drawn; taller than wide."""
    height = int(rng.integers(110, 261))
    width = max(40, int(round(height / rng.uniform(1.8, 2.8))))
    image = background(rng, width, height, rng.uniform(0.55, 0.85))
    draw = ImageDraw.Draw(image)
    distractors(draw, rng, width, height, int(rng.integers(4, 9)), max_size=0.3)

    fig = _figure(bits, rng, width, height)
    colours = _palette(fig, rng)

    # Back to front: each part may cover the ones drawn before it.
    if fig.long_hair and fig.front:
        _draw_long_hair_behind(draw, fig, colours)
    _draw_legs(draw, bits, fig, colours, rng)
    _draw_hips(draw, bits, fig, colours)
    if bits[BIT["Backpack"]] and fig.side:
        _draw_backpack_from_the_side(draw, fig, colours)
    _draw_torso(draw, fig, colours)
    stripes, logo, plaid = (bool(bits[i]) for i in UPPER_PATTERN_BITS)
    if stripes:
        _draw_stripes(draw, fig, colours)
    if plaid:
        _draw_plaid(draw, fig, colours)
    if logo:
        _draw_logo(draw, fig, colours, rng)
    if bits[BIT["LongCoat"]]:
        _draw_long_coat(draw, fig, colours)
    hands = _draw_arms(draw, fig, colours, bool(bits[BIT["LongSleeve"]]), rng)
    _draw_neck(draw, fig, colours)
    _draw_head(draw, fig, colours)
    if bits[BIT["Glasses"]]:
        _draw_glasses(draw, fig)
    if bits[BIT["Hat"]]:
        _draw_hat(draw, fig, colours)

    # Bags: the handbag hangs from one hand, the shoulder bag at the other hip.
    bag_side = 1 if rng.random() < 0.5 else -1
    if bits[BIT["ShoulderBag"]]:
        _draw_shoulder_bag(draw, fig, colours, bag_side, rng)
    if bits[BIT["HandBag"]]:
        _draw_handbag(draw, fig, colours, hands, bag_side)
    if bits[BIT["Backpack"]]:
        _draw_backpack(draw, fig, colours)

    if fig.old and rng.random() < 0.6:
        _draw_walking_stick(draw, fig, hands)
    return image


# ---------------------------------------------------------------------------------------------
# Build, pose and colours
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """A pedestrian's build and pose in the picture's pixels (y grows downwards)."""

    male: bool
    child: bool
    old: bool
    front: bool
    side: bool
    back: bool
    long_hair: bool      # women's
    facing: int          # side views: the direction the face points (1: right, -1: left)
    top: float           # the crown of the head
    fh: float            # the figure's height, crown to soles
    feet: float
    cx: float            # the body's middle
    stoop: float         # how far an old person's head and shoulders lean forward (side views)
    head_cx: float
    head_cy: float
    head_r: float
    eye_y: float
    neck_y: float
    shoulder_y: float    # the top of the torso
    waist_y: float
    hip_y: float
    sw: float            # half the shoulder width (narrower seen from the side)
    waist_half: float    # half the waist width
    arm_w: int
    leg_half: float      # half a leg's width

    def y(self, f: float) -> float:
        """The y of a point a share ``f`` of the figure's height below the crown."""
        return self.top + f * self.fh

    def px(self, f: float) -> float:
        """A share ``f`` of the figure's height, in pixels."""
        return f * self.fh

    def torso_half_width(self, y: float) -> float:
        """Half the torso's width at ``y``: from the shoulders' to the waist's."""
        t = (y - self.shoulder_y) / max(1e-6, self.waist_y - self.shoulder_y)
        return self.sw + (self.waist_half - self.sw) * t


@dataclass(frozen=True)
class Palette:
    """A pedestrian's colours; clothes and bags stay apart from what they are seen against."""

    skin: RGB
    hair: RGB
    shirt: RGB
    pants: RGB
    coat: RGB
    pattern: RGB         # stripes and plaid (a logo has a colour of its own)
    handbag: RGB
    shoulder_bag: RGB
    backpack: RGB
    hat: RGB
    shoe: RGB


_SKIN_TONES: tuple[RGB, ...] = ((255, 224, 196), (241, 194, 160), (224, 172, 118), (198, 138, 84),
                                (150, 98, 56), (104, 66, 40))
_DARK_HAIR: tuple[RGB, ...] = ((20, 16, 12), (46, 30, 20), (72, 46, 26), (96, 62, 32), (32, 32, 36))


def _figure(bits: Sequence[int], rng: np.random.Generator, width: int, height: int) -> Figure:
    """The build and pose of the pedestrian that ``bits`` describe, in a ``width`` x ``height`` picture.
    Random: the figure's height and place, the way it faces, an adult's shoulder width."""
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
    facing = 1 if rng.random() < 0.5 else -1

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
    return Figure(male=male, child=child, old=old, front=front, side=side, back=back, long_hair=not male,
                  facing=facing, top=top, fh=fh, feet=feet, cx=cx, stoop=stoop, head_cx=head_cx,
                  head_cy=head_cy, head_r=head_r, eye_y=head_cy - head_r * 0.05, neck_y=neck_y,
                  shoulder_y=shoulder_y, waist_y=waist_y, hip_y=hip_y, sw=sw, waist_half=sw * 0.82,
                  arm_w=arm_w, leg_half=leg_half)


def _palette(fig: Figure, rng: np.random.Generator) -> Palette:
    """Skin and hair (grey for the old), and clothes, bags and hat in colours apart from the skin, the
    hair or the shirt they are seen against."""
    skin = jitter(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], rng, spread=0.05, channel=5)
    if fig.old:
        hair = hsv(0, 0, rng.uniform(0.6, 0.95))
    else:
        hair = jitter(_DARK_HAIR[int(rng.integers(len(_DARK_HAIR)))], rng, spread=0.15, channel=6)
    shirt = colour_apart(rng, [skin], 80)
    pants = colour_apart(rng, [skin], 80)
    coat = colour_apart(rng, [shirt, skin], 80)
    pattern = colour_apart(rng, [shirt], 130)
    handbag, shoulder_bag, backpack = [colour_apart(rng, [shirt, pants], 70) for _ in range(3)]
    hat = colour_apart(rng, [hair, skin], 90)
    shoe = hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.05, 0.3))
    return Palette(skin=skin, hair=hair, shirt=shirt, pants=pants, coat=coat, pattern=pattern,
                   handbag=handbag, shoulder_bag=shoulder_bag, backpack=backpack, hat=hat, shoe=shoe)


# ---------------------------------------------------------------------------------------------
# Body and clothes
# ---------------------------------------------------------------------------------------------

def _draw_long_hair_behind(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """Long hair behind the shoulders (front view)."""
    head_cx, head_cy, head_r = fig.head_cx, fig.head_cy, fig.head_r
    draw.rounded_rectangle((head_cx - head_r * 1.3, head_cy - head_r, head_cx + head_r * 1.3, fig.y(0.27)),
                           radius=head_r, fill=colours.hair)


def _draw_legs(draw: ImageDraw.ImageDraw, bits: Sequence[int], fig: Figure, colours: Palette,
               rng: np.random.Generator) -> None:
    """Bare legs, trouser or shorts legs over them, and shoes; side views walk (a random stride)."""
    cx, hip_y, leg_half, facing = fig.cx, fig.hip_y, fig.leg_half, fig.facing
    Y, px = fig.y, fig.px
    skin, pants, shoe = colours.skin, colours.pants, colours.shoe
    lower_trousers, lower_shorts, _ = (bool(bits[i]) for i in LOWER_BITS)
    pants_end = {True: Y(0.93), False: Y(0.64) if lower_shorts else hip_y}[lower_trousers]
    if fig.side:
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


def _draw_hips(draw: ImageDraw.ImageDraw, bits: Sequence[int], fig: Figure, colours: Palette) -> None:
    """The lower garment over the hips: the seat of the trousers or shorts, or a skirt to the knees."""
    cx, sw, side, waist_y, hip_y = fig.cx, fig.sw, fig.side, fig.waist_y, fig.hip_y
    Y, px = fig.y, fig.px
    pants = colours.pants
    _, _, lower_skirt = (bool(bits[i]) for i in LOWER_BITS)
    if not lower_skirt:
        hip_half = sw * (1.0 if side else 0.82)
        draw.rectangle((cx - hip_half, waist_y - px(0.02), cx + hip_half, hip_y + px(0.03)), fill=pants)
    else:
        top_half = sw * (1.0 if side else 0.8)
        bottom_half = sw * (1.6 if side else 1.3)
        draw.polygon([(cx - top_half, waist_y - px(0.02)), (cx + top_half, waist_y - px(0.02)),
                      (cx + bottom_half, Y(0.74)), (cx - bottom_half, Y(0.74))], fill=pants)


def _draw_backpack_from_the_side(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """A backpack seen from the side sticks out behind the back (drawn before the torso)."""
    cx, sw, facing, shoulder_y = fig.cx, fig.sw, fig.facing, fig.shoulder_y
    Y, px = fig.y, fig.px
    bx = cx - facing * sw
    depth = px(0.1)
    draw.rounded_rectangle((min(bx, bx - facing * depth), shoulder_y + px(0.02),
                            max(bx, bx - facing * depth), Y(0.43)), radius=px(0.02), fill=colours.backpack)


def _draw_torso(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """The shirt: shoulders to waist, with rounded shoulders."""
    cx, sw, stoop, waist_y, waist_half = fig.cx, fig.sw, fig.stoop, fig.waist_y, fig.waist_half
    px = fig.px
    shirt = colours.shirt
    torso_top = fig.shoulder_y
    torso = [(cx - sw + stoop * 0.5, torso_top), (cx + sw + stoop * 0.5, torso_top),
             (cx + waist_half, waist_y), (cx - waist_half, waist_y)]
    draw.polygon(torso, fill=shirt)
    draw.ellipse((cx - sw - px(0.02) + stoop * 0.5, torso_top - px(0.015),
                  cx + sw + px(0.02) + stoop * 0.5, torso_top + px(0.06)), fill=shirt)


def _draw_stripes(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """Horizontal stripes across the shirt (UpperStride)."""
    cx, waist_y, px = fig.cx, fig.waist_y, fig.px
    torso_top = fig.shoulder_y
    band = max(2.0, px(0.036))
    y = torso_top + band * 0.8
    while y + band < waist_y:
        hw = fig.torso_half_width(y + band / 2)
        draw.rectangle((cx - hw + 1, y, cx + hw - 1, y + band), fill=colours.pattern)
        y += band * 2


def _draw_plaid(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """A grid of thin lines over the shirt (UpperPlaid)."""
    cx, waist_y, waist_half, px = fig.cx, fig.waist_y, fig.waist_half, fig.px
    torso_top = fig.shoulder_y
    pattern_colour = colours.pattern
    thin = max(1, int(round(px(0.02))))
    for k in range(1, 5):
        y = torso_top + (waist_y - torso_top) * k / 5
        hw = fig.torso_half_width(y)
        draw.line((cx - hw + 1, y, cx + hw - 1, y), fill=pattern_colour, width=thin)
    for k in (-2, -1, 0, 1, 2):
        x = cx + k * waist_half * 0.42
        draw.line((x, torso_top + 1, x, waist_y - 1), fill=pattern_colour, width=thin)


def _draw_logo(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette, rng: np.random.Generator) -> None:
    """A round or square logo on the chest (UpperLogo), in a vivid colour apart from the shirt's."""
    cx, sw, facing, waist_y, px = fig.cx, fig.sw, fig.facing, fig.waist_y, fig.px
    torso_top = fig.shoulder_y
    size = px(0.055)
    lx = cx + (facing * sw * 0.25 if fig.side else 0.0)
    ly = (torso_top + waist_y) / 2
    logo_colour = colour_apart(rng, [colours.shirt], 140, sampler=lambda g: hsv(g.random(), 1.0, 1.0))
    if rng.random() < 0.5:
        draw.ellipse((lx - size, ly - size, lx + size, ly + size), fill=logo_colour)
    else:
        draw.rectangle((lx - size, ly - size, lx + size, ly + size), fill=logo_colour)


def _draw_long_coat(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """Open panels over the sides, down to the knees."""
    cx, sw, facing, Y, px = fig.cx, fig.sw, fig.facing, fig.y, fig.px
    torso_top = fig.shoulder_y
    coat = colours.coat
    hem = Y(0.8)
    if fig.side:
        back_x = cx - facing * (sw + px(0.015))
        draw.polygon([(back_x, torso_top), (cx + facing * sw * 0.1, torso_top),
                      (cx + facing * sw * 0.35, hem), (back_x - facing * px(0.04), hem)], fill=coat)
    else:
        for s in (-1, 1):
            draw.polygon([(cx + s * (sw + px(0.015)), torso_top), (cx + s * sw * 0.45, torso_top),
                          (cx + s * sw * 0.6, hem), (cx + s * sw * 1.3, hem)], fill=coat)


def _draw_arms(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette, long_sleeve: bool,
               rng: np.random.Generator) -> list[Point]:
    """Arms and hands: long sleeves are shirt-coloured to the wrist, short sleeves leave the forearm
    bare; a side view shows one arm, swinging (random). Returns where each hand holds things."""
    cx, sw, stoop, waist_half, arm_w = fig.cx, fig.sw, fig.stoop, fig.waist_half, fig.arm_w
    Y, px = fig.y, fig.px
    skin = colours.skin
    torso_top = fig.shoulder_y
    sleeve_colour = colours.shirt
    sleeve_end = 0.29
    if fig.side:
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
    return hands


# ---------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------

def _draw_neck(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """The neck, a little darker seen from the back."""
    head_cx, head_r, skin = fig.head_cx, fig.head_r, colours.skin
    neck_half = head_r * 0.4
    draw.rectangle((head_cx - neck_half, fig.neck_y - head_r * 0.3, head_cx + neck_half, fig.shoulder_y + fig.px(0.01)),
                   fill=skin if not fig.back else scale(skin, 0.9))


def _draw_head(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """Hair and, unless seen from the back, the face: eyes and mouth from the front, nose and eye from
    the side. Long hair falls to the shoulders."""
    head_cx, head_cy, head_r, eye_y, facing, Y = fig.head_cx, fig.head_cy, fig.head_r, fig.eye_y, fig.facing, fig.y
    skin, hair = colours.skin, colours.hair
    head_box = (head_cx - head_r, head_cy - head_r * 1.05, head_cx + head_r, head_cy + head_r * 1.05)
    eye_r = max(0.8, head_r * 0.17)
    if fig.back:
        draw.ellipse(head_box, fill=hair)
        if fig.long_hair:
            draw.rounded_rectangle((head_cx - head_r * 1.15, head_cy, head_cx + head_r * 1.15, Y(0.28)),
                                   radius=head_r * 0.6, fill=hair)
    elif fig.front:
        draw.ellipse(head_box, fill=hair)
        draw.ellipse((head_cx - head_r * 0.86, head_cy - head_r * 0.45, head_cx + head_r * 0.86,
                      head_cy + head_r * 1.05), fill=skin)
        for s in (-1, 1):
            ex = head_cx + s * head_r * 0.4
            draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(20, 20, 24))
        draw.line((head_cx - head_r * 0.25, head_cy + head_r * 0.55, head_cx + head_r * 0.25,
                   head_cy + head_r * 0.55), fill=scale(skin, 0.6), width=1)
    else:  # side
        if fig.long_hair:
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


# ---------------------------------------------------------------------------------------------
# Accessories
# ---------------------------------------------------------------------------------------------

def _draw_glasses(draw: ImageDraw.ImageDraw, fig: Figure) -> None:
    """Dark lenses over the eyes and the frame between them (or to the ear, from the side)."""
    head_cx, head_r, eye_y, facing = fig.head_cx, fig.head_r, fig.eye_y, fig.facing
    lens_w, lens_h = head_r * 0.42, head_r * 0.3
    frame = (12, 12, 14)
    if fig.front:
        for s in (-1, 1):
            ex = head_cx + s * head_r * 0.4
            draw.ellipse((ex - lens_w, eye_y - lens_h, ex + lens_w, eye_y + lens_h), fill=frame)
        draw.line((head_cx - head_r * 0.9, eye_y, head_cx + head_r * 0.9, eye_y), fill=frame,
                  width=max(1, int(round(head_r * 0.14))))
    elif fig.side:
        ex = head_cx + facing * head_r * 0.55
        draw.ellipse((ex - lens_w, eye_y - lens_h, ex + lens_w, eye_y + lens_h), fill=frame)
        draw.line((ex, eye_y, head_cx - facing * head_r * 0.2, eye_y), fill=frame,
                  width=max(1, int(round(head_r * 0.18))))


def _draw_hat(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """A cap: a crown over the head and a darker brim (forward, seen from the side)."""
    head_cx, head_cy, head_r, facing = fig.head_cx, fig.head_cy, fig.head_r, fig.facing
    hat_colour = colours.hat
    draw.chord((head_cx - head_r * 1.08, head_cy - head_r * 1.3, head_cx + head_r * 1.08,
                head_cy + head_r * 0.55), 180, 360, fill=hat_colour)
    brim_y = head_cy - head_r * 0.3
    if fig.side:
        x0, x1 = sorted((head_cx - facing * head_r * 0.9, head_cx + facing * head_r * 1.7))
    else:
        x0, x1 = head_cx - head_r * 1.5, head_cx + head_r * 1.5
    draw.rectangle((x0, brim_y - head_r * 0.12, x1, brim_y + head_r * 0.16), fill=scale(hat_colour, 0.8))


def _draw_shoulder_bag(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette, bag_side: int,
                       rng: np.random.Generator) -> None:
    """A bag at the hip opposite ``bag_side`` on a strap across the chest (a side view: either hip,
    at random)."""
    cx, sw, facing, Y, px = fig.cx, fig.sw, fig.facing, fig.y, fig.px
    torso_top = fig.shoulder_y
    s = -bag_side if not fig.side else facing * (1 if rng.random() < 0.5 else -1)
    colour = colours.shoulder_bag
    bag_x = cx + s * (sw * 0.95)
    strap_w = max(1, int(round(px(0.024))))
    draw.line((cx - s * sw * 0.7, torso_top + px(0.01), bag_x, Y(0.46)), fill=scale(colour, 0.7),
              width=strap_w)
    bw, bh = px(0.075), px(0.1)
    draw.rectangle((bag_x - bw, Y(0.45), bag_x + bw, Y(0.45) + bh), fill=colour,
                   outline=scale(colour, 0.6))


def _draw_handbag(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette, hands: list[Point],
                  bag_side: int) -> None:
    """A bag with a handle hanging from the hand on ``bag_side`` (the one hand of a side view)."""
    px = fig.px
    hx, hy = hands[0] if fig.side else hands[0 if bag_side < 0 else 1]
    colour = colours.handbag
    bw, bh = px(0.06), px(0.075)
    draw.line((hx - bw * 0.6, hy + bh * 0.45, hx, hy - px(0.01), hx + bw * 0.6, hy + bh * 0.45),
              fill=scale(colour, 0.6), width=max(1, int(round(px(0.012)))))
    draw.rectangle((hx - bw, hy + bh * 0.4, hx + bw, hy + bh * 1.4), fill=colour)


def _draw_backpack(draw: ImageDraw.ImageDraw, fig: Figure, colours: Palette) -> None:
    """A backpack over the back seen from behind; its straps seen from the front or the side."""
    cx, sw, facing, shoulder_y, Y, px = fig.cx, fig.sw, fig.facing, fig.shoulder_y, fig.y, fig.px
    colour = colours.backpack
    if fig.back:
        draw.rounded_rectangle((cx - sw * 0.78, shoulder_y + px(0.025), cx + sw * 0.78, Y(0.45)),
                               radius=px(0.025), fill=colour, outline=scale(colour, 0.6))
        draw.rectangle((cx - sw * 0.55, Y(0.33), cx + sw * 0.55, Y(0.41)), fill=scale(colour, 0.8))
    elif fig.front:
        strap_w = max(2, int(round(px(0.03))))
        for s in (-1, 1):
            x = cx + s * sw * 0.55
            draw.line((x, shoulder_y, x + s * px(0.005), Y(0.42)), fill=scale(colour, 0.75), width=strap_w)
    else:
        x = cx - facing * sw * 0.1
        draw.line((x, shoulder_y, x - facing * px(0.02), Y(0.42)), fill=scale(colour, 0.75),
                  width=max(2, int(round(px(0.026)))))


def _draw_walking_stick(draw: ImageDraw.ImageDraw, fig: Figure, hands: list[Point]) -> None:
    """A stick from the last hand to the ground."""
    px = fig.px
    hx, hy = hands[-1]
    draw.line((hx, hy - px(0.02), hx + (fig.facing if fig.side else 1) * px(0.03), fig.feet), fill=(92, 60, 30),
              width=max(1, int(round(px(0.018)))))
