"""Step `evaluate`: score the trained model (and the untrained baseline) on the validation split.

Queries are the distinct (text, attribute) pairs of the validation labels; the gallery is every
validation image. Ranking goes through tasks/core/retrieval.py exactly as `predict` submits (prompt
suffix, category split from the texts and a gallery classifier, not from the labels, re-ranking), so
the metrics measure the submission. Metrics per category (the labelled one) and overall: the
organisers' mAP@10, trec-style AP@10, Recall@1/5/10, mean and median rank of the first relevant
image (see docs/metrics.md), and how well the query and gallery categories were guessed.

Pictures (when asked for): training curves, per-category bars and a few retrieval galleries under
``reports/plots/``, and the offline HTML report ``reports/eval_report.html`` (tasks/report/plots.py,
tasks/report/html.py); with tracking on they are logged to the evaluate run too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks.core import log, models, retrieval
from tasks.core.atomic import sha256_file, write_json, write_text
from tasks.core.metrics import Ranking
from tasks.core.paths import PREPARED_VALIDATION_REPORT
from tasks.core.scoring import ValidationSet, validation_for
from tasks.mlops import tracking
from tasks.report import galleries, html


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


def _galleries(params: dict, validation: ValidationSet, ranking: Ranking) -> list[html.Gallery]:
    """A few validation queries' top-k as pictures (the same queries for every model)."""
    shown = []
    for number, q in enumerate(galleries.pick_queries(validation.queries, params["mlflow"]["gallery_queries"])):
        query = validation.queries[q]
        caption = (f"{query['category']} - organisers' AP@{validation.k} {ranking.organisers_ap[q]:.3f} - "
                   f"{int(ranking.n_relevant[q])} relevant in the gallery")
        image = galleries.render(query["text"], caption, validation.images[ranking.top_indices[q]].numpy(),
                                 ranking.hits[q])
        shown.append(html.Gallery(f"{number + 1:02d}-{query['category']}.png", query["text"], caption, image))
    return shown


def _training_curve_data(run, train_steps: str | Path | None, train_run_id: str | None):
    """(steps from the CSV, the linked training run's validation history or None)."""
    from tasks.report import plots
    steps = plots.read_steps(train_steps) if train_steps else []
    validation = None
    if run and train_run_id:
        try:
            validation = plots.validation_history(run.client, train_run_id) or None
        except Exception as exc:  # the plot is still useful without these points
            log.setup("evaluate").warning("no validation curve: MLflow run %s: %s", train_run_id,
                                          " ".join(str(exc).split())[:200])
    return steps, validation


def _pictures(run, metrics: dict, shown: list[html.Gallery], plots_dir, report_out, train_steps,
              train_summary, train_run_id: str | None) -> tuple[list[Path], Path | None]:
    """Write the plots and galleries (``plots_dir``) and the HTML report (``report_out``) that were
    asked for; (the plot files, the report file)."""
    steps, validation = _training_curve_data(run, train_steps, train_run_id)
    plots = html.pictures(metrics, steps, validation)
    plot_files = []
    if plots_dir:
        html.save_pictures(plots_dir, plots, shown)
        plot_files = [Path(plots_dir) / picture.name for picture in plots]
    if report_out:
        info = {**html.training_info(train_summary), "MLflow training run": train_run_id,
                "MLflow evaluate run": run.run_id if run else None}
        write_text(report_out, html.build_html(metrics, plots, shown, info))
    return plot_files, Path(report_out) if report_out else None


def _log_evaluation(run, metrics: dict, shown: list[html.Gallery], files: list[Path], plot_files: list[Path],
                    report_file: Path | None) -> None:
    run.log_metrics(tracking.metric_items(metrics))
    tracking.log_pipeline_summary(run, metrics)
    run.log_metrics(tracking.metric_items(metrics.get("baseline", {}), prefix="baseline_"))
    for path in files:
        run.log_file(path)
    reports = tracking.project_root() / "reports"
    for name in ("ablation.md", "ablation.json"):
        run.log_file(reports / name)
    for gallery in shown:
        run.log_image(gallery.image, f"{html.GALLERIES}/{gallery.name}")
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
        files = [Path(metrics_out), data / PREPARED_VALIDATION_REPORT]
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
