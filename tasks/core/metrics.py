"""Retrieval metrics: relevance by attribute annotation, ranking, mAP@10 and friends.

Two average-precision rules are reported:

* ``map_at_10`` - the organisers' rule: per query, walk the top-10; at each rank j (1-based) holding a
  relevant image add (hits so far)/j; divide by the number of hits in the list (0 when none).
* ``trec_ap_at_10`` - the same sum divided by R, the number of relevant images in the whole gallery.

Everything over the gallery is computed blockwise with tensor operations; memory is bounded by the
chunk sizes, never by the gallery size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import torch

from tasks.core import topk
from tasks.core.errors import UserError

RULES = ("strict", "inclusion")
GENDER_BIT = 0
MAX_BITS = 62


@dataclass
class Annotations:
    """Attribute annotation of N texts or images.

    key_id: int64 [N]; equal ids <=> equal normalised attribute key (vehicle phrase or pedestrian vector).
    is_pedestrian: bool [N].
    bits: uint8 [N, 21]; the pedestrian attribute vector, zeros for vehicles.
    """

    key_id: torch.Tensor
    is_pedestrian: torch.Tensor
    bits: torch.Tensor

    def __post_init__(self):
        try:
            self.key_id = torch.as_tensor(self.key_id, dtype=torch.int64)
            self.is_pedestrian = torch.as_tensor(self.is_pedestrian, dtype=torch.bool)
            self.bits = torch.as_tensor(self.bits, dtype=torch.uint8)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"Annotations: cannot convert to tensors: {exc}") from None
        n = self.key_id.shape[0] if self.key_id.ndim == 1 else -1
        if self.key_id.ndim != 1:
            raise UserError(f"Annotations: key_id must be 1-D [N], got shape {tuple(self.key_id.shape)}")
        if tuple(self.is_pedestrian.shape) != (n,):
            raise UserError(f"Annotations: is_pedestrian has shape {tuple(self.is_pedestrian.shape)}, "
                                  f"expected ({n},) like key_id")
        if self.bits.ndim != 2 or self.bits.shape[0] != n or not 1 <= self.bits.shape[1] <= MAX_BITS:
            raise UserError(f"Annotations: bits has shape {tuple(self.bits.shape)}, "
                                  f"expected ({n}, 21)")

    def __len__(self) -> int:
        return int(self.key_id.shape[0])

    def to(self, device) -> "Annotations":
        return Annotations(self.key_id.to(device), self.is_pedestrian.to(device), self.bits.to(device))


def build_annotations(keys: Sequence[Hashable], is_pedestrian: Sequence[bool], bits: Sequence[Sequence[int]],
                      key_table: dict) -> Annotations:
    """Annotations from normalised keys; ``key_table`` maps key -> id and is shared (and extended)
    between the query and gallery sides so that equal keys get equal ids."""
    ids = [key_table.setdefault(key, len(key_table)) for key in keys]
    bits_t = torch.as_tensor(np.asarray(bits, dtype=np.uint8).reshape(len(ids), -1)) if len(ids) else \
        torch.zeros((0, 21), dtype=torch.uint8)
    return Annotations(torch.tensor(ids, dtype=torch.int64),
                       torch.as_tensor(list(is_pedestrian), dtype=torch.bool), bits_t)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise UserError(f"unknown relevance rule {rule!r} (expected one of {', '.join(RULES)})")


def _pack(bits: torch.Tensor) -> torch.Tensor:
    """[N, B] 0/1 bits -> int64 [N] bit masks (bit i of the mask = column i)."""
    weights = torch.ones(bits.shape[1], dtype=torch.int64, device=bits.device) << torch.arange(
        bits.shape[1], dtype=torch.int64, device=bits.device)
    return ((bits != 0).to(torch.int64) * weights).sum(dim=1)


def _relevant(q_key, q_ped, q_mask, g_key, g_ped, g_mask, rule: str) -> torch.Tensor:
    """Relevance for broadcastable query/gallery fields (e.g. [q,1] against [1,g] or [q,k])."""
    same_key = q_key == g_key
    if rule == "strict":
        return same_key
    both_ped = q_ped & g_ped
    gender_equal = ((q_mask ^ g_mask) & (1 << GENDER_BIT)) == 0
    included = (q_mask & ~g_mask) == 0
    vehicles = ~q_ped & ~g_ped & same_key
    return (both_ped & gender_equal & included) | vehicles


class _Packed:
    """Annotation fields in the form the relevance kernel wants, on one device."""

    def __init__(self, ann: Annotations, device):
        self.key = ann.key_id.to(device)
        self.ped = ann.is_pedestrian.to(device)
        self.mask = _pack(ann.bits.to(device))


def _block(qp: _Packed, gp: _Packed, rule: str, q: slice, g: slice) -> torch.Tensor:
    return _relevant(qp.key[q, None], qp.ped[q, None], qp.mask[q, None],
                     gp.key[None, g], gp.ped[None, g], gp.mask[None, g], rule)


def relevance_block(queries: Annotations, gallery: Annotations, rule: str, q: slice, g: slice) -> torch.Tensor:
    """bool [q_len, g_len]: is gallery item g relevant to query q?

    "strict": equal key_id. "inclusion" (pedestrians only): both pedestrians, same gender bit, and
    every bit set in the query is set in the image; vehicles still need an equal key_id.
    """
    _check_rule(rule)
    for name, ann in (("queries", queries), ("gallery", gallery)):
        if not isinstance(ann, Annotations):
            raise UserError(f"relevance_block: {name} must be an Annotations, got {type(ann).__name__}")
    device = queries.key_id.device
    q_part = Annotations(queries.key_id[q], queries.is_pedestrian[q], queries.bits[q])
    g_part = Annotations(gallery.key_id[g], gallery.is_pedestrian[g], gallery.bits[g])
    every = slice(None)
    return _block(_Packed(q_part, device), _Packed(g_part, device), rule, every, every)


@dataclass
class Ranking:
    """Per-query retrieval results (numpy arrays)."""

    top_indices: np.ndarray          # int64 [Q, k]
    hits: np.ndarray                 # bool [Q, k]
    n_relevant: np.ndarray           # int64 [Q]  (R, in the whole gallery)
    first_relevant_rank: np.ndarray  # float64 [Q], nan where R == 0
    organisers_ap: np.ndarray        # float64 [Q]
    trec_ap: np.ndarray              # float64 [Q]


def _precision_sums(hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sum over hit ranks j of (hits so far)/j, and the number of hits."""
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2:
        raise UserError(f"hits must be 2-D [queries, k], got shape {hits.shape}")
    cumulative = np.cumsum(hits, axis=1)
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    sums = np.where(hits, cumulative / ranks, 0.0).sum(axis=1)
    return sums, hits.sum(axis=1)


def _ap_arrays(hits: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sums, n_hits = _precision_sums(hits)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    organisers = np.divide(sums, n_hits, out=np.zeros_like(sums), where=n_hits > 0)
    trec = np.divide(sums, n_relevant, out=np.zeros_like(sums), where=n_relevant > 0)
    return organisers, trec


def organisers_ap_at_k(hits: Sequence[bool]) -> float:
    """The organisers' AP of one ranked list: precision sum over hit ranks / number of hits (0 if none)."""
    row = np.asarray(list(hits), dtype=bool).reshape(1, -1)
    sums, n_hits = _precision_sums(row)
    return float(sums[0] / n_hits[0]) if n_hits[0] else 0.0


def trec_ap_at_k(hits: Sequence[bool], n_relevant: int) -> float:
    """trec-style AP of one ranked list: precision sum over hit ranks / R (0 when R == 0)."""
    row = np.asarray(list(hits), dtype=bool).reshape(1, -1)
    sums, n_hits = _precision_sums(row)
    if isinstance(n_relevant, bool) or int(n_relevant) != n_relevant or n_relevant < 0:
        raise UserError(f"n_relevant must be a non-negative integer, got {n_relevant!r}")
    if n_hits[0] > n_relevant:
        raise UserError(f"{int(n_hits[0])} hits in the list but only {n_relevant} relevant items "
                              "(expected n_relevant >= hits)")
    return float(sums[0] / n_relevant) if n_relevant else 0.0


Reorder = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rank_queries(query_emb: torch.Tensor, gallery_emb: torch.Tensor, queries: Annotations,
                 gallery: Annotations, *, rule: str = "strict", k: int = 10, query_chunk: int = 1024,
                 gallery_chunk: int = 65536, adjust: topk.BlockAdjust | None = None,
                 reorder: Reorder | None = None, depth: int | None = None) -> Ranking:
    """Rank the gallery for every query and score the rankings against the annotations.

    One chunked pass gives the top-k (topk.top_k), R per query and each query's best relevant
    score; queries whose first relevant item is outside the top-k get a second pass over their
    query chunks to count the strictly higher scores. Memory is bounded by the chunk sizes.

    A retrieval pipeline (tasks/core/retrieval.py) is ranked exactly as it submits: ``adjust`` changes
    every score block (the category split), ``reorder(values, indices)`` re-ranks the top ``depth``
    list (``depth >= k``) and returns it sorted by its new values. Within that list the first
    relevant rank counts strictly higher list values; beyond it, strictly higher adjusted scores
    (the items beyond the list keep their order, and everything in the list scored above them).
    """
    _check_rule(rule)
    topk.check_embeddings(query_emb, gallery_emb)
    for name, emb, ann in (("query", query_emb, queries), ("gallery", gallery_emb, gallery)):
        if not isinstance(ann, Annotations):
            raise UserError(f"rank_queries: {name} annotations must be an Annotations, "
                                  f"got {type(ann).__name__}")
        if emb.shape[0] != len(ann):
            raise UserError(f"rank_queries: {emb.shape[0]} {name} embeddings but {len(ann)} {name} "
                                  "annotations (expected one annotation per embedding row)")
    device = query_emb.device
    n_q = query_emb.shape[0]
    depth = k if depth is None else max(int(depth), k)
    with torch.inference_mode():
        qp, gp = _Packed(queries, device), _Packed(gallery, device)
        n_relevant = torch.zeros(n_q, dtype=torch.int64, device=device)
        best = torch.full((n_q,), -math.inf, dtype=torch.float32, device=device)

        def first_pass(q: slice, g: slice, scores: torch.Tensor) -> None:
            relevant = _block(qp, gp, rule, q, g)
            n_relevant[q] += relevant.sum(dim=1)
            block_best = scores.masked_fill(~relevant, -math.inf).max(dim=1).values
            best[q] = torch.maximum(best[q], block_best)

        values, indices = topk.top_k(query_emb, gallery_emb, depth, query_chunk=query_chunk,
                                       gallery_chunk=gallery_chunk, on_block=first_pass, adjust=adjust)
        if reorder is not None:
            values, indices = reorder(values, indices)
        hits = _relevant(qp.key[:, None], qp.ped[:, None], qp.mask[:, None],
                         gp.key[indices], gp.ped[indices], gp.mask[indices], rule)
        higher = torch.zeros(n_q, dtype=torch.int64, device=device)
        has_hit = hits.any(dim=1)
        if hits.shape[1]:
            # Every item scoring above the first hit is in the top-k, so count there.
            first = hits.to(torch.int8).argmax(dim=1, keepdim=True)
            higher = torch.where(has_hit, (values > values.gather(1, first)).sum(dim=1), higher)
        missing = (~has_hit) & (n_relevant > 0)
        if bool(missing.any()):
            chunks = sorted(set((missing.nonzero().squeeze(1) // query_chunk).tolist()))
            for q, _, scores in topk.iter_blocks(query_emb, gallery_emb, query_chunk=query_chunk,
                                                   gallery_chunk=gallery_chunk, query_chunks=chunks,
                                                   adjust=adjust):
                count = (scores > best[q, None]).sum(dim=1)
                higher[q] += torch.where(missing[q], count, torch.zeros_like(count))
        n_rel = n_relevant.cpu().numpy().astype(np.int64)
        rank = (higher + 1).cpu().numpy().astype(np.float64)
        rank[n_rel == 0] = np.nan
        hits_np = hits[:, :k].cpu().numpy().astype(bool)
        organisers, trec = _ap_arrays(hits_np, n_rel)
        return Ranking(top_indices=indices[:, :k].cpu().numpy().astype(np.int64), hits=hits_np, n_relevant=n_rel,
                       first_relevant_rank=rank, organisers_ap=organisers, trec_ap=trec)


SUMMARY_KEYS = ("map_at_10", "trec_ap_at_10", "recall_at_1", "recall_at_5", "recall_at_10",
                "mean_rank", "median_rank", "queries", "queries_without_relevant")


def _round(value) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)


def summarise(ranking: Ranking, mask: np.ndarray | None = None) -> dict:
    """The metrics over the queries selected by ``mask`` (bool [Q]; all when None).

    Keys: map_at_10 (organisers' rule), trec_ap_at_10, recall_at_1/5/10, mean_rank, median_rank
    (over queries with at least one relevant image), queries, queries_without_relevant. Metrics
    are None when no query is selected (rank statistics: when no selected query has a relevant image).
    """
    n_q = ranking.hits.shape[0]
    if mask is None:
        mask = np.ones(n_q, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_q,):
        raise UserError(f"summarise: mask must be a bool array of shape ({n_q},), "
                              f"got {mask.dtype} {mask.shape}")
    hits = np.asarray(ranking.hits, dtype=bool)[mask]
    n_rel = np.asarray(ranking.n_relevant)[mask]
    ranks = np.asarray(ranking.first_relevant_rank, dtype=np.float64)[mask]
    selected = int(mask.sum())
    out: dict = {key: None for key in SUMMARY_KEYS}
    out["queries"] = selected
    out["queries_without_relevant"] = int((n_rel == 0).sum())
    if selected == 0:
        return out
    out["map_at_10"] = _round(np.asarray(ranking.organisers_ap)[mask].mean())
    out["trec_ap_at_10"] = _round(np.asarray(ranking.trec_ap)[mask].mean())
    for cut in (1, 5, 10):
        out[f"recall_at_{cut}"] = _round(hits[:, :cut].any(axis=1).mean())
    ranked = ranks[n_rel > 0]
    if ranked.size:
        out["mean_rank"] = _round(ranked.mean())
        out["median_rank"] = _round(np.median(ranked))
    return out


def bootstrap_improvement(new_ap: np.ndarray, old_ap: np.ndarray, samples: int = 2000, seed: int = 0) -> float:
    """Paired bootstrap over queries: the fraction of resamples in which mean(new) > mean(old)."""
    new_ap = np.asarray(new_ap, dtype=np.float64).reshape(-1)
    old_ap = np.asarray(old_ap, dtype=np.float64).reshape(-1)
    if new_ap.shape != old_ap.shape:
        raise UserError(f"bootstrap_improvement: {new_ap.size} new scores but {old_ap.size} old scores "
                              "(expected one pair per query)")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise UserError(f"bootstrap_improvement: samples must be a positive integer, got {samples!r}")
    samples = int(samples)
    n = new_ap.size
    if n == 0:
        return 0.0
    diff = new_ap - old_ap
    rng = np.random.default_rng(seed)
    per_batch = max(1, (1 << 22) // n)
    wins = 0
    done = 0
    while done < samples:
        batch = min(per_batch, samples - done)
        picks = rng.integers(0, n, size=(batch, n))
        wins += int((diff[picks].mean(axis=1) > 0).sum())
        done += batch
    return wins / samples
