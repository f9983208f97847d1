"""The validation scorer shared by training (the per-epoch check), `evaluate` and the registry (re-scoring
a champion): the validation split loaded once, ranked through tasks/core/retrieval.py exactly as
`predict` submits, and scored with the organisers' metrics per category and overall.

Queries are the distinct (text, attribute) pairs of the validation labels; the gallery is every
validation image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tasks.core import models, retrieval
from tasks.core.atomic import read_json, sha256_file
from tasks.core.images import ImageCache
from tasks.core.labels import CATEGORIES, PEDESTRIAN, bits_from_key
from tasks.core.metrics import Annotations, Ranking, build_annotations, rank_queries, summarise
from tasks.core.paths import MANIFEST
from tasks.core.vocab import PEDESTRIAN_BITS


def _bits(key: str) -> list[int]:
    return list(bits_from_key(key)) if key.startswith(PEDESTRIAN + ":") else [0] * PEDESTRIAN_BITS


def validation_set(data: Path) -> tuple[dict, list[dict], Annotations, Annotations]:
    """(manifest, queries, query annotations, gallery annotations) of the validation split."""
    manifest = read_json(data / "val" / MANIFEST, "trafficlip prepare")
    images = manifest["images"]
    queries, seen = [], set()
    for pair in manifest["pairs"]:
        key = images[pair["image"]]["key"]
        if (pair["text"], key) not in seen:
            seen.add((pair["text"], key))
            queries.append({"text": pair["text"], "key": key, "category": images[pair["image"]]["category"],
                            "line": pair["line"]})
    table: dict = {}
    gallery = build_annotations([i["key"] for i in images], [i["category"] == PEDESTRIAN for i in images],
                                [_bits(i["key"]) for i in images], table)
    query_ann = build_annotations([q["key"] for q in queries], [q["category"] == PEDESTRIAN for q in queries],
                                  [_bits(q["key"]) for q in queries], table)
    return manifest, queries, query_ann, gallery


def rank(enc: retrieval.Encoded, cfg: dict, query_ann: Annotations, gallery_ann: Annotations, rule: str,
         k: int) -> Ranking:
    """The metrics' ranking of exactly what retrieval.search returns under ``cfg``."""
    return rank_queries(retrieval.query_embeddings(enc, cfg), enc.gallery, query_ann, gallery_ann, rule=rule,
                        k=k, **retrieval.hooks(enc, cfg, k))


def summarise_categories(ranking: Ranking, categories: list[str]) -> dict:
    categories = np.array(categories)
    metrics = {"overall": summarise(ranking)}
    for category in CATEGORIES:
        metrics[category] = summarise(ranking, categories == category)
    return metrics


def category_accuracy(enc: retrieval.Encoded, queries: list[dict], manifest: dict) -> dict:
    """How often the query texts and the gallery classifier name the labelled category."""
    true_queries = retrieval.category_codes([q["category"] for q in queries])
    out = {"query_category_accuracy": round(float((enc.query_codes == true_queries).float().mean()), 6)
           if len(queries) else None,
           "uncategorised_queries": int((enc.query_codes == retrieval.UNKNOWN).sum())}
    if enc.gallery_codes is not None:
        true_gallery = retrieval.category_codes([image["category"] for image in manifest["images"]])
        out["gallery_classifier_accuracy"] = round(float((enc.gallery_codes == true_gallery).float().mean()), 6)
    return out


class ValidationSet:
    """The validation split loaded once and scored for any number of models (evaluate, the per-epoch
    check during training, the registry's champion re-scoring), through tasks/core/retrieval.py exactly as
    `predict` ranks, under the ``retrieval`` params given."""

    def __init__(self, data: str | Path, rule: str, k: int, batch_size: int, retrieval_cfg: dict):
        self.data = Path(data)
        self.manifest, self.queries, self.query_ann, self.gallery_ann = validation_set(self.data)
        self.images = ImageCache(self.data / "val")
        self.categories = [q["category"] for q in self.queries]
        self.rule, self.k, self.batch_size, self.retrieval_cfg = rule, k, batch_size, retrieval_cfg
        retrieval.check(retrieval_cfg, k, "evaluate.top_k")
        self.encoded: retrieval.Encoded | None = None   # of the last model scored

    def score(self, clip: models.ClipModel) -> tuple[dict, Ranking]:
        """Per category and overall metrics, and the ranking (per-query results) of one model."""
        clip.model.to(models.device())
        enc = retrieval.encode_split(clip, self.data, "val", [q["text"] for q in self.queries],
                                     self.retrieval_cfg, self.batch_size)
        ranking = rank(enc, self.retrieval_cfg, self.query_ann, self.gallery_ann, self.rule, self.k)
        metrics = summarise_categories(ranking, self.categories)
        metrics["categories"] = category_accuracy(enc, self.queries, self.manifest)
        self.encoded = enc
        return metrics, ranking

    def fingerprint(self) -> str:
        """Equal for two evaluations whose per-query scores can be compared pair by pair: the same
        queries, gallery (labels and pixels), relevance rule, list length and retrieval settings."""
        folder = self.data / "val"
        digest = hashlib.sha256(f"{self.rule}|{self.k}|{sorted(self.retrieval_cfg.items())}|".encode())
        digest.update((folder / MANIFEST).read_bytes())
        for shard in self.images.shards:
            digest.update(sha256_file(folder / shard).encode())
        return digest.hexdigest()[:16]


def validation_for(params: dict, data: str | Path) -> ValidationSet:
    cfg = params["evaluate"]
    return ValidationSet(data, cfg["pedestrian_relevance"], cfg["top_k"], cfg["batch_size"], params["retrieval"])
