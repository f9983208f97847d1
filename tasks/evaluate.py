"""Step `evaluate`: score the trained model (and the untrained baseline) on the validation split.

Queries are the distinct (text, attribute) pairs of the validation labels; the gallery is every
validation image. Metrics per category and overall: the organisers' mAP@10, trec-style AP@10,
Recall@1/5/10, mean and median rank of the first relevant image (see docs/metrics.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from tasks import galleries, log, models, tracking
from tasks.atomic import read_json, sha256_file, write_json
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


class ValidationSet:
    """The validation split loaded once and scored for any number of models (evaluate, and the
    per-epoch check during training)."""

    def __init__(self, data: str | Path, rule: str, k: int, batch_size: int):
        self.data = Path(data)
        self.manifest, self.queries, self.query_ann, self.gallery_ann = validation_set(self.data)
        self.images = ImageCache(self.data / "val")
        self.categories = np.array([q["category"] for q in self.queries])
        self.rule, self.k, self.batch_size = rule, k, batch_size

    def score(self, clip: models.ClipModel) -> tuple[dict, Ranking]:
        """Per category and overall metrics, and the ranking (per-query results) of one model."""
        clip.model.to(models.device())
        gallery_emb = models.encode_images(clip, self.images, self.batch_size)
        query_emb = models.encode_texts(clip, [q["text"] for q in self.queries], self.batch_size)
        ranking = rank_queries(query_emb, gallery_emb, self.query_ann, self.gallery_ann, rule=self.rule, k=self.k)
        metrics = {"overall": summarise(ranking)}
        for category in CATEGORIES:
            metrics[category] = summarise(ranking, self.categories == category)
        return metrics, ranking

    def fingerprint(self) -> str:
        """Equal for two evaluations whose per-query scores can be compared pair by pair: the same
        queries, gallery (labels and pixels), relevance rule and list length."""
        folder = self.data / "val"
        digest = hashlib.sha256(f"{self.rule}|{self.k}|".encode())
        digest.update((folder / MANIFEST).read_bytes())
        for shard in self.images.shards:
            digest.update(sha256_file(folder / shard).encode())
        return digest.hexdigest()[:16]


def score_model(clip: models.ClipModel, data: Path, rule: str, k: int, batch_size: int) -> tuple[dict, Ranking, list]:
    validation = ValidationSet(data, rule, k, batch_size)
    metrics, ranking = validation.score(clip)
    return metrics, ranking, validation.queries


def _per_query(validation: ValidationSet, ranking: Ranking) -> list[dict]:
    """One row per validation query: its scores and ranked list (reports/eval_queries.json)."""
    images = validation.manifest["images"]
    return [{"text": q["text"], "category": q["category"], "organisers_ap": round(float(ap), 6),
             "trec_ap": round(float(trec), 6), "n_relevant": int(n),
             "first_relevant_rank": None if np.isnan(rank) else int(rank),
             "top": [images[i]["path"] for i in top], "hits": [bool(h) for h in hit]}
            for q, ap, trec, n, rank, top, hit in zip(validation.queries, ranking.organisers_ap, ranking.trec_ap,
                                                      ranking.n_relevant, ranking.first_relevant_rank,
                                                      ranking.top_indices.tolist(), ranking.hits.tolist())]


def _log_evaluation(run, params: dict, metrics: dict, validation: ValidationSet, ranking: Ranking,
                    files: list[Path]) -> None:
    run.log_metrics(tracking.metric_items(metrics))
    run.log_metrics(tracking.metric_items(metrics.get("baseline", {}), prefix="baseline_"))
    for path in files:
        run.log_file(path)
    reports = tracking.project_root() / "reports"
    for name in ("ablation.md", "ablation.json"):
        run.log_file(reports / name)
    for number, q in enumerate(galleries.pick_queries(validation.queries, params["mlflow"]["gallery_queries"])):
        query = validation.queries[q]
        caption = (f"{query['category']} - organisers' AP@{validation.k} {ranking.organisers_ap[q]:.3f} - "
                   f"{int(ranking.n_relevant[q])} relevant in the gallery")
        image = galleries.render(query["text"], caption, validation.images[ranking.top_indices[q]].numpy(),
                                 ranking.hits[q])
        run.log_image(image, f"galleries/{number + 1:02d}-{query['category']}.png")


def run(params: dict, data: str | Path, model_dir: str | Path, initial_dir: str | Path | None,
        metrics_out: str | Path, per_query_out: str | Path | None = None,
        train_summary: str | Path | None = None) -> dict:
    logger = log.setup("evaluate")
    cfg = params["evaluate"]
    data = Path(data)
    torch.manual_seed(0)
    clip = models.load_checkpoint(model_dir)
    validation = ValidationSet(data, cfg["pedestrian_relevance"], cfg["top_k"], cfg["batch_size"])
    with tracking.start(params, "evaluate", tags=tracking.train_run_tags(train_summary, clip)) as mlflow_run:
        metrics, ranking = validation.score(clip)
        metrics["relevance_rule"] = cfg["pedestrian_relevance"]
        metrics["validation_fingerprint"] = validation.fingerprint()
        if cfg["baseline"] and initial_dir and Path(initial_dir).is_dir():
            metrics["baseline"], _ = validation.score(models.load_checkpoint(initial_dir))
        write_json(metrics_out, metrics)
        files = [Path(metrics_out), data / "validation_report.json"]
        if per_query_out:
            write_json(per_query_out, _per_query(validation, ranking))
            files.append(Path(per_query_out))
            mlflow_run.set_tags({"eval_queries_sha256": sha256_file(per_query_out)})
        if mlflow_run:
            _log_evaluation(mlflow_run, params, metrics, validation, ranking, files)
    overall = metrics["overall"]
    logger.info("mAP@10 %.4f (baseline %s) over %d queries", overall["map_at_10"] or 0.0,
                metrics.get("baseline", {}).get("overall", {}).get("map_at_10"), overall["queries"])
    return metrics
