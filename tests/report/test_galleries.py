"""Retrieval galleries (tasks/report/galleries.py): frames by relevance, which queries are shown."""

from __future__ import annotations

import numpy as np

from tasks.report import galleries


def test_gallery_frames_are_green_for_hits_and_red_for_misses():
    images = np.full((3, 32, 32, 3), 128, dtype=np.uint8)
    picture = galleries.render("This is a white Audi Sedan.", "vehicle", images, [True, False, True])
    pixels = np.asarray(picture)
    top = picture.height - galleries.MARGIN - 18 - (galleries.THUMB + 2 * galleries.FRAME)
    for rank, colour in enumerate((galleries.RELEVANT, galleries.NOT_RELEVANT, galleries.RELEVANT)):
        x = galleries.MARGIN + rank * (galleries.THUMB + 2 * galleries.FRAME + galleries.GAP)
        assert tuple(pixels[top + 1, x + 1]) == colour
        assert tuple(pixels[top + galleries.FRAME + 5, x + galleries.FRAME + 5]) == (128, 128, 128)


def test_gallery_queries_alternate_categories_and_do_not_depend_on_order():
    queries = [{"text": f"car {i}", "category": "vehicle"} for i in range(5)] + \
              [{"text": f"person {i}", "category": "pedestrian"} for i in range(5)]
    picked = galleries.pick_queries(queries, 4)
    assert [queries[i]["category"] for i in picked] == ["pedestrian", "vehicle", "pedestrian", "vehicle"]
    reversed_queries = queries[::-1]
    assert [reversed_queries[i]["text"] for i in galleries.pick_queries(reversed_queries, 4)] == [
        queries[i]["text"] for i in picked]
    assert len(galleries.pick_queries(queries[:2], 6)) == 2

