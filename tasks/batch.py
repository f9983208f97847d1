"""Batch retrieval with a registered model: a folder of images, a file of queries -> a submission.

`trafficlip retrieve --gallery DIR --queries FILE --out DIR [--model models:/traffic-clip@champion]`
ranks every image of DIR for every query line of FILE (the format of test/test_text.txt) and writes,
in OUT: ``submission.json`` (the challenge's format, queries in file order), ``gallery.png`` (the
top images of the first queries) and ``retrieval_report.json`` (model version, counts, any image
that could not be read). The model is the MLflow registry's ``@champion`` by default, or any local
checkpoint folder. Ranking follows params.yaml's ``retrieval`` section, as evaluate and predict do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks import galleries, log, models, retrieval, tracking
from tasks.atomic import atomic_path, write_json
from tasks.errors import InputError, TrafficlipError
from tasks.images import load_image, prepare_image
from tasks.labels import read_queries
from tasks.submission import write_submission

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PICTURE_QUERIES = 4


def resolve_model(params: dict, model: str | None, scratch: Path) -> tuple[Path, dict]:
    """A checkpoint folder for ``model``: a local folder, a models:/ URI, or (None) @champion."""
    if model and not model.startswith("models:/"):
        return Path(model), {"model": model}
    name = params["mlflow"]["registered_model"]
    uri = model or f"models:/{name}@champion"
    client = tracking.connect()
    from mlflow.exceptions import MlflowException
    info: dict = {"model": uri}
    try:
        if "@" in uri:
            alias_name, alias = uri[len("models:/"):].split("@", 1)
            version = client.get_model_version_by_alias(alias_name, alias)
            info["version"] = int(version.version)
        import mlflow
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch),
                                                    tracking_uri=tracking.tracking_uri())
    except MlflowException as exc:
        raise TrafficlipError(f"{uri}: not found in the registry at {tracking.shown_uri(tracking.tracking_uri())} "
                              f"({tracking.error_text(exc)}); train and promote a model first") from None
    return tracking.checkpoint_of(local), info


def gallery_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(folder, "gallery folder not found", expected="a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(folder, "no images", expected=f"image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def run(params: dict, gallery: str | Path, queries_path: str | Path, out: str | Path,
        model: str | None = None) -> dict:
    logger = log.setup("retrieve")
    gallery, out = Path(gallery), Path(out)
    k = params["predict"]["top_k"]
    cfg = params["retrieval"]
    retrieval.check(cfg, k, "predict.top_k")
    queries, errors = read_queries(queries_path)
    if errors:
        raise errors[0]
    if not queries:
        raise InputError(Path(queries_path), "no queries", expected="one query text per line")
    files = gallery_files(gallery)
    with tempfile.TemporaryDirectory(prefix="trafficlip-model-") as scratch:
        checkpoint, info = resolve_model(params, model, Path(scratch))
        clip = models.load_checkpoint(checkpoint)
    clip.model.to(models.device())
    arrays, sizes, names, unreadable = [], [], [], []
    for path in files:
        try:
            image = load_image(path)
        except InputError as exc:       # listed in the report and the log, never dropped silently
            unreadable.append({"image": path.name, "error": str(exc)})
            continue
        sizes.append(image.size)
        arrays.append(prepare_image(image, clip.image_size))
        names.append(path.name)
    if unreadable:
        logger.warning("%d image(s) of %s could not be read and are not ranked: %s", len(unreadable), gallery,
                       [u["image"] for u in unreadable[:5]])
    if len(names) < k:
        raise InputError(gallery, f"{len(names)} readable image(s), fewer than predict.top_k = {k}")
    images = torch.from_numpy(np.stack(arrays))
    texts = [q.text for q in queries]
    enc = retrieval.encode(clip, texts, [q.category for q in queries], images, sizes, cfg,
                           params["evaluate"]["batch_size"])
    scores, indices = retrieval.search(enc, cfg, k)
    results = [(text, [names[i] for i in row]) for text, row in zip(texts, indices.tolist())]
    out.mkdir(parents=True, exist_ok=True)
    write_submission(out / "submission.json", results, k=k)
    picture = _picture(texts, indices, images)
    with atomic_path(out / "gallery.png") as tmp:
        picture.save(tmp, format="PNG")
    described = retrieval.describe(enc, cfg, [{"text": q.text, "category": q.category, "line": q.line}
                                              for q in queries])
    report = {**info, "gallery": str(gallery), "images": len(names), "queries": len(texts), "top_k": k,
              "unreadable_images": unreadable, "submission": str(out / "submission.json"),
              "picture": str(out / "gallery.png"), **described}
    write_json(out / "retrieval_report.json", report)
    logger.info("ranked %d images for %d queries with %s -> %s", len(names), len(texts), info["model"], out)
    return {k_: report[k_] for k_ in ("model", "images", "queries", "submission", "picture")} | (
        {"version": info["version"]} if "version" in info else {})


def _picture(texts: list[str], indices: torch.Tensor, images: torch.Tensor) -> Image.Image:
    """The first queries' galleries stacked; frames are neutral (no ground truth here)."""
    parts = [galleries.render(texts[q], f"query {q + 1} of {len(texts)}: top {indices.shape[1]}",
                              images[indices[q]].numpy(), [None] * indices.shape[1])
             for q in range(min(PICTURE_QUERIES, len(texts)))]
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), (255, 255, 255))
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return canvas
