"""Step `predict`: the submission for the test split, in test_text.txt order.

Each query's top-k test images by the trained model; the submission keeps the original query text.
"""

from __future__ import annotations

from pathlib import Path

from tasks import log, models, tracking
from tasks.atomic import read_json
from tasks.errors import TrafficlipError
from tasks.images import ImageCache
from tasks.prepare import MANIFEST
from tasks.search import top_k
from tasks.submission import write_submission


def run(params: dict, data: str | Path, model_dir: str | Path, out: str | Path,
        train_summary: str | Path | None = None) -> dict:
    logger = log.setup("predict")
    k = params["predict"]["top_k"]
    batch_size = params["evaluate"]["batch_size"]
    data = Path(data)
    manifest = read_json(data / "test" / MANIFEST, "trafficlip prepare")
    names = [image["image"] for image in manifest["images"]]
    queries = manifest["queries"]
    if not queries:
        raise TrafficlipError(f"{data / 'test' / MANIFEST}: no test queries (test/test_text.txt is empty or missing)")
    if len(names) < k:
        raise TrafficlipError(f"{data / 'test' / MANIFEST}: {len(names)} test image(s), fewer than "
                              f"predict.top_k = {k}")
    clip = models.load_checkpoint(model_dir)
    with tracking.start(params, "predict", tags=tracking.train_run_tags(train_summary, clip)) as mlflow_run:
        clip.model.to(models.device())
        gallery = models.encode_images(clip, ImageCache(data / "test"), batch_size)
        texts = [q["text"] for q in queries]
        _, indices = top_k(models.encode_texts(clip, texts, batch_size), gallery, k)
        results = [(text, [names[i] for i in row]) for text, row in zip(texts, indices.tolist())]
        write_submission(out, results, k=k)
        mlflow_run.log_file(out)
    logger.info("wrote %s: %d queries x %d images", out, len(results), k)
    return {"submission": str(out), "queries": len(results), "gallery": len(names)}
