import numpy as np
import pytest
import torch

from tasks.errors import TrafficlipError
from tasks.search import normalise, top_k


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
