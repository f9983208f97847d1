"""The evaluate step (tasks/steps/evaluate.py) as the registry and a reader of the metrics use it: every
category's metrics next to the untrained baseline's, one per-query row per validation query whose
organisers' APs average to the reported mAP@10, and the fingerprint of what was scored. (Its plots,
galleries and HTML report: tests/report/test_html.py; what it logs to MLflow: tests/mlops/test_tracking.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.core import scoring

KEYS = {"map_at_10", "trec_ap_at_10", "recall_at_1", "recall_at_5", "recall_at_10", "mean_rank", "median_rank",
        "queries"}


def test_metrics_and_per_query_rows_agree(tracked):
    metrics = json.loads(tracked.metrics.read_text())
    per_query = json.loads(tracked.per_query.read_text())
    for group in ("overall", "vehicle", "pedestrian"):
        assert KEYS <= set(metrics[group]) and KEYS - {"queries"} <= set(metrics["baseline"][group]), group
    assert metrics["relevance_rule"] == tracked.params["evaluate"]["pedestrian_relevance"]
    assert len(per_query) == metrics["overall"]["queries"]
    for category in ("vehicle", "pedestrian"):
        rows = [q for q in per_query if q["category"] == category]
        assert len(rows) == metrics[category]["queries"]
        assert np.mean([q["organisers_ap"] for q in rows]) == pytest.approx(metrics[category]["map_at_10"], abs=1e-5)
    assert np.mean([q["organisers_ap"] for q in per_query]) == pytest.approx(metrics["overall"]["map_at_10"], abs=1e-5)
    top_k = tracked.params["evaluate"]["top_k"]
    assert all(len(q["top"]) == len(q["hits"]) == top_k for q in per_query)
    assert all(0.0 <= q["organisers_ap"] <= 1.0 and (q["organisers_ap"] > 0) == any(q["hits"]) for q in per_query)


def test_the_fingerprint_is_the_validation_sets(tracked):
    metrics = json.loads(tracked.metrics.read_text())
    assert metrics["validation_fingerprint"] == scoring.validation_for(tracked.params, tracked.data).fingerprint()
