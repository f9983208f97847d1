"""Step `prepare`: validate the raw dataset and decode every image once into a cache.

Output (``data/prepared``, a DVC stage output):
  {train,val,test}/images-*.safetensors + images.json   padded, resized uint8 images
  {train,val,test}/manifest.json                        what each cached image is (labels, original
                                                        width x height), and the text pairs/queries
  vocabulary.json                                       vehicle colours/types/brands from the training labels
  validation_report.json                                every rejected line or image, and the counts
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.core import log, models
from tasks.core.atomic import write_json
from tasks.core.dataset import SplitScan, enforce, scan
from tasks.core.images import write_cache
from tasks.core.paths import MANIFEST, PREPARED_VALIDATION_REPORT, VOCABULARY


def _record_entry(record) -> dict:
    entry = {"image": record.image, "path": record.image_path, "category": record.category, "key": record.key}
    if record.vehicle is not None:
        entry.update(colour=record.vehicle.colour, brand=record.vehicle.brand, type=record.vehicle.vehicle_type)
    if record.bits is not None:
        entry["bits"] = list(record.bits)
    return entry


def _labelled_manifest(split: str, result: SplitScan, image_size: int) -> dict:
    index_of = {path: i for i, path in enumerate(result.image_paths)}
    images: list[dict | None] = [None] * len(result.image_paths)
    pairs = []
    for record in result.records:
        i = index_of[record.image_path]
        if images[i] is None:
            width, height = result.image_sizes[i]
            images[i] = {**_record_entry(record), "width": width, "height": height}
        pairs.append({"text": record.text, "image": i, "line": record.line})
    return {"split": split, "image_size": image_size, "images": images, "pairs": pairs}


def _test_manifest(result: SplitScan, image_size: int) -> dict:
    return {"split": "test", "image_size": image_size,
            "images": [{"image": Path(p).name, "path": p, "width": w, "height": h}
                       for p, (w, h) in zip(result.image_paths, result.image_sizes)],
            "queries": [{"text": q.text, "line": q.line, "category": q.category} for q in result.queries]}


def run(params: dict, data: str | Path, out: str | Path) -> dict:
    logger = log.setup("prepare")
    data, out = Path(data), Path(out)
    image_size = models.image_size_of(params["model"]["name"], params["model"]["pretrained"])
    logger.info("scanning %s (images padded to square, resized to %d px)", data, image_size)
    result = scan(data, image_size=image_size, progress=lambda it, n, d: log.progress(it, n, d, logger))
    out.mkdir(parents=True, exist_ok=True)
    enforce(result, params["data"]["on_error"], out / PREPARED_VALIDATION_REPORT)
    shard_size = params["prepare"]["shard_size"]
    for split, split_scan in result.splits.items():
        folder = out / split
        if folder.exists():
            shutil.rmtree(folder)
        write_cache(folder, split_scan.image_arrays, image_size, shard_size)
        manifest = (_test_manifest(split_scan, image_size) if split == "test"
                    else _labelled_manifest(split, split_scan, image_size))
        write_json(folder / MANIFEST, manifest)
    write_json(out / VOCABULARY, result.vocabulary.as_dict())
    counts = {split: {k: v for k, v in s.items() if k in ("lines", "kept", "quarantined", "images", "queries")}
              for split, s in result.report["splits"].items()}
    logger.info("prepared %s; %d problem(s) quarantined", counts, result.report["problems"])
    return {"out": str(out), "counts": counts, "problems": result.report["problems"]}
