"""Step `evaluate`: score the trained model (and the untrained baseline) on the validation split.

Queries are the distinct (text, attribute) pairs of the validation labels; the gallery is every
validation image. Ranking goes through tasks/retrieval.py exactly as `predict` submits (prompt
suffix, category split from the texts and a gallery classifier, not from the labels, re-ranking), so
the metrics measure the submission. Metrics per category (the labelled one) and overall: the
organisers' mAP@10, trec-style AP@10, Recall@1/5/10, mean and median rank of the first relevant
image (see docs/metrics.md), and how well the query and gallery categories were guessed.

Pictures (when asked for): training curves, per-category bars and a few retrieval galleries under
``reports/plots/``, and the offline HTML report ``reports/eval_report.html`` (tasks/plots.py,
tasks/report.py); with tracking on they are logged to the evaluate run too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from tasks import galleries, log, models, report, retrieval, tracking
from tasks.atomic import read_json, sha256_file, write_json, write_text
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
    check during training, the registry's champion re-scoring), through tasks/retrieval.py exactly as
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


def _per_query(validation: ValidationSet, ranking: Ranking) -> list[dict]:
    """One row per validation query: its scores and ranked list (reports/eval_queries.json)."""
    images = validation.manifest["images"]
    cfg = validation.retrieval_cfg
    codes = validation.encoded.query_codes.tolist()
    return [{"text": q["text"], "category": q["category"], "query_category": retrieval.category_name(code),
             "searched_text": retrieval.searched_text(q["text"], retrieval.category_name(code), cfg),
             "organisers_ap": round(float(ap), 6),
             "trec_ap": round(float(trec), 6), "n_relevant": int(n),
             "first_relevant_rank": None if np.isnan(rank) else int(rank),
             "top": [images[i]["path"] for i in top], "hits": [bool(h) for h in hit]}
            for q, code, ap, trec, n, rank, top, hit in zip(
                validation.queries, codes, ranking.organisers_ap, ranking.trec_ap, ranking.n_relevant,
                ranking.first_relevant_rank, ranking.top_indices.tolist(), ranking.hits.tolist())]


def _galleries(params: dict, validation: ValidationSet, ranking: Ranking) -> list[report.Gallery]:
    """A few validation queries' top-k as pictures (the same queries for every model)."""
    shown = []
    for number, q in enumerate(galleries.pick_queries(validation.queries, params["mlflow"]["gallery_queries"])):
        query = validation.queries[q]
        caption = (f"{query['category']} - organisers' AP@{validation.k} {ranking.organisers_ap[q]:.3f} - "
                   f"{int(ranking.n_relevant[q])} relevant in the gallery")
        image = galleries.render(query["text"], caption, validation.images[ranking.top_indices[q]].numpy(),
                                 ranking.hits[q])
        shown.append(report.Gallery(f"{number + 1:02d}-{query['category']}.png", query["text"], caption, image))
    return shown


def _training_curve_data(run, train_steps: str | Path | None, train_run_id: str | None):
    """(steps from the CSV, the linked training run's validation history or None)."""
    from tasks import plots
    steps = plots.read_steps(train_steps) if train_steps else []
    validation = None
    if run and train_run_id:
        try:
            validation = plots.validation_history(run.client, train_run_id) or None
        except Exception as exc:  # the plot is still useful without these points
            log.setup("evaluate").warning("no validation curve: MLflow run %s: %s", train_run_id,
                                          " ".join(str(exc).split())[:200])
    return steps, validation


def _pictures(run, metrics: dict, shown: list[report.Gallery], plots_dir, report_out, train_steps,
              train_summary, train_run_id: str | None) -> tuple[list[Path], Path | None]:
    """Write the plots and galleries (``plots_dir``) and the HTML report (``report_out``) that were
    asked for; (the plot files, the report file)."""
    steps, validation = _training_curve_data(run, train_steps, train_run_id)
    plots = report.pictures(metrics, steps, validation)
    plot_files = []
    if plots_dir:
        report.save_pictures(plots_dir, plots, shown)
        plot_files = [Path(plots_dir) / picture.name for picture in plots]
    if report_out:
        info = {**report.training_info(train_summary), "MLflow training run": train_run_id,
                "MLflow evaluate run": run.run_id if run else None}
        write_text(report_out, report.build_html(metrics, plots, shown, info))
    return plot_files, Path(report_out) if report_out else None


def _log_evaluation(run, metrics: dict, shown: list[report.Gallery], files: list[Path], plot_files: list[Path],
                    report_file: Path | None) -> None:
    run.log_metrics(tracking.metric_items(metrics))
    run.log_metrics(tracking.metric_items(metrics.get("baseline", {}), prefix="baseline_"))
    for path in files:
        run.log_file(path)
    reports = tracking.project_root() / "reports"
    for name in ("ablation.md", "ablation.json"):
        run.log_file(reports / name)
    for gallery in shown:
        run.log_image(gallery.image, f"{report.GALLERIES}/{gallery.name}")
    for path in plot_files:
        run.log_file(path, "plots")
    if report_file:
        run.log_file(report_file)


def run(params: dict, data: str | Path, model_dir: str | Path, initial_dir: str | Path | None,
        metrics_out: str | Path, per_query_out: str | Path | None = None,
        train_summary: str | Path | None = None, plots_dir: str | Path | None = None,
        report_out: str | Path | None = None, train_steps: str | Path | None = None) -> dict:
    """Score the model (and the baseline), write the metrics and per-query results; with
    ``plots_dir`` the plots and galleries, with ``report_out`` the HTML report (training curves
    from ``train_steps``)."""
    logger = log.setup("evaluate")
    cfg = params["evaluate"]
    data = Path(data)
    torch.manual_seed(0)
    clip = models.load_checkpoint(model_dir)
    validation = validation_for(params, data)
    link = tracking.train_run_tags(train_summary, clip)
    with tracking.start(params, "evaluate", tags=link) as mlflow_run:
        metrics, ranking = validation.score(clip)
        metrics["relevance_rule"] = cfg["pedestrian_relevance"]
        metrics["validation_fingerprint"] = validation.fingerprint()
        unmatched = retrieval.describe(validation.encoded, params["retrieval"], validation.queries)["uncategorised_queries"]
        if unmatched:
            logger.warning("%d validation quer%s fit neither category and searched the whole gallery: %s",
                           len(unmatched), "y" if len(unmatched) == 1 else "ies", [q["text"] for q in unmatched[:5]])
        per_query = _per_query(validation, ranking)
        if cfg["baseline"] and initial_dir and Path(initial_dir).is_dir():
            metrics["baseline"], _ = validation.score(models.load_checkpoint(initial_dir))
        write_json(metrics_out, metrics)
        files = [Path(metrics_out), data / "validation_report.json"]
        if per_query_out:
            write_json(per_query_out, per_query)
            files.append(Path(per_query_out))
            mlflow_run.set_tags({"eval_queries_sha256": sha256_file(per_query_out)})
        shown = _galleries(params, validation, ranking) if (mlflow_run or plots_dir or report_out) else []
        plot_files, report_file = [], None
        if plots_dir or report_out:
            plot_files, report_file = _pictures(mlflow_run, metrics, shown, plots_dir, report_out, train_steps,
                                                train_summary, link.get("train_run_id"))
        if mlflow_run:
            _log_evaluation(mlflow_run, metrics, shown, files, plot_files, report_file)
    overall = metrics["overall"]
    logger.info("mAP@10 %.4f (baseline %s) over %d queries", overall["map_at_10"] or 0.0,
                metrics.get("baseline", {}).get("overall", {}).get("map_at_10"), overall["queries"])
    return metrics
