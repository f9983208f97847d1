"""Batch retrieval (`trafficlip retrieve`) and its gallery-embedding cache: a second call over the same
gallery and model reuses the embeddings (no decoding, no image encoding) and gives the same outputs; a
changed image, another model or another embedding flag is a miss."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from tasks.core import models
from tasks.core.submission import read_submission
from tasks.serving import retrieve
from tests.support.params import tiny_params


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny checkpoints with different random weights."""
    folder = tmp_path_factory.mktemp("batch-models")
    return tuple(models.save_checkpoint(models.build("TrafficCLIP-Tiny", seed=seed), folder / f"model-{seed}")
                 for seed in (0, 1))


@pytest.fixture
def gallery(tiny_raw, tmp_path) -> Path:
    target = tmp_path / "gallery"
    shutil.copytree(tiny_raw / "test" / "test_images", target)
    return target


@pytest.fixture
def queries(tiny_raw) -> Path:
    return tiny_raw / "test" / "test_text.txt"


@pytest.fixture
def encoded_images(monkeypatch) -> list[int]:
    """Counts the images models.encode_images embeds."""
    counts: list[int] = []
    original = models.encode_images

    def counting(clip, images, *args, **kwargs):
        counts.append(len(images))
        return original(clip, images, *args, **kwargs)
    monkeypatch.setattr(models, "encode_images", counting)
    return counts


def params(**retrieval) -> dict:
    p = tiny_params()
    p["retrieval"].update(retrieval)
    return p


def run_retrieve(p, gallery, queries, out, model, cache):
    result = retrieve.run(p, gallery, queries, out, model=str(model), cache_dir=cache)
    report = json.loads((out / "retrieval_report.json").read_text())
    return result, report


def test_second_call_hits_the_cache_and_gives_the_same_outputs(checkpoints, gallery, queries, tmp_path,
                                                                encoded_images, monkeypatch):
    cache = tmp_path / "cache"
    p = params(rerank=True, rerank_flip=True, category_split=True, gallery_classifier="aspect_ratio")
    first, first_report = run_retrieve(p, gallery, queries, tmp_path / "one", checkpoints[0], cache)
    assert first["embedding_cache"] == "miss" and first_report["embedding_cache"]["stored"]
    assert sum(encoded_images) == 2 * first["images"]            # the images and their mirrors
    assert len(list(cache.glob("*.safetensors"))) == 1

    encoded_images.clear()
    monkeypatch.setattr(retrieve, "decode_gallery", lambda *a: pytest.fail("a cache hit decoded the gallery"))
    second, second_report = run_retrieve(p, gallery, queries, tmp_path / "two", checkpoints[0], cache)
    assert second["embedding_cache"] == "hit" and second_report["embedding_cache"]["hit"]
    assert sum(encoded_images) == 0
    first_submission = read_submission(tmp_path / "one" / "submission.json")
    assert first_submission == read_submission(tmp_path / "two" / "submission.json")
    for key in ("images", "gallery_by_category", "queries_by_category", "unreadable_images"):
        assert first_report[key] == second_report[key], key
    assert (tmp_path / "two" / "gallery.png").stat().st_size > 0


def test_a_changed_image_or_another_model_or_flag_is_a_miss(checkpoints, gallery, queries, tmp_path):
    cache = tmp_path / "cache"
    p = params(rerank=False)
    assert run_retrieve(p, gallery, queries, tmp_path / "a", checkpoints[0], cache)[0]["embedding_cache"] == "miss"
    assert run_retrieve(p, gallery, queries, tmp_path / "b", checkpoints[0], cache)[0]["embedding_cache"] == "hit"

    assert run_retrieve(p, gallery, queries, tmp_path / "c", checkpoints[1], cache)[0]["embedding_cache"] == "miss"
    flipped = params(rerank=True, rerank_flip=True)
    assert run_retrieve(flipped, gallery, queries, tmp_path / "d", checkpoints[0], cache)[0]["embedding_cache"] == "miss"

    image = sorted(gallery.iterdir())[3]
    from PIL import Image
    with Image.open(image) as original:
        changed = original.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    changed.save(image)
    assert run_retrieve(p, gallery, queries, tmp_path / "e", checkpoints[0], cache)[0]["embedding_cache"] == "miss"
    assert run_retrieve(p, gallery, queries, tmp_path / "f", checkpoints[0], cache)[0]["embedding_cache"] == "hit"
    assert len(list(cache.glob("*.safetensors"))) == 4


def test_the_key_covers_names_contents_model_and_flags(checkpoints, gallery):
    files = retrieve.gallery_files(gallery)
    key = retrieve.gallery_key(checkpoints[0], files, 64, False)
    assert key == retrieve.gallery_key(checkpoints[0], files, 64, False)
    assert len({key, retrieve.gallery_key(checkpoints[1], files, 64, False),
                retrieve.gallery_key(checkpoints[0], files, 64, True), retrieve.gallery_key(checkpoints[0], files, 32, False),
                retrieve.gallery_key(checkpoints[0], files[1:], 64, False)}) == 5
    renamed = gallery / "renamed.jpg"
    files[0].rename(renamed)
    assert retrieve.gallery_key(checkpoints[0], retrieve.gallery_files(gallery), 64, False) != key


def test_an_unusable_entry_is_recomputed_and_rewritten(checkpoints, gallery, queries, tmp_path):
    cache = tmp_path / "cache"
    p = params()
    run_retrieve(p, gallery, queries, tmp_path / "a", checkpoints[0], cache)
    [entry] = cache.glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    assert run_retrieve(p, gallery, queries, tmp_path / "b", checkpoints[0], cache)[0]["embedding_cache"] == "miss"
    assert run_retrieve(p, gallery, queries, tmp_path / "c", checkpoints[0], cache)[0]["embedding_cache"] == "hit"


def test_entries_are_safetensors_with_the_names_and_sizes(checkpoints, gallery, queries, tmp_path):
    cache = tmp_path / "cache"
    (gallery / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result, report = run_retrieve(params(), gallery, queries, tmp_path / "a", checkpoints[0], cache)
    [entry] = cache.glob("*.safetensors")
    from safetensors import safe_open
    with safe_open(str(entry), framework="pt") as handle:
        names = json.loads(handle.metadata()["names"])
        assert handle.get_tensor("gallery").shape == (result["images"], 128)
        assert handle.get_tensor("sizes").shape == (result["images"], 2)
    assert "broken.jpg" not in names and len(names) == result["images"]
    assert [u["image"] for u in report["unreadable_images"]] == ["broken.jpg"]
    # a hit reports the same unreadable image, with this gallery's path in its message
    copy = tmp_path / "copy"
    shutil.copytree(gallery, copy)
    hit, hit_report = run_retrieve(params(), copy, queries, tmp_path / "b", checkpoints[0], cache)
    assert hit["embedding_cache"] == "hit"
    assert [u["image"] for u in hit_report["unreadable_images"]] == ["broken.jpg"]
    assert str(copy) in hit_report["unreadable_images"][0]["error"]


def test_the_cache_can_be_turned_off(checkpoints, gallery, queries, tmp_path, monkeypatch):
    monkeypatch.setenv(retrieve.CACHE_ENV, "off")
    assert retrieve.cache_folder() is None
    result, report = run_retrieve(params(), gallery, queries, tmp_path / "a", checkpoints[0], None)
    assert result["embedding_cache"] == "off" and report["embedding_cache"] == {"hit": False, "off": True}
    monkeypatch.setenv(retrieve.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert retrieve.cache_folder() == tmp_path / "elsewhere"
    monkeypatch.delenv(retrieve.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert retrieve.cache_folder() == tmp_path / "xdg" / "trafficlip" / "embeddings"


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     OSError(errno.EROFS, "Read-only file system"), OSError("odd failure")])
def test_a_cache_that_cannot_be_written_is_only_a_warning(failure, checkpoints, gallery, queries, tmp_path,
                                                          monkeypatch):
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise failure
    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    result, report = run_retrieve(params(), gallery, queries, tmp_path / "a", checkpoints[0], tmp_path / "cache")
    assert result["embedding_cache"] == "miss" and report["embedding_cache"]["stored"] is False
    assert (tmp_path / "a" / "submission.json").is_file()
    assert not list((tmp_path / "cache").glob("*"))
