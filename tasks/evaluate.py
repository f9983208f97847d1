"""Step `evaluate`: score the trained model (and the untrained baseline) on the validation split.

Queries are the distinct (text, attribute) pairs of the validation labels; the gallery is every
validation image. Metrics per category and overall: the organisers' mAP@10, trec-style AP@10,
Recall@1/5/10, mean and median rank of the first relevant image (see docs/metrics.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks import log, models
from tasks.atomic import read_json, write_json
from tasks.images import ImageCache
from tasks.labels import CATEGORIES, PEDESTRIAN, bits_from_key
from tasks.metrics import Annotations, Ranking, build_annotations, rank_queries, summarise
from tasks.prepare import MANIFEST
from tasks.vocab import PEDESTRIAN_BITS


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


def score_model(clip: models.ClipModel, data: Path, rule: str, k: int, batch_size: int) -> tuple[dict, Ranking, list]:
    manifest, queries, query_ann, gallery_ann = validation_set(data)
    dev = models.device()
    clip.model.to(dev)
    gallery_emb = models.encode_images(clip, ImageCache(data / "val"), batch_size)
    query_emb = models.encode_texts(clip, [q["text"] for q in queries], batch_size)
    ranking = rank_queries(query_emb, gallery_emb, query_ann, gallery_ann, rule=rule, k=k)
    categories = np.array([q["category"] for q in queries])
    metrics = {"overall": summarise(ranking)}
    for category in CATEGORIES:
        metrics[category] = summarise(ranking, categories == category)
    return metrics, ranking, queries


def run(params: dict, data: str | Path, model_dir: str | Path, initial_dir: str | Path | None,
        metrics_out: str | Path, per_query_out: str | Path | None = None) -> dict:
    logger = log.setup("evaluate")
    cfg = params["evaluate"]
    data = Path(data)
    torch.manual_seed(0)
    clip = models.load_checkpoint(model_dir)
    metrics, ranking, queries = score_model(clip, data, cfg["pedestrian_relevance"], cfg["top_k"], cfg["batch_size"])
    metrics["relevance_rule"] = cfg["pedestrian_relevance"]
    if cfg["baseline"] and initial_dir and Path(initial_dir).is_dir():
        baseline, _, _ = score_model(models.load_checkpoint(initial_dir), data, cfg["pedestrian_relevance"],
                                     cfg["top_k"], cfg["batch_size"])
        metrics["baseline"] = baseline
    write_json(metrics_out, metrics)
    if per_query_out:
        manifest_images = read_json(data / "val" / MANIFEST)["images"]
        write_json(per_query_out, [
            {"text": q["text"], "category": q["category"], "organisers_ap": round(float(ap), 6),
             "trec_ap": round(float(trec), 6), "n_relevant": int(n),
             "first_relevant_rank": None if np.isnan(rank) else int(rank),
             "top": [manifest_images[i]["path"] for i in top], "hits": [bool(h) for h in hit]}
            for q, ap, trec, n, rank, top, hit in zip(queries, ranking.organisers_ap, ranking.trec_ap,
                                                      ranking.n_relevant, ranking.first_relevant_rank,
                                                      ranking.top_indices.tolist(), ranking.hits.tolist())])
    overall = metrics["overall"]
    logger.info("mAP@10 %.4f (baseline %s) over %d queries", overall["map_at_10"] or 0.0,
                metrics.get("baseline", {}).get("overall", {}).get("map_at_10"), overall["queries"])
    return metrics
