import json

import numpy as np
import pytest
import torch

from tasks.core.errors import TrafficlipError
from tasks.core.metrics import (
    RULES,
    Annotations,
    Ranking,
    bootstrap_improvement,
    build_annotations,
    organisers_ap_at_k,
    rank_queries,
    relevance_block,
    summarise,
    trec_ap_at_k,
)
from tasks.core.topk import normalise


def bits(*on: int) -> list[int]:
    vector = [0] * 21
    for i in on:
        vector[i] = 1
    return vector


# ---------------------------------------------------------------- average precision, by hand

def test_single_hit_at_rank_one_differs_between_rules():
    hits = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert organisers_ap_at_k(hits) == 1.0
    assert trec_ap_at_k(hits, 5) == pytest.approx(0.2)


def test_hits_at_ranks_two_and_four():
    hits = [0, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    assert organisers_ap_at_k(hits) == pytest.approx((1 / 2 + 2 / 4) / 2)   # 0.5
    assert trec_ap_at_k(hits, 4) == pytest.approx((1 / 2 + 2 / 4) / 4)     # 0.25


def test_mixed_list_by_hand():
    hits = [1, 0, 1, 1, 0, 0, 0, 0, 0, 1]
    precision_sum = 1 / 1 + 2 / 3 + 3 / 4 + 4 / 10
    assert organisers_ap_at_k(hits) == pytest.approx(precision_sum / 4)
    assert trec_ap_at_k(hits, 12) == pytest.approx(precision_sum / 12)


def test_no_hits_and_no_relevant_give_zero():
    assert organisers_ap_at_k([0] * 10) == 0.0
    assert trec_ap_at_k([0] * 10, 3) == 0.0
    assert trec_ap_at_k([0] * 10, 0) == 0.0
    assert organisers_ap_at_k([]) == 0.0


def test_trec_ap_refuses_more_hits_than_relevant():
    with pytest.raises(TrafficlipError, match="relevant"):
        trec_ap_at_k([1, 1, 0], 1)


# ---------------------------------------------------------------- summarise

def hand_ranking() -> Ranking:
    hits = np.array([
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # R=5: organisers 1, trec 0.2, first rank 1
        [0, 1, 0, 1, 0, 0, 0, 0, 0, 0],   # R=2: organisers 0.5, trec 0.5, first rank 2
        [0, 0, 0, 0, 0, 0, 1, 0, 0, 0],   # R=1: organisers 1/7, trec 1/7, first rank 7
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # R=3 but none in the top 10: first rank 40
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # R=0: excluded from rank statistics
    ], dtype=bool)
    n_relevant = np.array([5, 2, 1, 3, 0])
    organisers = np.array([organisers_ap_at_k(row) for row in hits])
    trec = np.array([trec_ap_at_k(row, r) for row, r in zip(hits, n_relevant)])
    return Ranking(top_indices=np.zeros((5, 10), dtype=np.int64), hits=hits, n_relevant=n_relevant,
                   first_relevant_rank=np.array([1, 2, 7, 40, np.nan]), organisers_ap=organisers, trec_ap=trec)


def test_summarise_by_hand():
    summary = summarise(hand_ranking())
    assert set(summary) == {"map_at_10", "trec_ap_at_10", "recall_at_1", "recall_at_5", "recall_at_10",
                            "mean_rank", "median_rank", "queries", "queries_without_relevant"}
    assert summary["map_at_10"] == round((1 + 0.5 + 1 / 7) / 5, 6)
    assert summary["trec_ap_at_10"] == round((0.2 + 0.5 + 1 / 7) / 5, 6)
    assert summary["recall_at_1"] == 0.2
    assert summary["recall_at_5"] == 0.4
    assert summary["recall_at_10"] == 0.6
    assert summary["mean_rank"] == 12.5          # (1 + 2 + 7 + 40) / 4, the R=0 query left out
    assert summary["median_rank"] == 4.5
    assert summary["queries"] == 5
    assert summary["queries_without_relevant"] == 1
    json.dumps(summary)                            # plain python numbers
    assert all(type(v) in (float, int) for v in summary.values())


def test_summarise_with_mask_and_empty_mask():
    ranking = hand_ranking()
    summary = summarise(ranking, np.array([False, True, False, False, True]))
    assert summary["map_at_10"] == 0.25
    assert summary["mean_rank"] == 2.0 and summary["median_rank"] == 2.0
    assert summary["queries"] == 2 and summary["queries_without_relevant"] == 1

    empty = summarise(ranking, np.zeros(5, dtype=bool))
    assert empty["queries"] == 0 and empty["queries_without_relevant"] == 0
    assert all(empty[key] is None for key in empty if key not in ("queries", "queries_without_relevant"))
    json.dumps(empty)

    only_unrelevant = summarise(ranking, np.array([False, False, False, False, True]))
    assert only_unrelevant["mean_rank"] is None and only_unrelevant["median_rank"] is None
    assert only_unrelevant["map_at_10"] == 0.0

    with pytest.raises(TrafficlipError, match="mask"):
        summarise(ranking, np.array([1, 0, 1]))


# ---------------------------------------------------------------- relevance

def hand_annotations():
    table: dict = {}
    queries = build_annotations(
        ["white Audi Sedan", ("ped", 0), ("ped", 1)],
        [False, True, True],
        [bits(), bits(0, 4), bits(2)], table)    # q1: male, front.  q2: female, 18-60
    gallery = build_annotations(
        ["white Audi Sedan",   # 0 vehicle, same phrase as q0
         "black Audi Sedan",   # 1 vehicle, other phrase
         ("ped", 0),           # 2 male, front           (exact key of q1)
         ("ped", 2),           # 3 male, front, hat      (superset of q1)
         ("ped", 3),           # 4 female, front, hat    (gender differs from q1)
         ("ped", 4),           # 5 male, side            (misses q1's front bit)
         ("ped", 5),           # 6 female, 18-60, glasses(superset of q2)
         ("ped", 6)],          # 7 male, 18-60           (gender differs from q2)
        [False, False, True, True, True, True, True, True],
        [bits(), bits(), bits(0, 4), bits(0, 4, 16), bits(4, 16), bits(0, 5), bits(2, 17), bits(0, 2)],
        table)
    return queries, gallery


def test_relevance_strict_needs_equal_keys():
    queries, gallery = hand_annotations()
    rel = relevance_block(queries, gallery, "strict", slice(0, 3), slice(0, 8))
    assert rel.dtype == torch.bool and rel.shape == (3, 8)
    assert rel.nonzero().tolist() == [[0, 0], [1, 2]]


def test_relevance_inclusion_for_pedestrians_only():
    queries, gallery = hand_annotations()
    rel = relevance_block(queries, gallery, "inclusion", slice(0, 3), slice(0, 8))
    assert rel[0].nonzero().squeeze(1).tolist() == [0]           # vehicle: still equal phrase only
    assert rel[1].nonzero().squeeze(1).tolist() == [2, 3]        # exact + superset; not gender 4, not 5
    assert rel[2].nonzero().squeeze(1).tolist() == [6]           # superset; gender mismatch 7 excluded


def test_relevance_block_honours_slices_and_rejects_unknown_rule():
    queries, gallery = hand_annotations()
    full = relevance_block(queries, gallery, "inclusion", slice(0, 3), slice(0, 8))
    part = relevance_block(queries, gallery, "inclusion", slice(1, 3), slice(2, 7))
    assert torch.equal(part, full[1:3, 2:7])
    with pytest.raises(TrafficlipError, match="unknown relevance rule 'loose'"):
        relevance_block(queries, gallery, "loose", slice(0, 3), slice(0, 8))


# ---------------------------------------------------------------- rank_queries against brute force

def brute_force(query_emb, gallery_emb, queries: Annotations, gallery: Annotations, rule: str, k: int):
    scores = (query_emb.double() @ gallery_emb.double().t()).numpy()
    n_q, n_g = scores.shape
    q_key, g_key = queries.key_id.tolist(), gallery.key_id.tolist()
    q_ped, g_ped = queries.is_pedestrian.tolist(), gallery.is_pedestrian.tolist()
    q_bits, g_bits = queries.bits.tolist(), gallery.bits.tolist()
    rel = np.zeros((n_q, n_g), dtype=bool)
    for i in range(n_q):
        for j in range(n_g):
            if rule == "strict" or not (q_ped[i] or g_ped[j]):
                rel[i, j] = q_key[i] == g_key[j]
            elif q_ped[i] and g_ped[j]:
                qb, gb = q_bits[i], g_bits[j]
                rel[i, j] = qb[0] == gb[0] and all(g >= q for q, g in zip(qb, gb))
    top = np.stack([np.lexsort((np.arange(n_g), -row))[:k] for row in scores])
    hits = np.take_along_axis(rel, top, 1)
    n_relevant = rel.sum(1)
    first = np.full(n_q, np.nan)
    for i in range(n_q):
        if n_relevant[i]:
            first[i] = 1 + (scores[i] > scores[i][rel[i]].max()).sum()
    return top, hits, n_relevant, first


def random_annotations(n: int, rng: np.random.Generator, key_bits: dict) -> Annotations:
    keys = rng.integers(0, len(key_bits), size=n)
    return Annotations(torch.tensor(keys), torch.tensor([key_bits[k] is not None for k in keys]),
                       torch.tensor(np.array([key_bits[k] or bits() for k in keys]), dtype=torch.uint8))


def make_case(seed: int, exact: bool):
    rng = np.random.default_rng(seed)
    key_bits = {k: None for k in range(4)}                          # vehicle keys 0..3
    for k in range(4, 10):                                          # pedestrian keys 4..9
        key_bits[k] = [int(b) for b in (rng.random(21) < 0.3)]
    key_bits[10] = bits(0, 1, 3, 5, 7, 9, 11)                       # 10: a query-only key (R = 0)
    queries = random_annotations(45, rng, key_bits)
    gallery_keys = {k: v for k, v in key_bits.items() if k != 10}
    gallery = random_annotations(120, rng, gallery_keys)
    if exact:   # entries +-1/4 in 16 dims: unit vectors, exact scores, many exact ties
        q = torch.tensor(rng.choice([-0.25, 0.25], size=(45, 16)), dtype=torch.float32)
        g = torch.tensor(rng.choice([-0.25, 0.25], size=(120, 16)), dtype=torch.float32)
        g[60] = g[2]
        g[119] = g[2]
    else:
        q = normalise(torch.tensor(rng.standard_normal((45, 24)), dtype=torch.float32))
        g = normalise(torch.tensor(rng.standard_normal((120, 24)), dtype=torch.float32))
    return q, g, queries, gallery


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("exact", [True, False])
def test_rank_queries_matches_brute_force_with_tiny_chunks(rule, exact):
    q, g, queries, gallery = make_case(seed=7, exact=exact)
    ranking = rank_queries(q, g, queries, gallery, rule=rule, k=10, query_chunk=7, gallery_chunk=13)
    top, hits, n_relevant, first = brute_force(q, g, queries, gallery, rule, 10)
    np.testing.assert_array_equal(ranking.top_indices, top)
    np.testing.assert_array_equal(ranking.hits, hits)
    np.testing.assert_array_equal(ranking.n_relevant, n_relevant)
    np.testing.assert_array_equal(ranking.first_relevant_rank, first)   # nan where R == 0
    assert np.isnan(first).any() and (first > 10).any() and (first <= 10).any()
    assert ranking.top_indices.dtype == np.int64 and ranking.hits.dtype == bool
    np.testing.assert_allclose(ranking.organisers_ap, [organisers_ap_at_k(h) for h in hits])
    np.testing.assert_allclose(ranking.trec_ap, [trec_ap_at_k(h, r) for h, r in zip(hits, n_relevant)])
    # the same answer whatever the chunking
    whole = rank_queries(q, g, queries, gallery, rule=rule, k=10)
    np.testing.assert_array_equal(whole.top_indices, ranking.top_indices)
    np.testing.assert_array_equal(whole.first_relevant_rank, ranking.first_relevant_rank)


def test_rank_of_first_relevant_counts_only_strictly_higher_scores():
    # gallery scores for the one query: 3, 2, 2, 1 ; relevant: items 2 and 3 -> best relevant 2 -> rank 2
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[3.0, 0.0], [2.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    queries = Annotations(torch.tensor([1]), torch.tensor([False]), torch.zeros(1, 21))
    gallery = Annotations(torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.bool), torch.zeros(4, 21))
    for k in (1, 3):   # first relevant outside and inside the top-k
        ranking = rank_queries(q, g, queries, gallery, k=k, query_chunk=1, gallery_chunk=3)
        assert ranking.first_relevant_rank.tolist() == [2.0]
        assert ranking.n_relevant.tolist() == [2]


def test_rank_queries_rejects_annotation_count_mismatch():
    q, g, queries, gallery = make_case(seed=1, exact=True)
    with pytest.raises(TrafficlipError, match="120 gallery embeddings but 119"):
        rank_queries(q, g, queries, Annotations(gallery.key_id[:119], gallery.is_pedestrian[:119],
                                                gallery.bits[:119]))


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_clear_gain_identical_and_noisy():
    rng = np.random.default_rng(0)
    old = rng.random(200)
    assert bootstrap_improvement(old + 0.2, old) == 1.0
    assert bootstrap_improvement(old, old) <= 0.5
    assert bootstrap_improvement(old - 0.2, old) == 0.0
    noisy = old + rng.normal(0.01, 0.15, size=200)
    value = bootstrap_improvement(noisy, old)
    assert 0.05 < value < 0.95
    assert bootstrap_improvement(noisy, old, seed=3) == bootstrap_improvement(noisy, old, seed=3)
    assert bootstrap_improvement(noisy, old) == value


def test_bootstrap_rejects_unpaired_scores():
    with pytest.raises(TrafficlipError, match="pair"):
        bootstrap_improvement(np.zeros(3), np.zeros(4))
