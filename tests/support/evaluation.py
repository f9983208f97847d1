"""Hand-made evaluation results for the report tests (tests/report/): metrics with known numbers, a short
training run's steps and validation curve, and a PNG check."""

from __future__ import annotations

import io

from PIL import Image

STEPS = [{"step": s, "epoch": 1 + (s - 1) // 5, "loss": 4.0 - 0.1 * s, "lr": 1e-3 * min(1, s / 3)}
         for s in range(1, 11)]
VALIDATION = {"val_map_at_10": [(0, 0.05), (5, 0.1), (10, 0.2)],
              "val_vehicle_map_at_10": [(0, 0.06), (5, 0.2), (10, 0.3)],
              "val_pedestrian_map_at_10": [(0, 0.04), (5, 0.05), (10, 0.1)]}


def metrics(shift: float = 0.0) -> dict:
    """An eval.json: every group's numbers distinct (a number on a page says which it is)."""
    def group(base: float) -> dict:
        return {"map_at_10": base + 0.1234, "trec_ap_at_10": base + 0.1, "recall_at_1": base + 0.05,
                "recall_at_5": base + 0.3, "recall_at_10": base + 0.4567, "mean_rank": 12.5 - 10 * base,
                "median_rank": 9.0, "queries": 40, "queries_without_relevant": 0}
    return {"overall": group(0.2 + shift), "vehicle": group(0.3 + shift), "pedestrian": group(0.1 + shift),
            "categories": {"query_category_accuracy": 1.0, "uncategorised_queries": 0},
            "relevance_rule": "strict", "validation_fingerprint": "abc123",
            "baseline": {"overall": group(0.0), "vehicle": group(0.01),
                         "pedestrian": {**group(0.0), "recall_at_1": None}}}


def png(data: bytes) -> Image.Image:
    """The image of PNG bytes (failing if they are not a PNG)."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image
