"""Retrieval as it is submitted: the query prompt, the category split, adaption re-ranking.

`evaluate`, `predict` and `ablate` all rank through this module, so the validation metrics measure
exactly what the submission does. Each technique of the reference solution is a switch in
params.yaml ``retrieval:``:

- ``prompt_enhancement``: vehicle queries are embedded with ``prompt_suffix`` appended
  ("This is a white Audi Sedan. image taken by traffic surveillance cameras"); the submission keeps
  the text as written.
- ``category_split``: a query's category (:func:`tasks.labels.query_category`) decides its gallery.
  Test images carry no labels, so every gallery image is classified too (``gallery_classifier``:
  ``zero_shot`` prompts scored by the model, or ``aspect_ratio``: wider than tall is a vehicle).
  Images of the other category are ranked after all of the query's own (they only ever fill a list
  when its own category has fewer than k images). A query that fits neither category searches the
  whole gallery and is reported, never guessed.
- ``rerank``: adaption re-ranking. The top ``rerank_k`` candidates of a query give an adapted query:
  the first principal component of their features weighted by the model's softmax over their
  similarities, its sign aligned with the query. Each candidate is re-scored with
  ``(1 - rerank_blend) * original + rerank_blend * adapted``; with ``rerank_flip`` both similarities
  are the max over the image and its horizontal mirror. The candidate set never changes, only its
  order. Batched over queries: no Python loop per query.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tasks.core import models
from tasks.core.atomic import read_json
from tasks.core.errors import UserError
from tasks.core.images import ImageCache
from tasks.core.labels import CATEGORIES, PEDESTRIAN, VEHICLE, Vocabulary, query_category
from tasks.core.paths import MANIFEST, VOCABULARY
from tasks.core.topk import BlockAdjust, normalise, top_k

CODES = {VEHICLE: 0, PEDESTRIAN: 1}
UNKNOWN = -1
# Cosine similarities lie in [-1, 1]: subtracting 4 ranks every image of the other category after all
# of the query's own, and keeps their order among themselves.
OTHER_CATEGORY_OFFSET = 4.0
GALLERY_CLASSIFIERS = ("zero_shot", "aspect_ratio")
# Zero-shot category prompts: an image's score for a category is its best similarity to the prompts.
GALLERY_PROMPTS = {
    VEHICLE: ("a photo of a vehicle.", "This is a car.", "This is a Sedan.", "This is an SUV.",
              "This is a Bus.", "This is a Truck.", "This is a Minivan.", "This is a Microbus."),
    PEDESTRIAN: ("a photo of a pedestrian.", "A male pedestrian is someone who walks on foot.",
                 "A female pedestrian is someone who walks on foot."),
}


def category_codes(categories: Sequence[str | None]) -> torch.Tensor:
    """int64 [N]: 0 vehicle, 1 pedestrian, -1 neither."""
    return torch.tensor([CODES.get(c, UNKNOWN) if c else UNKNOWN for c in categories], dtype=torch.int64)


def category_name(code: int) -> str | None:
    return next((name for name, c in CODES.items() if c == code), None)


def searched_text(text: str, category: str | None, cfg: dict) -> str:
    """The text that is embedded for a query: vehicle queries get the prompt suffix when enabled."""
    if cfg["prompt_enhancement"] and category == VEHICLE and cfg["prompt_suffix"]:
        return f"{text.rstrip()} {cfg['prompt_suffix']}"
    return text


def check(cfg: dict, k: int, k_name: str) -> None:
    """Refuse a re-ranking depth that cannot fill the submitted list."""
    if cfg["rerank"] and cfg["rerank_k"] < k:
        raise UserError(f"retrieval.rerank_k = {cfg['rerank_k']} is smaller than {k_name} = {k} "
                              f"(expected re-ranking at least as many candidates as are returned)")


@dataclass
class Encoded:
    """One model's embeddings of one split: everything the switches choose from, computed once."""

    query_codes: torch.Tensor               # int64 [Q] from the query texts
    queries: torch.Tensor                   # [Q, D] the texts as written
    queries_enhanced: torch.Tensor | None   # [Q, D] vehicle queries with the suffix (others as written)
    gallery: torch.Tensor                   # [G, D]
    gallery_flipped: torch.Tensor | None    # [G, D] the mirrored images
    gallery_codes: torch.Tensor | None      # int64 [G] from the gallery classifier
    logit_scale: float


def classify_gallery(clip: models.ClipModel, gallery: torch.Tensor, sizes: Sequence[Sequence[int]] | None,
                     method: str, batch_size: int = 256) -> torch.Tensor:
    """int64 [G]: 0 vehicle, 1 pedestrian, for images that carry no label (the test split)."""
    if method == "aspect_ratio":
        if sizes is None or len(sizes) != gallery.shape[0]:
            raise UserError("retrieval.gallery_classifier = aspect_ratio needs the images' original "
                                  "sizes in the prepared manifest: rerun `trafficlip prepare`")
        wide = torch.tensor([w >= h for w, h in sizes], dtype=torch.bool)
        return torch.where(wide, CODES[VEHICLE], CODES[PEDESTRIAN]).to(torch.int64)
    if method != "zero_shot":
        raise UserError(f"retrieval.gallery_classifier: unknown method {method!r} "
                              f"(expected one of {', '.join(GALLERY_CLASSIFIERS)})")
    best = []
    for category in CATEGORIES:
        prompts = models.encode_texts(clip, list(GALLERY_PROMPTS[category]), batch_size)
        best.append((gallery @ prompts.t()).max(dim=1).values)
    return torch.stack(best, dim=1).argmax(dim=1).to(torch.int64)   # column order = CODES


def encode(clip: models.ClipModel, texts: Sequence[str], categories: Sequence[str | None], images,
           sizes: Sequence[Sequence[int]] | None, cfg: dict, batch_size: int,
           everything: bool = False) -> Encoded:
    """Embed queries and gallery once; ``everything`` also embeds what switched-off techniques need
    (the ablation compares them without embedding twice)."""
    codes = category_codes(categories)
    queries = models.encode_texts(clip, list(texts), batch_size)
    enhanced = None
    if everything or cfg["prompt_enhancement"]:
        enhanced = queries.clone()
        changed = [i for i, (t, c) in enumerate(zip(texts, categories))
                   if searched_text(t, c, {**cfg, "prompt_enhancement": True}) != t]
        if changed:
            suffixed = [searched_text(texts[i], categories[i], {**cfg, "prompt_enhancement": True}) for i in changed]
            enhanced[changed] = models.encode_texts(clip, suffixed, batch_size)
    gallery = models.encode_images(clip, images, batch_size)
    flipped = None
    if everything or (cfg["rerank"] and cfg["rerank_flip"]):
        flipped = models.encode_images(clip, images, batch_size, flip=True)
    gallery_codes = None
    if everything or cfg["category_split"]:
        gallery_codes = classify_gallery(clip, gallery, sizes, cfg["gallery_classifier"], batch_size)
    return Encoded(codes, queries, enhanced, gallery, flipped, gallery_codes, models.logit_scale(clip))


def image_sizes(manifest: dict) -> list[tuple[int, int]] | None:
    """Original (width, height) of the manifest's images; None for a cache prepared without them."""
    images = manifest["images"]
    if not all("width" in image for image in images):
        return None
    return [(image["width"], image["height"]) for image in images]


def encode_split(clip: models.ClipModel, data: Path, split: str, texts: list[str], cfg: dict, batch_size: int,
                 everything: bool = False) -> Encoded:
    """Embed a split's queries and images for retrieval; query categories come from the texts."""
    vocabulary = Vocabulary.from_dict(read_json(data / VOCABULARY, "trafficlip prepare"))
    manifest = read_json(data / split / MANIFEST, "trafficlip prepare")
    clip.model.to(models.device())
    return encode(clip, texts, [query_category(t, vocabulary) for t in texts], ImageCache(data / split),
                  image_sizes(manifest), cfg, batch_size, everything=everything)


def query_embeddings(enc: Encoded, cfg: dict) -> torch.Tensor:
    return enc.queries_enhanced if cfg["prompt_enhancement"] else enc.queries


def _other_category(query_codes: torch.Tensor, gallery_codes: torch.Tensor) -> torch.Tensor:
    """bool, broadcast of [q, 1] against [1, g] or [q, k]: the image is of the other category."""
    return (query_codes >= 0) & (gallery_codes != query_codes)


def split_adjust(query_codes: torch.Tensor, gallery_codes: torch.Tensor) -> BlockAdjust:
    """The category split as a score-block change: other-category images drop below all own ones."""
    def adjust(q: slice, g: slice, scores: torch.Tensor) -> torch.Tensor:
        other = _other_category(query_codes[q, None].to(scores.device), gallery_codes[None, g].to(scores.device))
        return torch.where(other, scores - OTHER_CATEGORY_OFFSET, scores)
    return adjust


def adaption_rerank(query_emb: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                    gallery: torch.Tensor, *, blend: float, logit_scale: float,
                    gallery_flipped: torch.Tensor | None = None, other: torch.Tensor | None = None,
                    query_chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-order each query's candidates (``values``/``indices`` [Q, K], sorted by score) by the blend
    of their score and their similarity to the query's adapted query; returns them sorted (stable).

    ``values`` are the candidates' scores as ranked (with the category offset where ``other`` [Q, K]
    marks other-category candidates; they stay behind the query's own).
    """
    out_values, out_indices = torch.empty_like(values), torch.empty_like(indices)
    for start in range(0, values.shape[0], query_chunk):
        rows = slice(start, start + query_chunk)
        cand_idx = indices[rows]
        offset = (other[rows].to(values.dtype) * OTHER_CATEGORY_OFFSET if other is not None
                  else torch.zeros_like(values[rows]))
        candidates = gallery[cand_idx]                                        # [q, K, D]
        original = values[rows]
        if gallery_flipped is not None:
            mirrored = gallery_flipped[cand_idx]
            flip_scores = torch.einsum("qd,qkd->qk", query_emb[rows], mirrored) - offset
            original = torch.maximum(original, flip_scores)
        if blend == 0:
            final = original
        else:
            weights = torch.softmax(logit_scale * original.double(), dim=1)    # the model's belief
            weighted = weights.sqrt()[:, :, None] * candidates.double()       # [q, K, D]
            gram = weighted @ weighted.transpose(1, 2)                        # [q, K, K]
            top_vector = torch.linalg.eigh(gram).eigenvectors[:, :, -1]       # largest eigenvalue
            component = (weighted.transpose(1, 2) @ top_vector[:, :, None]).squeeze(2)   # [q, D]
            sign = torch.where((component * query_emb[rows].double()).sum(dim=1) < 0, -1.0, 1.0)
            adapted_query = normalise((component * sign[:, None]).float())
            adapted = torch.einsum("qd,qkd->qk", adapted_query, candidates)
            if gallery_flipped is not None:
                adapted = torch.maximum(adapted, torch.einsum("qd,qkd->qk", adapted_query, mirrored))
            final = (1.0 - blend) * original + blend * (adapted - offset)
        order = torch.sort(final, dim=1, descending=True, stable=True).indices
        out_values[rows] = final.gather(1, order)
        out_indices[rows] = cand_idx.gather(1, order)
    return out_values, out_indices


def hooks(enc: Encoded, cfg: dict, k: int) -> dict:
    """``adjust``, ``reorder`` and ``depth`` for search.top_k / metrics.rank_queries under ``cfg``."""
    split = cfg["category_split"]
    if split and enc.gallery_codes is None:
        raise UserError("category_split is on but the gallery was not classified (encode with it on)")
    adjust = split_adjust(enc.query_codes, enc.gallery_codes) if split else None
    reorder, depth = None, k
    if cfg["rerank"]:
        depth = max(k, cfg["rerank_k"])
        flipped = enc.gallery_flipped if cfg["rerank_flip"] else None
        if cfg["rerank_flip"] and flipped is None:
            raise UserError("rerank_flip is on but the mirrored images were not embedded")
        query_emb = query_embeddings(enc, cfg)

        def reorder(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            other = (_other_category(enc.query_codes[:, None], enc.gallery_codes[indices]) if split else None)
            return adaption_rerank(query_emb, values, indices, enc.gallery, blend=cfg["rerank_blend"],
                                   logit_scale=enc.logit_scale, gallery_flipped=flipped, other=other)
    return {"adjust": adjust, "reorder": reorder, "depth": depth}


def search(enc: Encoded, cfg: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and gallery indices [Q, min(k, G)] of every query's final top-k: what is submitted."""
    plan = hooks(enc, cfg, k)
    values, indices = top_k(query_embeddings(enc, cfg), enc.gallery, plan["depth"], adjust=plan["adjust"])
    if plan["reorder"] is not None:
        values, indices = plan["reorder"](values, indices)
    return values[:, :k], indices[:, :k]


def describe(enc: Encoded, cfg: dict, queries: Sequence[dict]) -> dict:
    """What the retrieval did, for the reports: switches, gallery classification, unmatched queries."""
    report = {"config": dict(cfg),
              "queries_by_category": {c: int((enc.query_codes == CODES[c]).sum()) for c in CATEGORIES}}
    uncategorised = [{"line": q.get("line"), "text": q["text"]}
                     for q, code in zip(queries, enc.query_codes.tolist()) if code == UNKNOWN]
    report["uncategorised_queries"] = uncategorised
    if cfg["category_split"] and enc.gallery_codes is not None:
        report["gallery_by_category"] = {c: int((enc.gallery_codes == CODES[c]).sum()) for c in CATEGORIES}
    return report
