import numpy as np
import pytest
import torch

from tasks.core.errors import TrafficlipError
from tasks.core.topk import normalise, top_k


def brute_force(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    """Full score matrix, rows ordered by (score desc, index asc)."""
    scores = (queries.double() @ gallery.double().t()).numpy()
    idx = np.empty((scores.shape[0], min(k, scores.shape[1])), dtype=np.int64)
    for r, row in enumerate(scores):
        order = np.lexsort((np.arange(row.size), -row))
        idx[r] = order[:idx.shape[1]]
    return np.take_along_axis(scores, idx, 1), idx


def quarter_vectors(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Unit vectors with entries +-1/4 (dim 16): every inner product is an exact multiple of 1/16,
    so scores are exact whatever the summation order and ties are plentiful."""
    signs = torch.randint(0, 2, (n, dim), generator=generator) * 2 - 1
    return signs.float() / 4.0


@pytest.mark.parametrize("k", [1, 10, 15])
@pytest.mark.parametrize("chunks", [(7, 13), (1, 1), (1024, 65536)])
def test_top_k_matches_brute_force_with_exact_ties(k, chunks):
    g = torch.Generator().manual_seed(1)
    queries, gallery = quarter_vectors(30, 16, g), quarter_vectors(100, 16, g)
    gallery[50] = gallery[3]            # exact duplicates across chunks: lower index must win
    gallery[99] = gallery[3]
    values, indices = top_k(queries, gallery, k, query_chunk=chunks[0], gallery_chunk=chunks[1])
    want_values, want_indices = brute_force(queries, gallery, k)
    assert indices.dtype == torch.int64 and values.dtype == torch.float32
    assert indices.shape == (30, k)
    np.testing.assert_array_equal(indices.numpy(), want_indices)
    np.testing.assert_array_equal(values.numpy(), want_values.astype(np.float32))


def test_top_k_ties_prefer_lower_index_even_when_all_equal():
    queries = torch.ones(2, 4)
    gallery = torch.ones(40, 4)
    _, indices = top_k(queries, gallery, 10, query_chunk=1, gallery_chunk=7)
    assert indices.tolist() == [list(range(10))] * 2


def test_top_k_random_normalised_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    queries = normalise(torch.randn(40, 32, generator=g))
    gallery = normalise(torch.randn(300, 32, generator=g))
    _, indices = top_k(queries, gallery, 10, query_chunk=7, gallery_chunk=13)
    _, want = brute_force(queries, gallery, 10)
    np.testing.assert_array_equal(indices.numpy(), want)


def test_top_k_k_larger_than_gallery_returns_gallery_size_columns():
    g = torch.Generator().manual_seed(3)
    queries, gallery = quarter_vectors(5, 16, g), quarter_vectors(4, 16, g)
    values, indices = top_k(queries, gallery, 10, gallery_chunk=3)
    assert values.shape == (5, 4) and indices.shape == (5, 4)
    assert sorted(indices[0].tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(indices.numpy(), brute_force(queries, gallery, 10)[1])


def test_top_k_empty_queries_and_empty_gallery():
    values, indices = top_k(torch.zeros(0, 8), torch.randn(20, 8), 10)
    assert values.shape == (0, 10) and indices.shape == (0, 10)
    values, indices = top_k(torch.randn(3, 8), torch.zeros(0, 8), 10)
    assert values.shape == (3, 0) and indices.shape == (3, 0)


def test_top_k_rejects_mismatched_dimensions_and_bad_shapes():
    with pytest.raises(TrafficlipError, match="dimension 8.*dimension 16"):
        top_k(torch.randn(3, 8), torch.randn(5, 16), 2)
    with pytest.raises(TrafficlipError, match="2-D"):
        top_k(torch.randn(8), torch.randn(5, 8), 2)
    with pytest.raises(TrafficlipError, match="k must be"):
        top_k(torch.randn(3, 8), torch.randn(5, 8), 0)
    bad = torch.randn(5, 8)
    bad[2, 1] = float("nan")
    with pytest.raises(TrafficlipError, match="row 2"):
        top_k(torch.randn(3, 8), bad, 2)


def test_normalise_gives_unit_rows_and_keeps_zero_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    y = normalise(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


# --- the grouped selection, block hooks, the oneDNN product and the FAISS backend ------------------------

@pytest.mark.parametrize("k", [1, 10, 25])
@pytest.mark.parametrize("chunks", [(7, 1000), (1024, 4096), (64, 100), (1024, 8192)])
def test_wide_galleries_with_exact_ties_match_brute_force(k, chunks):
    """Galleries wide enough for the grouped selection (first and later blocks, a partial group at a
    block's end), with plentiful exact ties (quarter vectors) and duplicates in different groups and
    blocks."""
    g = torch.Generator().manual_seed(4)
    queries, gallery = quarter_vectors(40, 16, g), quarter_vectors(9000, 16, g)
    for copy in (64, 700, 4100, 8999):
        gallery[copy] = gallery[5]
    values, indices = top_k(queries, gallery, k, query_chunk=chunks[0], gallery_chunk=chunks[1])
    want_values, want_indices = brute_force(queries, gallery, k)
    np.testing.assert_array_equal(indices.numpy(), want_indices)
    np.testing.assert_array_equal(values.numpy(), want_values.astype(np.float32))


def test_a_gallery_in_ascending_score_order_matches_brute_force():
    """The worst case for the running threshold: every later item beats the running top-k, so the
    block's own bound (its k-th largest group maximum) has to dismiss the groups."""
    g = torch.Generator().manual_seed(5)
    query = normalise(torch.randn(1, 32, generator=g))
    gallery = normalise(torch.randn(9000, 32, generator=g))
    gallery = gallery[torch.argsort(gallery @ query[0])]
    queries = torch.cat([query, query, query, normalise(torch.randn(3, 32, generator=g))])
    _, indices = top_k(queries, gallery, 10, gallery_chunk=4096)
    np.testing.assert_array_equal(indices.numpy(), brute_force(queries, gallery, 10)[1])
    assert indices[0].tolist() == list(range(8999, 8989, -1))


def test_adjust_and_on_block_see_every_block_with_the_bits_of_iter_blocks():
    from tasks.core.topk import iter_blocks
    g = torch.Generator().manual_seed(6)
    queries, gallery = normalise(torch.randn(50, 32, generator=g)), normalise(torch.randn(5000, 32, generator=g))
    penalty = torch.zeros(5000)
    penalty[::3] = 4.0

    def adjust(q, gal, scores):
        return scores - penalty[gal]
    seen = []
    values, indices = top_k(queries, gallery, 10, query_chunk=16, gallery_chunk=1000, adjust=adjust,
                            on_block=lambda q, gal, s: seen.append((q.start, gal.start, s.clone())))
    walked = [(q.start, gal.start, s) for q, gal, s in iter_blocks(queries, gallery, query_chunk=16,
                                                                  gallery_chunk=1000, adjust=adjust)]
    assert [(a, b) for a, b, _ in seen] == [(a, b) for a, b, _ in walked] and len(seen) == 4 * 5
    assert all(torch.equal(s, w) for (_, _, s), (_, _, w) in zip(seen, walked))
    full = torch.cat([torch.cat([s for a, _, s in walked if a == start], dim=1) for start in (0, 16, 32, 48)])
    want = np.stack([np.lexsort((np.arange(5000), -row))[:10] for row in full.numpy()])
    np.testing.assert_array_equal(indices.numpy(), want)
    assert (indices % 3 != 0).all()


def test_the_plain_torch_product_gives_the_same_ranking(monkeypatch):
    from tasks.core import topk
    g = torch.Generator().manual_seed(7)
    queries, gallery = normalise(torch.randn(30, 64, generator=g)), normalise(torch.randn(2000, 64, generator=g))
    default = top_k(queries, gallery, 10)
    monkeypatch.setenv("TRAFFICLIP_SEARCH_MATMUL", "mm")
    monkeypatch.setattr(topk, "_onednn_checked", None)
    assert topk._onednn() is False
    plain = top_k(queries, gallery, 10)
    monkeypatch.undo()
    topk._onednn_checked = None
    assert torch.equal(default[1], plain[1])
    torch.testing.assert_close(default[0], plain[0], rtol=0, atol=1e-5)


def _faiss_or_skip():
    import faiss  # faiss-cpu is a dev dependency (pyproject.toml): its absence is a failure, not a skip
    return faiss


@pytest.mark.parametrize("k", [1, 10, 15, 200])
def test_faiss_backend_equals_torch_with_exact_ties(k):
    _faiss_or_skip()
    g = torch.Generator().manual_seed(8)
    queries, gallery = quarter_vectors(60, 16, g), quarter_vectors(150, 16, g)
    gallery[100] = gallery[3]
    via_faiss = top_k(queries, gallery, k, backend="faiss")
    via_torch = top_k(queries, gallery, k, backend="torch")
    assert via_faiss[1].dtype == torch.int64 and via_faiss[0].dtype == torch.float32
    assert via_faiss[1].shape == (60, min(k, 150))
    assert torch.equal(via_faiss[1], via_torch[1])
    assert torch.equal(via_faiss[0], via_torch[0])


def test_faiss_backend_equals_torch_on_normalised_embeddings():
    _faiss_or_skip()
    g = torch.Generator().manual_seed(9)
    queries, gallery = normalise(torch.randn(300, 128, generator=g)), normalise(torch.randn(5000, 128, generator=g))
    via_faiss = top_k(queries, gallery, 10, backend="faiss")
    via_torch = top_k(queries, gallery, 10, backend="torch")
    np.testing.assert_array_equal(via_faiss[1].numpy(), brute_force(queries, gallery, 10)[1])
    assert torch.equal(via_faiss[1], via_torch[1])
    torch.testing.assert_close(via_faiss[0], via_torch[0], rtol=0, atol=1e-5)
    empty = top_k(queries[:0], gallery, 10, backend="faiss")
    assert empty[0].shape == (0, 10)


def test_backend_choice_and_its_errors(monkeypatch):
    from tasks.core import topk
    queries, gallery = torch.randn(3, 8), torch.randn(20, 8)
    with pytest.raises(TrafficlipError, match="unknown backend 'gpu'"):
        top_k(queries, gallery, 2, backend="gpu")
    with pytest.raises(TrafficlipError, match="cannot run on_block or adjust"):
        top_k(queries, gallery, 2, backend="faiss", adjust=lambda q, g, s: s)
    assert topk.choose_backend("auto", hooks=False) == "torch"
    monkeypatch.setattr(topk, "_faiss", lambda: None)
    with pytest.raises(TrafficlipError, match="needs the faiss-cpu package"):
        top_k(queries, gallery, 2, backend="faiss")
