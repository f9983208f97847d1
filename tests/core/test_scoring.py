"""The validation scorer (tasks/core/scoring.py) that training, evaluate and the registry share: the same
model scores the same, and the fingerprint that decides whether two evaluations' per-query scores may
be compared changes with the data's rules and the retrieval settings, not with the model."""

from __future__ import annotations

import copy

import pytest

from tasks.core import models, scoring
from tests.support.params import tiny_params


@pytest.fixture(scope="module")
def validation(tiny_prepared) -> scoring.ValidationSet:
    return scoring.validation_for(tiny_params(), tiny_prepared)


def test_scores_per_category_add_up_and_repeat(validation):
    clip = models.build("TrafficCLIP-Tiny", seed=0)
    metrics, ranking = validation.score(clip)
    assert metrics["overall"]["queries"] == len(validation.queries) == len(ranking.organisers_ap)
    assert metrics["vehicle"]["queries"] + metrics["pedestrian"]["queries"] == metrics["overall"]["queries"]
    assert 0.0 <= metrics["overall"]["map_at_10"] <= 1.0
    assert metrics["overall"]["map_at_10"] == pytest.approx(float(ranking.organisers_ap.mean()))
    again, _ = validation.score(clip)
    assert again == metrics


def test_the_fingerprint_follows_the_rule_and_the_retrieval_settings(tiny_prepared, validation):
    params = tiny_params()
    assert scoring.validation_for(params, tiny_prepared).fingerprint() == validation.fingerprint()
    other_rule = copy.deepcopy(params)
    other_rule["evaluate"]["pedestrian_relevance"] = (
        "inclusion" if params["evaluate"]["pedestrian_relevance"] == "strict" else "strict")
    other_retrieval = copy.deepcopy(params)
    other_retrieval["retrieval"]["category_split"] = not params["retrieval"]["category_split"]
    for changed in (other_rule, other_retrieval):
        assert scoring.validation_for(changed, tiny_prepared).fingerprint() != validation.fingerprint()
