"""Step `predict`: the submission for the test split, in test_text.txt order.

Each query's top-k test images through tasks/core/retrieval.py (prompt suffix, category split, re-ranking,
as params.yaml `retrieval:` says), the same code `evaluate` scores. The submission keeps the original
query text. A report lists what the retrieval did, including every query that fits neither
category (it searched the whole gallery).
"""

from __future__ import annotations

from pathlib import Path

from tasks.core import log, models, retrieval
from tasks.core.atomic import read_json, write_json
from tasks.core.errors import UserError
from tasks.core.paths import MANIFEST
from tasks.core.submission import write_submission
from tasks.mlops import tracking


def run(params: dict, data: str | Path, model_dir: str | Path, out: str | Path,
        report: str | Path | None = None, train_summary: str | Path | None = None) -> dict:
    logger = log.setup("predict")
    k = params["predict"]["top_k"]
    cfg = params["retrieval"]
    retrieval.check(cfg, k, "predict.top_k")
    data = Path(data)
    manifest = read_json(data / "test" / MANIFEST, "trafficlip prepare")
    names = [image["image"] for image in manifest["images"]]
    queries = manifest["queries"]
    if not queries:
        raise UserError(f"{data / 'test' / MANIFEST}: no test queries (test/test_text.txt is empty or missing)")
    if len(names) < k:
        raise UserError(f"{data / 'test' / MANIFEST}: {len(names)} test image(s), fewer than "
                              f"predict.top_k = {k}")
    clip = models.load_checkpoint(model_dir)
    texts = [q["text"] for q in queries]
    with tracking.start(params, "predict", tags=tracking.train_run_tags(train_summary, clip)) as mlflow_run:
        enc = retrieval.encode_split(clip, data, "test", texts, cfg, params["evaluate"]["batch_size"])
        _, indices = retrieval.search(enc, cfg, k)
        results = [(text, [names[i] for i in row]) for text, row in zip(texts, indices.tolist())]
        write_submission(out, results, k=k)
        described = retrieval.describe(enc, cfg, queries)
        unmatched = described["uncategorised_queries"]
        if unmatched:
            logger.warning("%d test quer%s fit neither category and searched the whole gallery (listed in %s): %s",
                           len(unmatched), "y" if len(unmatched) == 1 else "ies", report,
                           [q["text"] for q in unmatched[:5]])
        if report:
            write_json(report, {"submission": str(out), "queries": len(results), "gallery": len(names), **described})
        mlflow_run.log_file(out)
        if report:
            mlflow_run.log_file(report)
        # what it produced, as numbers a run list can show
        mlflow_run.log_metrics({"submission_queries": len(results), "gallery_images": len(names), "top_k": k,
                                "uncategorised_queries": len(unmatched)})
    logger.info("wrote %s: %d queries x %d images", out, len(results), k)
    return {"submission": str(out), "queries": len(results), "gallery": len(names),
            "uncategorised_queries": len(unmatched)}
