"""Search a gallery folder with the champion model: `trafficlip search` and `trafficlip serve`.

A :class:`Searcher` loads the model once (the registry's ``@champion`` by default, or a version or
checkpoint folder), embeds the gallery once (through the batch-retrieval embedding cache, so a second
process over the same images and model does not embed them again) and then answers queries: each is
one text embedding and one ranking, ranked as evaluate and predict rank (params.yaml ``retrieval``:
category split, prompt suffix; re-ranking too when it is on).

`trafficlip search "a red SUV" --gallery DIR --top 10` prints the ranked image names with their
scores and writes a contact sheet (the query above its top images). `trafficlip serve --gallery DIR`
serves the same search over HTTP (tasks/serving/serve.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.core import log, models, retrieval
from tasks.core.atomic import atomic_path
from tasks.core.errors import InputError, UserError
from tasks.core.images import load_image, prepare_image
from tasks.core.labels import query_category
from tasks.report import galleries
from tasks.serving import retrieve

MAX_QUERY_CHARS = 500
MAX_TOP = 100


@dataclass
class Hit:
    rank: int
    image: str
    score: float


class Searcher:
    def __init__(self, params: dict, gallery: str | Path, model: str | None = None,
                 cache_dir: str | Path | None = None):
        self.logger = log.setup("search")
        self.params = params
        self.cfg = params["retrieval"]
        self.batch_size = params["evaluate"]["batch_size"]
        self.gallery = Path(gallery)
        files = retrieve.gallery_files(self.gallery)
        flipped = bool(self.cfg["rerank"] and self.cfg["rerank_flip"])
        folder = retrieve.cache_folder(cache_dir)
        with tempfile.TemporaryDirectory(prefix="trafficlip-model-") as scratch:
            checkpoint, self.model_info = retrieve.resolve_model(params, model, Path(scratch))
            self.clip = models.load_checkpoint(checkpoint)
            key = retrieve.gallery_key(checkpoint, files, self.clip.image_size, flipped) if folder is not None else None
        self.clip.model.to(models.device())
        entry_path = folder / f"{key}.safetensors" if folder is not None else None
        entry, cache = retrieve.embed_gallery(self.clip, self.gallery, files, entry_path, flipped, self.batch_size,
                                              self.model_info, self.logger)
        self.cached = cache["hit"]
        if not entry["names"]:
            raise InputError(self.gallery, "no readable image", expected="at least one image")
        self.names: list[str] = entry["names"]
        self.sizes = entry["sizes"]
        self.unreadable = entry["unreadable"]
        self.gallery_emb = entry["gallery"]
        self.gallery_flipped = entry["gallery_flipped"]
        self.gallery_codes = None
        if self.cfg["category_split"]:
            self.gallery_codes = retrieval.classify_gallery(self.clip, self.gallery_emb, self.sizes,
                                                            self.cfg["gallery_classifier"], self.batch_size)
        self._index = {name: i for i, name in enumerate(self.names)}
        if self.unreadable:
            self.logger.warning("%d image(s) of %s could not be read and are not searched: %s", len(self.unreadable),
                                self.gallery, [u["image"] for u in self.unreadable[:5]])
        self.logger.info("gallery %s: %d images (%s), model %s", self.gallery, len(self.names),
                         "embeddings from the cache" if self.cached else "embedded now", self.model_info["model"])

    @staticmethod
    def check(text: str, top: int) -> str:
        text = (text or "").strip()
        if not text:
            raise UserError("the query is empty: give a text such as \"a red SUV\"")
        if len(text) > MAX_QUERY_CHARS:
            raise UserError(f"the query has {len(text)} characters; at most {MAX_QUERY_CHARS}")
        if not 1 <= top <= MAX_TOP:
            raise UserError(f"top = {top}: expected 1 to {MAX_TOP}")
        return text

    def search(self, text: str, top: int = 10) -> list[Hit]:
        text = self.check(text, top)
        top = min(top, len(self.names))
        category = query_category(text)
        empty = torch.empty((0, self.clip.image_size, self.clip.image_size, 3), dtype=torch.uint8)
        enc = retrieval.encode(self.clip, [text], [category], empty, [], {**self.cfg, "category_split": False},
                               self.batch_size)
        enc.gallery, enc.gallery_flipped, enc.gallery_codes = self.gallery_emb, self.gallery_flipped, self.gallery_codes
        cfg = {**self.cfg, "rerank_k": max(self.cfg["rerank_k"], top)} if self.cfg["rerank"] else self.cfg
        scores, indices = retrieval.search(enc, cfg, top)
        return [Hit(rank + 1, self.names[i], round(float(s), 6))
                for rank, (i, s) in enumerate(zip(indices[0].tolist(), scores[0].tolist()))]

    def image_path(self, name: str) -> Path | None:
        """The file of a gallery image by its name; None for any other name (no path is ever built
        from what a client sends)."""
        index = self._index.get(name)
        return self.gallery / self.names[index] if index is not None else None

    def contact_sheet(self, text: str, hits: list[Hit]) -> Image.Image:
        pixels = np.stack([prepare_image(load_image(self.image_path(h.image)), self.clip.image_size) for h in hits])
        return galleries.render(text, f"top {len(hits)} of {len(self.names)} images, {self.model_info['model']}",
                                pixels, [None] * len(hits))


def run(params: dict, text: str, gallery: str | Path, top: int, sheet: str | Path | None,
        model: str | None = None) -> dict:
    Searcher.check(text, top)
    searcher = Searcher(params, gallery, model)
    hits = searcher.search(text, top)
    result = {"query": text.strip(), "model": searcher.model_info["model"], "gallery": str(gallery),
              "images": len(searcher.names), "embeddings": "cached" if searcher.cached else "computed",
              "results": [hit.__dict__ for hit in hits]}
    if "version" in searcher.model_info:
        result["version"] = searcher.model_info["version"]
    if sheet:
        with atomic_path(sheet) as tmp:
            searcher.contact_sheet(text, hits).save(tmp, format="PNG")
        result["contact_sheet"] = str(sheet)
    return result
