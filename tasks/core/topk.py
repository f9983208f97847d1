"""Exact top-k retrieval by inner product, chunked over queries and gallery.

Peak extra memory is one ``query_chunk x gallery_chunk`` score block plus the running top-k, whatever
the numbers of queries and gallery items. Ties are broken by the lower gallery index, so results are
reproducible and do not depend on the chunk sizes.

Why it is fast (benchmarks/ranking.py measures it against the reference solution's full N x N cosine
matrix and argsort, and against FAISS ``IndexFlatIP``):

- a score block is one matrix product. On a CPU it is oneDNN's (see :func:`_onednn`), which uses the
  CPU's widest vector instructions; elsewhere ``torch.mm`` into a buffer allocated once per call.
- no block is sorted whole. Only entries in a block's own top k can enter a query's list, and they
  are all >= the k-th largest maximum of the block's groups of 64 columns; once a list holds k items,
  only entries above its k-th score can enter too. One vectorised max per group and a top-k of those
  maxima dismiss all but about k groups per row (fewer as the list improves); only their entries are
  read again and merged exactly. Selection costs a small fraction of the product.

``backend="faiss"`` runs the same search with FAISS flat inner-product search (``faiss-cpu``, an
optional dependency) and returns the same answer: FAISS orders equal scores arbitrarily, so its
lists are re-sorted by (score, index) and any row whose k-th and (k+1)-th scores tie is recomputed
here. Scores from FAISS's BLAS may differ from ours in the last bits. ``backend="auto"`` (the
default) is torch: it was faster than FAISS flat at every size measured (oneDNN's product is faster
than FAISS's BLAS, and selection is cheaper than its heaps), it supports the block hooks that
evaluation and the category split need, and it runs on a GPU.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Callable, Iterable, Iterator

import torch

from tasks.core.errors import UserError

BlockCallback = Callable[[slice, slice, torch.Tensor], None]
# adjust(query rows, gallery rows, scores) -> scores: changes every score block the same way on every
# walk (tasks/core/retrieval.py uses it to rank another category's images after a query's own).
BlockAdjust = Callable[[slice, slice, torch.Tensor], torch.Tensor]

BACKENDS = ("auto", "torch", "faiss")
QUERY_CHUNK = 1024        # query rows per score block
GALLERY_CHUNK = 4096      # gallery rows per score block: 1024 x 4096 float32 = 16 MiB, whatever N is
GROUP = 64                # columns whose maximum is compared with a row's threshold at once


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, as float32. All-zero rows stay zero."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"normalise: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise UserError(f"normalise: expected a 2-D tensor [rows, dim], got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"top_k: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_embeddings(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    """Both 2-D tensors of the same width and finite values; a TrafficlipError naming the problem otherwise."""
    for name, x in (("queries", queries), ("gallery", gallery)):
        if not isinstance(x, torch.Tensor):
            raise UserError(f"top_k: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2:
            raise UserError(f"top_k: {name} must be 2-D [rows, dim], got shape {tuple(x.shape)}")
        if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                     torch.uint8)):
            raise UserError(f"top_k: {name} must hold numbers, got dtype {x.dtype}")
    if queries.shape[1] != gallery.shape[1]:
        raise UserError(
            f"top_k: query embeddings have dimension {queries.shape[1]} but gallery embeddings have "
            f"dimension {gallery.shape[1]} (expected the same model for both)")
    for name, x in (("queries", queries), ("gallery", gallery)):
        # NaN and infinities show in the minimum or maximum: one pass, no copy (isfinite().all() is 20x slower)
        if x.is_floating_point() and x.numel() and not all(bool(torch.isfinite(v)) for v in torch.aminmax(x)):
            bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
            raise UserError(f"top_k: {name} embedding row {bad} holds NaN or infinite values "
                                  "(expected finite numbers)")


_onednn_checked: bool | None = None


def _onednn() -> bool:
    """Whether CPU score blocks come from oneDNN's float32 matrix product (checked once against torch.mm).

    torch.mm runs Intel MKL, which takes its AVX2 path on AMD CPUs; oneDNN compiles its kernels for the
    CPU it finds (AVX-512 where there is one): 2.1-2.3x torch.mm's GFLOP/s on the 2-core AMD EPYC the
    benchmarks ran on (benchmarks/ranking.py). ``torch.ops.mkldnn._linear_pointwise`` is the op
    torch's own compiler emits for CPU linear layers; it is checked once against torch.mm here and
    torch.mm is used whenever it is missing or disagrees. TRAFFICLIP_SEARCH_MATMUL=mm turns it off.
    """
    global _onednn_checked
    if _onednn_checked is None:
        _onednn_checked = False
        if os.environ.get("TRAFFICLIP_SEARCH_MATMUL", "").strip().lower() != "mm":
            try:
                generator = torch.Generator().manual_seed(0)
                a, b = torch.randn(8, 24, generator=generator), torch.randn(40, 24, generator=generator)
                product = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
                _onednn_checked = bool(torch.backends.mkldnn.is_available() and product.shape == (8, 40)
                                       and torch.allclose(product, a @ b.t(), rtol=1e-5, atol=1e-5))
            except (AttributeError, RuntimeError, NotImplementedError):
                pass
    return _onednn_checked


def _product(q_block: torch.Tensor, g_block: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """Scores q_block @ g_block.T (float32). The same shapes always take the same path, so a block has
    the same bits on every walk. ``buffer`` (torch.mm only) receives the block instead of a new tensor.
    oneDNN's product has no gradient: inputs that need one take torch.mm."""
    needs_grad = torch.is_grad_enabled() and (q_block.requires_grad or g_block.requires_grad)
    if q_block.device.type == "cpu" and not needs_grad and _onednn():
        return torch.ops.mkldnn._linear_pointwise(q_block.contiguous(), g_block.contiguous(), None, "none", [], "")
    if buffer is None:
        return torch.mm(q_block, g_block.t())
    out = buffer[:q_block.shape[0] * g_block.shape[0]].view(q_block.shape[0], g_block.shape[0])
    return torch.mm(q_block, g_block.t(), out=out)


def _blocks(queries: torch.Tensor, gallery: torch.Tensor, query_chunk: int, gallery_chunk: int,
            query_chunks: Iterable[int] | None, adjust: BlockAdjust | None,
            buffer: torch.Tensor | None) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """The walk of :func:`iter_blocks`; with ``buffer`` (float32, at least query_chunk * gallery_chunk
    elements) a block may be written into it, so a block is only valid until the next one."""
    device = queries.device
    n_q, n_g = queries.shape[0], gallery.shape[0]
    chunks = range((n_q + query_chunk - 1) // query_chunk) if query_chunks is None else query_chunks
    for c in chunks:
        q = slice(c * query_chunk, min((c + 1) * query_chunk, n_q))
        q_block = queries[q].to(device=device, dtype=torch.float32)
        for g0 in range(0, n_g, gallery_chunk):
            g = slice(g0, min(g0 + gallery_chunk, n_g))
            scores = _product(q_block, gallery[g].to(device=device, dtype=torch.float32), buffer)
            yield q, g, scores if adjust is None else adjust(q, g, scores)
            del scores          # freed before the next block is computed


def iter_blocks(queries: torch.Tensor, gallery: torch.Tensor, *, query_chunk: int = QUERY_CHUNK,
                gallery_chunk: int = GALLERY_CHUNK, query_chunks: Iterable[int] | None = None,
                adjust: BlockAdjust | None = None) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Yield ``(query rows, gallery rows, float32 score block)`` in query-chunk-major, gallery-ascending order.

    Blocks are computed on the queries' device. ``query_chunks`` restricts the walk to those chunk
    numbers (chunk c covers query rows ``c*query_chunk .. (c+1)*query_chunk``); a block is always
    computed from exactly the same rows, so its scores are the same bits on every walk (and in
    :func:`top_k` with the same chunk sizes). ``adjust``, if given, transforms every block before it
    is yielded. Each block is a new tensor the caller may keep.
    """
    return _blocks(queries, gallery, query_chunk, gallery_chunk, query_chunks, adjust, None)


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


def _merge_sorted(running: tuple[torch.Tensor, torch.Tensor], block: tuple[torch.Tensor, torch.Tensor],
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two sorted candidate lists whose second holds only higher indices; keep the first k."""
    # Both halves are sorted (score desc, index asc) and every running index is lower than every
    # block index, so a stable sort of the concatenation is exact.
    values, indices = _order(torch.cat([running[0], block[0]], dim=1), torch.cat([running[1], block[1]], dim=1))
    return values[:, :k], indices[:, :k]


def _candidates(groups: torch.Tensor, keep: torch.Tensor, bound: torch.Tensor | None,
                above: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, values) of the entries of the groups ``keep`` [n, G] marks (of ``groups``
    [n, G, GROUP]) that are >= ``bound`` and > ``above`` (each [n, 1], or None), in row-major order
    (columns ascending within a row)."""
    group_rows, group_numbers = keep.nonzero().unbind(1)
    members = groups[group_rows, group_numbers]                          # [groups kept, GROUP]
    wanted = None
    for limit, test in ((bound, torch.ge), (above, torch.gt)):
        if limit is not None:
            passed = test(members, limit[group_rows])
            wanted = passed if wanted is None else wanted & passed
    kept, lane = wanted.nonzero().unbind(1)
    return group_rows[kept], group_numbers[kept] * GROUP + lane, members[kept, lane]


def _merge_candidates(running: tuple[torch.Tensor, torch.Tensor] | None, rows: torch.Tensor, columns: torch.Tensor,
                      found: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge candidates (row-major, columns ascending within a row and above every running index) into
    ``running``, or rank them alone; rows sorted (score desc, index asc), the first k kept."""
    counts = torch.bincount(rows, minlength=n)
    slots = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    width = int(counts.max()) if rows.numel() else 0
    # Rows with fewer candidates are padded with -inf after them. Every row has at least k entries
    # (running, or candidates >= a bound that k entries reach) that sort before any padding.
    cand_values = found.new_full((n, width), -math.inf)
    cand_indices = columns.new_zeros((n, width))
    cand_values[rows, slots] = found
    cand_indices[rows, slots] = columns
    if running is None:
        values, indices = _order(cand_values, cand_indices)
        return values[:, :k], indices[:, :k]
    return _merge_sorted(running, (cand_values, cand_indices), k)


def _select(running: tuple[torch.Tensor, torch.Tensor] | None, block: torch.Tensor, offset: int,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a score block (gallery columns ``offset..``) into a query chunk's running top-k.

    Only two kinds of entries can enter: those in the block's own top k, which are all >= the k-th
    largest of its group maxima (k groups hold an entry at least that large), and, once there is a
    running top-k, those strictly above its k-th score (an equal score has a higher index and loses).
    One max per group of GROUP columns and a top-k of the maxima find them; they are merged exactly.
    """
    n, width = block.shape
    main = width - width % GROUP
    if main // GROUP <= k or (running is not None and running[0].shape[1] < k):
        top = _block_top_k(block, offset, k)           # a narrow block, or fewer than k items so far
        return top if running is None else _merge_sorted(running, top, k)
    groups = block[:, :main].unflatten(1, (main // GROUP, GROUP))
    group_max = groups.amax(dim=2)
    above = bound = keep = None
    if running is not None:
        above = running[0][:, k - 1:k]
        keep = group_max > above
    # The bound costs a top-k of the maxima: skipped while the running lists already dismiss most groups.
    if keep is None or int(keep.sum()) > 2 * k * n:
        bound = torch.topk(group_max, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
        keep = group_max >= bound if keep is None else keep & (group_max >= bound)
    rows, columns, found = _candidates(groups, keep, bound, above)
    running = _merge_candidates(running, rows, columns + offset, found, n, k)
    if main < width:                                   # the last few columns, one by one
        tail = block[:, main:]
        rows, columns = (tail > running[0][:, k - 1:k]).nonzero().unbind(1)
        if rows.numel():
            running = _merge_candidates(running, rows, columns + offset + main, tail[rows, columns], n, k)
    return running


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_top_k(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k by FAISS exact inner-product search, with this module's ordering and tie rule."""
    faiss = _faiss()
    if faiss is None:
        raise UserError("top_k: backend 'faiss' needs the faiss-cpu package (pip install faiss-cpu), "
                              "or use backend 'torch'")
    if queries.device.type != "cpu" or gallery.device.type != "cpu":
        raise UserError("top_k: backend 'faiss' searches CPU tensors (expected queries and gallery on "
                              "the CPU), or use backend 'torch'")
    n_g = gallery.shape[0]
    width = min(k, n_g)
    fetch = min(width + 1, n_g)       # one extra item shows whether the cut-off splits equal scores
    faiss.omp_set_num_threads(torch.get_num_threads())
    q = queries.detach().to(torch.float32).contiguous().numpy()
    g = gallery.detach().to(torch.float32).contiguous().numpy()
    values, indices = faiss.knn(q, g, fetch, metric=faiss.METRIC_INNER_PRODUCT)
    values, indices = torch.from_numpy(values), torch.from_numpy(indices).to(torch.int64)
    # FAISS orders equal scores arbitrarily: by index first, then stably by score.
    indices, order = torch.sort(indices, dim=1)
    values, indices = _order(values.gather(1, order), indices)
    if fetch > width:
        ambiguous = values[:, width - 1] == values[:, width]
        values, indices = values[:, :width].contiguous(), indices[:, :width].contiguous()
        if bool(ambiguous.any()):
            rows = ambiguous.nonzero().squeeze(1)
            values[rows], indices[rows] = top_k(queries[rows], gallery, k, backend="torch")
    return values, indices


def choose_backend(backend: str, hooks: bool) -> str:
    """The backend that runs: 'auto' is torch (see the module docstring); 'faiss' cannot run block hooks."""
    if backend not in BACKENDS:
        raise UserError(f"top_k: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if backend == "faiss" and hooks:
        raise UserError("top_k: backend 'faiss' cannot run on_block or adjust (it never shows score "
                              "blocks); use backend 'torch'")
    return "torch" if backend == "auto" else backend


def top_k(queries: torch.Tensor, gallery: torch.Tensor, k: int, *, query_chunk: int = QUERY_CHUNK,
          gallery_chunk: int = GALLERY_CHUNK, on_block: BlockCallback | None = None,
          adjust: BlockAdjust | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [Q, min(k, G)] float32 and indices [Q, min(k, G)] int64 of the k most similar gallery rows.

    Similarity is the inner product (callers pass L2-normalised embeddings, so it is cosine
    similarity). Rows are sorted by score descending, ties by the lower gallery index. Work is chunked
    over queries and gallery with a running top-k merge, so peak extra memory is
    O(query_chunk * gallery_chunk). ``on_block(query_rows, gallery_rows, scores)``, if given, sees every
    score block once (used to compute further statistics in the same pass; the block is reused
    afterwards, so keep results, not the block); ``adjust`` changes every block before anything else
    sees it. ``backend``: 'torch', 'faiss' (CPU, no hooks) or 'auto' (see the module docstring).
    Results live on the queries' device.
    """
    check_embeddings(queries, gallery)
    k = _check_positive_int("k", k)
    query_chunk = _check_positive_int("query_chunk", query_chunk)
    gallery_chunk = _check_positive_int("gallery_chunk", gallery_chunk)
    chosen = choose_backend(backend, on_block is not None or adjust is not None)
    n_q, n_g = queries.shape[0], gallery.shape[0]
    width = min(k, n_g)
    device = queries.device
    with torch.inference_mode():
        if n_q == 0 or n_g == 0:
            return (torch.empty((n_q, width), dtype=torch.float32, device=device),
                    torch.empty((n_q, width), dtype=torch.int64, device=device))
        if chosen == "faiss":
            return _faiss_top_k(queries, gallery, k)
        out_values = torch.empty((n_q, width), dtype=torch.float32, device=device)
        out_indices = torch.empty((n_q, width), dtype=torch.int64, device=device)
        buffer = None
        if device.type != "cpu" or not _onednn():
            buffer = torch.empty(min(query_chunk, n_q) * min(gallery_chunk, n_g), dtype=torch.float32,
                                 device=device)
        running: tuple[torch.Tensor, torch.Tensor] | None = None
        for q, g, scores in _blocks(queries, gallery, query_chunk, gallery_chunk, None, adjust, buffer):
            if on_block is not None:
                on_block(q, g, scores)
            running = _select(None if g.start == 0 else running, scores, g.start, k)
            del scores
            if g.stop == n_g:
                out_values[q] = running[0]
                out_indices[q] = running[1]
        return out_values, out_indices
