"""Retrieval as submitted (tasks/core/retrieval.py): prompt suffix, category split, adaption re-ranking,
and evaluate == predict (the predict step itself: tests/steps/test_predict.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks.core import models, retrieval, scoring
from tasks.core.errors import TrafficlipError
from tasks.core.metrics import Annotations, rank_queries
from tasks.core.topk import normalise, top_k
from tests.support.params import RETRIEVAL_ALL_OFF as ALL_OFF
from tests.support.params import RETRIEVAL_ALL_ON as ALL_ON


def _encoded(seed: int = 0, n_q: int = 9, n_g: int = 40, dim: int = 16) -> retrieval.Encoded:
    g = torch.Generator().manual_seed(seed)
    queries = normalise(torch.randn(n_q, dim, generator=g))
    gallery = normalise(torch.randn(n_g, dim, generator=g))
    return retrieval.Encoded(
        query_codes=torch.tensor([0, 1, -1] * (n_q // 3), dtype=torch.int64), queries=queries,
        queries_enhanced=normalise(queries + 0.1 * torch.randn(n_q, dim, generator=g)), gallery=gallery,
        gallery_flipped=normalise(gallery + 0.5 * torch.randn(n_g, dim, generator=g)),
        gallery_codes=torch.tensor([0, 1] * (n_g // 2), dtype=torch.int64), logit_scale=30.0)


# ---------------------------------------------------------------- prompt enhancement

def test_suffix_only_on_vehicle_queries():
    assert retrieval.searched_text("This is a white Audi.", "vehicle", ALL_ON) == \
        "This is a white Audi. image taken by traffic surveillance cameras"
    assert retrieval.searched_text("A male pedestrian.", "pedestrian", ALL_ON) == "A male pedestrian."
    assert retrieval.searched_text("Lorem ipsum.", None, ALL_ON) == "Lorem ipsum."
    assert retrieval.searched_text("This is a white Audi.", "vehicle", ALL_OFF) == "This is a white Audi."


def test_enhanced_embeddings_differ_only_for_vehicle_queries():
    clip = models.build("TrafficCLIP-Tiny", seed=0)
    texts = ["This is a white Audi.", "A male pedestrian is someone who walks on foot."]
    images = torch.zeros((2, 64, 64, 3), dtype=torch.uint8)
    enc = retrieval.encode(clip, texts, ["vehicle", "pedestrian"], images, [(90, 40), (40, 90)], ALL_ON, 8)
    assert not torch.allclose(enc.queries_enhanced[0], enc.queries[0])
    assert torch.equal(enc.queries_enhanced[1], enc.queries[1])
    assert enc.gallery_codes.tolist() == [0, 1]    # aspect ratio: wide is a vehicle


# ---------------------------------------------------------------- category split

def test_split_never_returns_the_other_category_and_unmatched_queries_search_everything():
    enc = _encoded()
    _, indices = retrieval.search(enc, {**ALL_OFF, "category_split": True}, k=10)
    _, unsplit = retrieval.search(enc, ALL_OFF, k=10)
    for code, row, whole in zip(enc.query_codes.tolist(), indices.tolist(), unsplit.tolist()):
        if code >= 0:
            assert set(enc.gallery_codes[row].tolist()) == {code}
        else:
            assert row == whole                                       # the whole gallery, as without the split
    vehicle_rows = enc.query_codes == 0
    assert (enc.gallery_codes[unsplit[vehicle_rows]] == 1).any()     # without the split they mix
    described = retrieval.describe(enc, {**ALL_OFF, "category_split": True},
                                   [{"text": f"q{i}", "line": i + 1} for i in range(9)])
    assert [q["line"] for q in described["uncategorised_queries"]] == [3, 6, 9]


def test_split_fills_a_short_category_with_the_other_after_its_own():
    enc = _encoded(n_g=12)
    enc.gallery_codes = torch.tensor([0] * 4 + [1] * 8)
    _, indices = retrieval.search(enc, {**ALL_OFF, "category_split": True}, k=10)
    vehicle_query = indices[0].tolist()
    assert sorted(vehicle_query[:4]) == [0, 1, 2, 3] and all(i >= 4 for i in vehicle_query[4:])


# ---------------------------------------------------------------- adaption re-ranking

def test_rerank_keeps_the_candidates_and_is_a_no_op_at_blend_zero():
    enc = _encoded(seed=1)
    cfg = {**ALL_ON, "rerank_flip": False}
    base_values, base = top_k(enc.queries_enhanced, enc.gallery, 12, adjust=retrieval.hooks(enc, cfg, 10)["adjust"])
    plan = retrieval.hooks(enc, cfg, 10)
    _, reordered = plan["reorder"](base_values, base)
    assert [set(r) for r in reordered.tolist()] == [set(r) for r in base.tolist()]
    assert not torch.equal(reordered, base)                         # blend 0.5 changes some order
    still = retrieval.hooks(enc, {**cfg, "rerank_blend": 0.0}, 10)["reorder"](base_values, base)
    assert torch.equal(still[1], base) and torch.equal(still[0], base_values)


def test_rerank_uses_the_max_of_image_and_mirror():
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    mirrored = torch.tensor([[1.0, 0.0], [0.0, 1.0]])           # image 0's mirror matches the query
    values, indices = top_k(query, gallery, 2)
    assert indices.tolist() == [[1, 0]]
    new_values, new_indices = retrieval.adaption_rerank(query, values, indices, gallery, blend=0.0,
                                                        logit_scale=10.0, gallery_flipped=mirrored)
    assert new_indices.tolist() == [[0, 1]] and new_values[0].tolist() == pytest.approx([1.0, 0.8])


def test_rerank_batched_equals_one_query_at_a_time():
    enc = _encoded(seed=2, n_q=30)
    values, indices = top_k(enc.queries, enc.gallery, 12)
    kwargs = dict(blend=0.7, logit_scale=30.0, gallery_flipped=enc.gallery_flipped)
    together = retrieval.adaption_rerank(enc.queries, values, indices, enc.gallery, **kwargs)
    alone = retrieval.adaption_rerank(enc.queries, values, indices, enc.gallery, query_chunk=1, **kwargs)
    assert torch.equal(together[1], alone[1])
    torch.testing.assert_close(together[0], alone[0])


def test_rerank_k_below_the_list_length_is_refused():
    with pytest.raises(TrafficlipError, match="retrieval.rerank_k = 5 is smaller than predict.top_k = 10"):
        retrieval.check({**ALL_ON, "rerank_k": 5}, 10, "predict.top_k")


# ---------------------------------------------------------------- evaluate measures what predict submits

@pytest.mark.parametrize("cfg", [ALL_ON, ALL_OFF, {**ALL_ON, "rerank": False}, {**ALL_ON, "category_split": False}])
def test_metrics_rank_exactly_the_submitted_lists(cfg):
    enc = _encoded(seed=3, n_q=12, n_g=60)
    rng = np.random.default_rng(0)
    gallery_keys = rng.integers(0, 5, size=60)
    gallery = Annotations(torch.tensor(gallery_keys), torch.zeros(60, dtype=torch.bool), torch.zeros(60, 21))
    queries = Annotations(torch.tensor(rng.integers(0, 5, size=12)), torch.zeros(12, dtype=torch.bool),
                          torch.zeros(12, 21))
    ranking = scoring.rank(enc, cfg, queries, gallery, "strict", 10)
    _, submitted = retrieval.search(enc, cfg, 10)
    np.testing.assert_array_equal(ranking.top_indices, submitted.numpy())
    # the first relevant rank agrees with the final list where it falls inside it
    for row, rank, hits in zip(submitted.tolist(), ranking.first_relevant_rank, ranking.hits):
        if hits.any():
            assert rank <= int(np.argmax(hits)) + 1


def test_rank_with_the_split_counts_other_category_images_last():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    gallery_codes, query_codes = torch.tensor([1, 0, 0]), torch.tensor([0])
    queries = Annotations(torch.tensor([7]), torch.tensor([False]), torch.zeros(1, 21))
    gallery = Annotations(torch.tensor([7, 1, 2]), torch.zeros(3, dtype=torch.bool), torch.zeros(3, 21))
    ranking = rank_queries(q, normalise(g), queries, gallery, k=1,
                           adjust=retrieval.split_adjust(query_codes, gallery_codes))
    assert ranking.first_relevant_rank.tolist() == [3.0]        # its only relevant image was classified pedestrian


def test_aspect_ratio_separates_the_demo_categories(tiny_prepared):
    manifest = json.loads((tiny_prepared / "val" / "manifest.json").read_text())
    codes = retrieval.classify_gallery(None, torch.zeros(len(manifest["images"]), 4),
                                       retrieval.image_sizes(manifest), "aspect_ratio")
    assert codes.tolist() == retrieval.category_codes([i["category"] for i in manifest["images"]]).tolist()
