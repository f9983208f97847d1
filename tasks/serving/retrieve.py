"""Batch retrieval with a registered model: a folder of images, a file of queries -> a submission.

`trafficlip retrieve --gallery DIR --queries FILE --out DIR [--model models:/traffic-clip@champion]`
ranks every image of DIR for every query line of FILE (the format of test/test_text.txt) and writes,
in OUT: ``submission.json`` (the challenge's format, queries in file order), ``gallery.png`` (the
top images of the first queries) and ``retrieval_report.json`` (model version, counts, any image
that could not be read). The model is the MLflow registry's ``@champion`` by default, or any local
checkpoint folder. Ranking follows params.yaml's ``retrieval`` section, as evaluate and predict do.

Gallery embeddings are cached. Decoding and embedding the gallery is nearly all of a call's work, and
a gallery is often ranked again (new queries, the same images), so the image embeddings (and the
mirrored images' when re-ranking uses them), the images' original sizes and the unreadable files are
kept in one safetensors file per key in the *embedding cache folder*:

- ``cache_dir`` (the ``run`` argument), else the environment variable ``TRAFFICLIP_EMBEDDING_CACHE``,
  else ``$XDG_CACHE_HOME/trafficlip/embeddings`` (``~/.cache/trafficlip/embeddings``). A user cache
  rather than the output folder, because reuse is across calls that write to different outputs.
  ``off`` (argument or variable) turns the cache off.
- key: sha256 over the cache format, the checkpoint's weights and config files (so a registry version
  and a local folder with the same weights share entries, and a re-created registry cannot serve
  stale ones), the model input size, whether mirrored embeddings are needed (``rerank`` and
  ``rerank_flip``), and every image file's name and content hash. A changed, added or removed image,
  another model or another flag is a miss, never a stale hit. Files are hashed on every call (reading
  is much cheaper than decoding and embedding).
- entries are written atomically (tasks/core/atomic.py), safetensors only (never pickle); an unreadable
  entry is a miss and is rewritten; a cache that cannot be written only logs a warning. Entries are
  never evicted: deleting the folder, or any file in it, is always safe.

:func:`embed_gallery` is the one way in (``trafficlip retrieve`` and the search use it); a hit and a miss
rank identically, since the gallery's embeddings always come from an entry. The report's
``embedding_cache`` says whether the call hit, and which file it used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from tasks.core import log, models, retrieval
from tasks.core.atomic import atomic_path, sha256_file, write_json
from tasks.core.errors import InputError, UserError
from tasks.core.images import load_image, prepare_image
from tasks.core.labels import read_queries
from tasks.core.submission import write_submission
from tasks.mlops import tracking
from tasks.report import galleries

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PICTURE_QUERIES = 4
CACHE_ENV = "TRAFFICLIP_EMBEDDING_CACHE"
CACHE_OFF = "off"
CACHE_FORMAT = 1          # bump when what an entry holds, or how images become embeddings, changes
GALLERY_PLACEHOLDER = "{gallery}"


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
        source = uri
        if "@" in uri:   # the alias's version now, and that version's files (the alias may move meanwhile)
            alias_name, alias = uri[len("models:/"):].split("@", 1)
            version = client.get_model_version_by_alias(alias_name, alias)
            info["version"] = int(version.version)
            source = f"models:/{alias_name}/{version.version}"
        elif re.fullmatch(r"models:/.+/\d+", uri):
            info["version"] = int(uri.rsplit("/", 1)[1])
        import mlflow
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(scratch),
                                                    tracking_uri=tracking.tracking_uri())
    except MlflowException as exc:
        raise UserError(f"{uri}: not found in the registry at {tracking.shown_uri(tracking.tracking_uri())} "
                              f"({tracking.error_text(exc)}); train and promote a model first") from None
    return tracking.checkpoint_of(local), info


def followed_alias(params: dict, model: str | None) -> tuple[str, str] | None:
    """(registered model, alias) when ``model`` names an alias (None: ``@champion``); None for a fixed
    version or a checkpoint folder, which never change."""
    if model is None:
        return params["mlflow"]["registered_model"], "champion"
    if model.startswith("models:/") and "@" in model:
        name, alias = model[len("models:/"):].split("@", 1)
        return name, alias
    return None


def alias_version(name: str, alias: str) -> int | None:
    """The version ``name@alias`` points to now (None: no such alias)."""
    from mlflow.exceptions import MlflowException
    try:
        return int(tracking.connect().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def gallery_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(folder, "gallery folder not found", expected="a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(folder, "no images", expected=f"image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


# --- the embedding cache ----------------------------------------------------------------------------

def cache_folder(cache_dir: str | Path | None = None) -> Path | None:
    """Where gallery embeddings are cached (see the module docstring); None when the cache is off."""
    value = str(cache_dir) if cache_dir is not None else os.environ.get(CACHE_ENV, "")
    if value.strip().lower() == CACHE_OFF:
        return None
    if value.strip():
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trafficlip" / "embeddings"


def gallery_key(checkpoint: Path, files: list[Path], image_size: int, flipped: bool) -> str:
    """sha256 over everything an entry's embeddings depend on (see the module docstring)."""
    digest = hashlib.sha256()

    def add(label: str, value) -> None:
        digest.update(json.dumps([label, value]).encode() + b"\n")

    add("format", CACHE_FORMAT)
    for name in (models.CONFIG_FILE, models.WEIGHTS_FILE):
        add(name, sha256_file(checkpoint / name))
    add("image_size", int(image_size))
    add("flipped", bool(flipped))
    for path in files:
        add("image", [path.name, sha256_file(path)])
    return digest.hexdigest()


def load_entry(path: Path, flipped: bool, logger=None) -> dict | None:
    """A cache entry (gallery, gallery_flipped, sizes, names, unreadable), or None when missing or unusable."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        names = json.loads(metadata["names"])
        entry = {"gallery": tensors["gallery"], "gallery_flipped": tensors.get("gallery_flipped"),
                 "sizes": [tuple(size) for size in tensors["sizes"].tolist()], "names": names,
                 "unreadable": json.loads(metadata["unreadable"])}
        if int(metadata.get("format", -1)) != CACHE_FORMAT or entry["gallery"].shape[0] != len(names) \
                or len(entry["sizes"]) != len(names) or (flipped and entry["gallery_flipped"] is None):
            raise ValueError("entry does not match its key")
        return entry
    except Exception as exc:    # any unreadable entry is a miss: it is recomputed and rewritten
        if logger is not None:
            logger.warning("embedding cache entry %s is unusable (%s); recomputing it", path, exc)
        return None


def store_entry(path: Path, entry: dict, info: dict, logger=None) -> bool:
    """Write an entry atomically; a cache that cannot be written is a warning, not a failure."""
    from safetensors.torch import save_file
    tensors = {"gallery": entry["gallery"].detach().to("cpu", torch.float32).contiguous(),
               "sizes": torch.tensor(entry["sizes"], dtype=torch.int64).reshape(-1, 2)}
    if entry["gallery_flipped"] is not None:
        tensors["gallery_flipped"] = entry["gallery_flipped"].detach().to("cpu", torch.float32).contiguous()
    metadata = {"format": str(CACHE_FORMAT), "names": json.dumps(entry["names"]),
                "unreadable": json.dumps(entry["unreadable"]), "model": str(info.get("model", "")),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return True
    except Exception as exc:    # a full disk or a read-only home (atomic_path names them): the run goes on
        if logger is not None:
            logger.warning("could not write the embedding cache entry %s (%s); continuing without it", path, exc)
        return False


def decode_gallery(gallery: Path, files: list[Path], image_size: int,
                   batch_size: int) -> Iterator[tuple[torch.Tensor, list, list, list]]:
    """The readable images in batches of ``batch_size`` (uint8 [n, S, S, 3]), each with its images'
    original sizes and names and the unreadable files met since the previous batch (with their
    errors): one batch of pixels in memory at a time, whatever the gallery's size."""
    arrays, sizes, names, unreadable = [], [], [], []
    for path in files:
        try:
            image = load_image(path)
        except InputError as exc:       # listed in the report and the log, never dropped silently
            unreadable.append({"image": path.name, "error": str(exc)})
            continue
        sizes.append(image.size)
        arrays.append(prepare_image(image, image_size))
        names.append(path.name)
        if len(arrays) == batch_size:
            yield torch.from_numpy(np.stack(arrays)), sizes, names, unreadable
            arrays, sizes, names, unreadable = [], [], [], []
    if arrays or unreadable:
        images = (torch.from_numpy(np.stack(arrays)) if arrays
                  else torch.empty((0, image_size, image_size, 3), dtype=torch.uint8))
        yield images, sizes, names, unreadable


def _portable(unreadable: list[dict], gallery: Path) -> list[dict]:
    """Errors with the gallery's folder as a placeholder: an entry serves any copy of the same images."""
    return [{**u, "error": u["error"].replace(str(gallery), GALLERY_PLACEHOLDER)} for u in unreadable]


def _localised(unreadable: list[dict], gallery: Path) -> list[dict]:
    return [{**u, "error": u["error"].replace(GALLERY_PLACEHOLDER, str(gallery))} for u in unreadable]


def embed_gallery(clip: models.ClipModel, gallery: Path, files: list[Path], entry_path: Path | None, flipped: bool,
                  batch_size: int, info: dict, logger=None) -> tuple[dict, dict]:
    """The gallery's embeddings from the cache entry at ``entry_path``, or decoded and embedded now, a
    batch at a time (and stored there); ``entry_path`` None: no cache.

    Returns the entry (gallery, gallery_flipped, sizes, names, unreadable, with this gallery's paths
    in the errors) and the cache status for the report.
    """
    entry = load_entry(entry_path, flipped, logger) if entry_path is not None else None
    if entry is not None:
        return {**entry, "unreadable": _localised(entry["unreadable"], gallery)}, {"hit": True, "file": str(entry_path)}
    embedded, mirrored, sizes, names, unreadable = [], [], [], [], []
    batches = decode_gallery(gallery, files, clip.image_size, batch_size)
    if len(files) >= models.PROGRESS_MIN_BATCHES * batch_size:      # a long pass: its progress in the log
        batches = log.progress(batches, -(-len(files) // batch_size), "decode and embed the gallery",
                               logger or logging.getLogger("trafficlip.retrieve"))
    for images, batch_sizes, batch_names, batch_unreadable in batches:
        # the batches encode_images would make of the whole gallery: the same embeddings, bit for bit
        embedded.append(models.encode_images(clip, images, batch_size))
        if flipped:
            mirrored.append(models.encode_images(clip, images, batch_size, flip=True))
        sizes += batch_sizes
        names += batch_names
        unreadable += batch_unreadable
    dim = clip.model_cfg.get("embed_dim", 0)
    entry = {"gallery": torch.cat(embedded) if embedded else torch.empty((0, dim)),
             "gallery_flipped": (torch.cat(mirrored) if mirrored else torch.empty((0, dim))) if flipped else None,
             "sizes": [tuple(size) for size in sizes], "names": names, "unreadable": _portable(unreadable, gallery)}
    if entry_path is None:
        cache = {"hit": False, "off": True}
    else:
        cache = {"hit": False, "stored": store_entry(entry_path, entry, info, logger), "file": str(entry_path)}
    return {**entry, "unreadable": unreadable}, cache


# --- the run ----------------------------------------------------------------------------------------

def run(params: dict, gallery: str | Path, queries_path: str | Path, out: str | Path,
        model: str | None = None, cache_dir: str | Path | None = None) -> dict:
    logger = log.setup("retrieve")
    gallery, out = Path(gallery), Path(out)
    k = params["predict"]["top_k"]
    cfg = params["retrieval"]
    batch_size = params["evaluate"]["batch_size"]
    retrieval.check(cfg, k, "predict.top_k")
    queries, errors = read_queries(queries_path)
    if errors:
        raise errors[0]
    if not queries:
        raise InputError(Path(queries_path), "no queries", expected="one query text per line")
    files = gallery_files(gallery)
    flipped = bool(cfg["rerank"] and cfg["rerank_flip"])
    folder = cache_folder(cache_dir)
    with tempfile.TemporaryDirectory(prefix="trafficlip-model-") as scratch:
        checkpoint, info = resolve_model(params, model, Path(scratch))
        clip = models.load_checkpoint(checkpoint)
        key = gallery_key(checkpoint, files, clip.image_size, flipped) if folder is not None else None
    clip.model.to(models.device())
    entry_path = folder / f"{key}.safetensors" if folder is not None else None
    entry, cache = embed_gallery(clip, gallery, files, entry_path, flipped, batch_size, info, logger)
    names, sizes, unreadable = entry["names"], entry["sizes"], entry["unreadable"]
    if len(names) < k:
        raise InputError(gallery, f"{len(names)} readable image(s), fewer than predict.top_k = {k}")
    texts = [q.text for q in queries]
    # The queries are embedded exactly as retrieval.encode embeds them (given no images); the gallery's
    # fields are the entry's, and the category classifier runs on them as encode would.
    empty = torch.empty((0, clip.image_size, clip.image_size, 3), dtype=torch.uint8)
    enc = retrieval.encode(clip, texts, [q.category for q in queries], empty, [], {**cfg, "category_split": False},
                           batch_size)
    enc.gallery, enc.gallery_flipped = entry["gallery"], entry["gallery_flipped"]
    if cfg["category_split"]:
        enc.gallery_codes = retrieval.classify_gallery(clip, enc.gallery, sizes, cfg["gallery_classifier"],
                                                       batch_size)
    if unreadable:
        logger.warning("%d image(s) of %s could not be read and are not ranked: %s", len(unreadable), gallery,
                       [u["image"] for u in unreadable[:5]])
    scores, indices = retrieval.search(enc, cfg, k)
    results = [(text, [names[i] for i in row]) for text, row in zip(texts, indices.tolist())]
    out.mkdir(parents=True, exist_ok=True)
    write_submission(out / "submission.json", results, k=k)
    picture = _picture(texts, indices, _picture_images(gallery, names, indices, clip.image_size))
    with atomic_path(out / "gallery.png") as tmp:
        picture.save(tmp, format="PNG")
    described = retrieval.describe(enc, cfg, [{"text": q.text, "category": q.category, "line": q.line}
                                              for q in queries])
    report = {**info, "gallery": str(gallery), "images": len(names), "queries": len(texts), "top_k": k,
              "unreadable_images": unreadable, "submission": str(out / "submission.json"),
              "picture": str(out / "gallery.png"), "embedding_cache": cache, **described}
    write_json(out / "retrieval_report.json", report)
    logger.info("ranked %d images for %d queries with %s -> %s (gallery embeddings: %s)", len(names), len(texts),
                info["model"], out, "cached" if cache["hit"] else "computed")
    return {k_: report[k_] for k_ in ("model", "images", "queries", "submission", "picture")} | (
        {"version": info["version"]} if "version" in info else {}) | {"embedding_cache": "hit" if cache["hit"] else
                                                                       ("off" if cache.get("off") else "miss")}


def _picture_images(gallery: Path, names: list[str], indices: torch.Tensor, size: int) -> dict[int, np.ndarray]:
    """The images the picture shows, by gallery index, decoded again (a few dozen: the gallery's pixels
    are never all in memory)."""
    shown = sorted(set(indices[:PICTURE_QUERIES].flatten().tolist()))
    return {i: prepare_image(load_image(gallery / names[i]), size) for i in shown}


def _picture(texts: list[str], indices: torch.Tensor, images: dict[int, np.ndarray]) -> Image.Image:
    """The first queries' galleries stacked; frames are neutral (no ground truth here)."""
    parts = [galleries.render(texts[q], f"query {q + 1} of {len(texts)}: top {indices.shape[1]}",
                              np.stack([images[i] for i in indices[q].tolist()]), [None] * indices.shape[1])
             for q in range(min(PICTURE_QUERIES, len(texts)))]
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), (255, 255, 255))
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return canvas
