"""Exact top-k retrieval by inner product, chunked over queries and gallery.

Peak extra memory is one ``query_chunk x gallery_chunk`` score block plus the running top-k, whatever
the numbers of queries and gallery items. Ties are broken by the lower gallery index, so results are
reproducible and do not depend on the chunk sizes.
"""

from __future__ import annotations

import numbers
from typing import Callable, Iterable, Iterator

import torch

from .errors import TrafficlipError

BlockCallback = Callable[[slice, slice, torch.Tensor], None]
# adjust(query rows, gallery rows, scores) -> scores: changes every score block the same way on every
# walk (tasks/retrieval.py uses it to rank another category's images after a query's own).
BlockAdjust = Callable[[slice, slice, torch.Tensor], torch.Tensor]


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, as float32. All-zero rows stay zero."""
    if not isinstance(x, torch.Tensor):
        raise TrafficlipError(f"normalise: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise TrafficlipError(f"normalise: expected a 2-D tensor [rows, dim], got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TrafficlipError(f"top_k: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_embeddings(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    """Both 2-D tensors of the same width and finite values; a TrafficlipError naming the problem otherwise."""
    for name, x in (("queries", queries), ("gallery", gallery)):
        if not isinstance(x, torch.Tensor):
            raise TrafficlipError(f"top_k: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2:
            raise TrafficlipError(f"top_k: {name} must be 2-D [rows, dim], got shape {tuple(x.shape)}")
        if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                     torch.uint8)):
            raise TrafficlipError(f"top_k: {name} must hold numbers, got dtype {x.dtype}")
    if queries.shape[1] != gallery.shape[1]:
        raise TrafficlipError(
            f"top_k: query embeddings have dimension {queries.shape[1]} but gallery embeddings have "
            f"dimension {gallery.shape[1]} (expected the same model for both)")
    for name, x in (("queries", queries), ("gallery", gallery)):
        if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
            raise TrafficlipError(f"top_k: {name} embedding row {bad} holds NaN or infinite values "
                                  "(expected finite numbers)")


def iter_blocks(queries: torch.Tensor, gallery: torch.Tensor, *, query_chunk: int = 1024,
                gallery_chunk: int = 65536, query_chunks: Iterable[int] | None = None,
                adjust: BlockAdjust | None = None) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Yield ``(query rows, gallery rows, float32 score block)`` in query-chunk-major, gallery-ascending order.

    Blocks are computed on the queries' device. ``query_chunks`` restricts the walk to those chunk
    numbers (chunk c covers query rows ``c*query_chunk .. (c+1)*query_chunk``); a block is always
    computed from exactly the same rows, so its scores are the same bits on every walk.
    ``adjust``, if given, transforms every block before it is yielded.
    """
    device = queries.device
    n_q, n_g = queries.shape[0], gallery.shape[0]
    chunks = range((n_q + query_chunk - 1) // query_chunk) if query_chunks is None else query_chunks
    for c in chunks:
        q = slice(c * query_chunk, min((c + 1) * query_chunk, n_q))
        q_block = queries[q].to(device=device, dtype=torch.float32)
        for g0 in range(0, n_g, gallery_chunk):
            g = slice(g0, min(g0 + gallery_chunk, n_g))
            g_block = gallery[g].to(device=device, dtype=torch.float32)
            scores = torch.mm(q_block, g_block.t())
            yield q, g, scores if adjust is None else adjust(q, g, scores)


def _order(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score descending; equal scores keep their current (index-ascending) order."""
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), indices.gather(1, order)


def _block_top_k(block: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of one score block, ties at the cut-off resolved to the lowest column, rows sorted."""
    width = block.shape[1]
    kb = min(k, width)
    if kb == width:
        values, columns = torch.topk(block, kb, dim=1, largest=True, sorted=False)
    else:
        # One extra item tells whether the cut-off splits a run of equal scores; torch.topk picks
        # arbitrarily among those, so such rows are redone exactly (lowest columns win).
        values, columns = torch.topk(block, kb + 1, dim=1, largest=True, sorted=True)
        ambiguous = values[:, kb - 1] == values[:, kb]
        values, columns = values[:, :kb].contiguous(), columns[:, :kb].contiguous()
        if bool(ambiguous.any()):
            rows = ambiguous.nonzero().squeeze(1)
            sub, sub_kth = block[rows], values[rows, kb - 1:kb]
            above = sub > sub_kth
            need = kb - above.sum(dim=1, keepdim=True)
            tied = sub == sub_kth
            chosen = above | (tied & (tied.cumsum(dim=1) <= need))
            picked = chosen.nonzero()[:, 1].view(-1, kb)
            columns[rows] = picked
            values[rows] = sub.gather(1, picked)
    columns, order = torch.sort(columns, dim=1)
    values = values.gather(1, order)
    return _order(values, columns + offset)


def top_k(queries: torch.Tensor, gallery: torch.Tensor, k: int, *, query_chunk: int = 1024,
          gallery_chunk: int = 65536, on_block: BlockCallback | None = None,
          adjust: BlockAdjust | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [Q, min(k, G)] float32 and indices [Q, min(k, G)] int64 of the k most similar gallery rows.

    Similarity is the inner product (callers pass L2-normalised embeddings, so it is cosine
    similarity). Rows are sorted by score descending, ties by the lower gallery index. Work is chunked
    over queries and gallery with a running top-k merge, so peak extra memory is
    O(query_chunk * gallery_chunk). ``on_block(query_rows, gallery_rows, scores)``, if given, sees every
    score block once (used to compute further statistics in the same pass); ``adjust`` changes every
    block before anything else sees it. Results live on the queries' device.
    """
    check_embeddings(queries, gallery)
    k = _check_positive_int("k", k)
    query_chunk = _check_positive_int("query_chunk", query_chunk)
    gallery_chunk = _check_positive_int("gallery_chunk", gallery_chunk)
    n_q, n_g = queries.shape[0], gallery.shape[0]
    width = min(k, n_g)
    device = queries.device
    with torch.inference_mode():
        out_values = torch.empty((n_q, width), dtype=torch.float32, device=device)
        out_indices = torch.empty((n_q, width), dtype=torch.int64, device=device)
        if n_q == 0 or n_g == 0:
            return out_values, out_indices
        running: tuple[torch.Tensor, torch.Tensor] | None = None
        for q, g, scores in iter_blocks(queries, gallery, query_chunk=query_chunk,
                                        gallery_chunk=gallery_chunk, adjust=adjust):
            if on_block is not None:
                on_block(q, g, scores)
            block_values, block_indices = _block_top_k(scores, g.start, k)
            if g.start == 0:
                running = (block_values, block_indices)
            else:
                # Running candidates all have lower indices than this block's, and both halves are
                # sorted (score desc, index asc), so a stable sort of the concatenation is exact.
                values, indices = _order(torch.cat([running[0], block_values], dim=1),
                                         torch.cat([running[1], block_indices], dim=1))
                running = (values[:, :k], indices[:, :k])
            if g.stop == n_g:
                out_values[q] = running[0]
                out_indices[q] = running[1]
        return out_values, out_indices
