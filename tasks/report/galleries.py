"""Retrieval galleries as pictures: a query's text above its top-k images, framed green (relevant) or
red (not). evaluate logs a handful of them to MLflow, so a run shows what the model retrieves.
"""

from __future__ import annotations

import hashlib
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

THUMB = 112          # thumbnail side in pixels
FRAME = 5            # frame width
GAP = 6
MARGIN = 10
RELEVANT, NOT_RELEVANT, UNJUDGED = (40, 170, 60), (210, 45, 45), (150, 150, 150)


def pick_queries(queries: Sequence[dict], count: int) -> list[int]:
    """``count`` query indices, the same for every model: categories alternate, and within a
    category queries are ordered by a hash of their text (a spread, not the first lines)."""
    by_category: dict[str, list[int]] = {}
    for index, query in enumerate(queries):
        by_category.setdefault(query["category"], []).append(index)
    ordered = [sorted(indices, key=lambda i: hashlib.sha1(queries[i]["text"].encode()).hexdigest())
               for _, indices in sorted(by_category.items())]
    picked: list[int] = []
    while len(picked) < count and any(ordered):
        for indices in ordered:
            if indices and len(picked) < count:
                picked.append(indices.pop(0))
    return picked


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(text: str, caption: str, images: np.ndarray, hits: Sequence[bool | None]) -> Image.Image:
    """One gallery: ``text`` and ``caption`` above the images (uint8 [k, S, S, 3]) in rank order;
    a hit of None (no ground truth) gets a grey frame."""
    k = len(images)
    cell = THUMB + 2 * FRAME
    width = 2 * MARGIN + k * cell + (k - 1) * GAP
    font, small = _font(15), _font(12)
    lines = textwrap.wrap(text, width=max(20, width // 8)) or [""]
    top = MARGIN + 19 * len(lines) + 18 + GAP
    canvas = Image.new("RGB", (width, top + cell + 18 + MARGIN), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + 19 * number), line, fill=(0, 0, 0), font=font)
    draw.text((MARGIN, MARGIN + 19 * len(lines)), caption, fill=(90, 90, 90), font=small)
    for rank, (pixels, hit) in enumerate(zip(images, hits)):
        x = MARGIN + rank * (cell + GAP)
        draw.rectangle((x, top, x + cell - 1, top + cell - 1), fill=UNJUDGED if hit is None else RELEVANT if hit else NOT_RELEVANT)
        thumb = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((THUMB, THUMB), Image.Resampling.BICUBIC)
        canvas.paste(thumb, (x + FRAME, top + FRAME))
        draw.text((x + cell // 2 - 8, top + cell + 3), f"#{rank + 1}", fill=(0, 0, 0), font=small)
    return canvas
