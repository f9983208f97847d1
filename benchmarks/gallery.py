"""Benchmark: gallery embedding, images per second, and the batch-retrieval embedding cache.

The demo model (``TrafficCLIP-Tiny``, random weights: speed does not depend on them) embeds a gallery
of image files (``--images`` synthetic demo images, or any ``--gallery`` folder):

1. **decode-once cache vs decoding from files**: ours reads the decoded, padded, resized images from
   the uint8 safetensors shards that ``trafficlip prepare`` writes (``tasks.images.write_cache`` /
   ``ImageCache``); the reference decoded every file every time it embedded (``load_image`` +
   ``prepare_image`` per image). Both embed with ``models.encode_images`` in the same batches and
   must give the same embeddings (bit for bit: the pixels are the same). Writing the shards is a one-
   time cost of the prepare stage, printed on its own.
2. **embedding cache of `trafficlip retrieve`** (tasks/serving/retrieve.py): a first call over a gallery (a miss:
   decode, embed, write the entry) against a second call (a hit: hash the files, read the entry), and
   a call with the cache off (what every call did before). All three must write the same submission.

Interleaved rounds, medians; peak extra memory of each embedding path in a fresh subprocess.

    python benchmarks/gallery.py [--images 1000] [--gallery DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import interleaved, machine, measure_here, measure_in_subprocess, median, report_measurement, seconds  # noqa: E402

from tasks.core import models  # noqa: E402
from tasks.core import params as params_mod  # noqa: E402
from tasks.core.images import ImageCache, load_image, prepare_image, write_cache  # noqa: E402
from tasks.serving import retrieve  # noqa: E402

MODEL = "TrafficCLIP-Tiny"
SHARD_SIZE = 4096


def make_workdir(work: Path, images: int, gallery: str | None) -> tuple[Path, Path, Path]:
    """(gallery folder, query file, checkpoint folder) under ``work``."""
    if gallery:
        folder = Path(gallery).resolve()
        queries = work / "queries.txt"
        queries.write_text("This is a white Audi Sedan.\nA male pedestrian is someone who walks on foot.\n")
    else:
        from tasks.demo import synth
        half = max(images // 2, 1)
        # nearly all images in the test split, whose folder is a gallery and whose text file holds queries
        synth.generate(work / "raw", vehicles=int(half / 0.9) + 1, pedestrians=int(half / 0.9) + 1, seed=0,
                       val_fraction=0.05, test_fraction=0.9)
        folder = work / "raw" / "test" / "test_images"
        queries = work / "raw" / "test" / "test_text.txt"
    checkpoint = models.save_checkpoint(models.build(MODEL), work / "model")
    return folder, queries, checkpoint


def decode_files(files: list[Path], size: int) -> torch.Tensor:
    """The reference's way: every file decoded, padded and resized, every time."""
    return torch.from_numpy(np.stack([prepare_image(load_image(path), size) for path in files]))


def embed_from_files(clip, files: list[Path], batch_size: int) -> torch.Tensor:
    return models.encode_images(clip, decode_files(files, clip.image_size), batch_size)


def embed_from_cache(clip, cache_folder: Path, batch_size: int) -> torch.Tensor:
    return models.encode_images(clip, ImageCache(cache_folder), batch_size)   # a fresh reader: shards read again


def measure(args) -> None:
    work = Path(args.workdir)
    clip = models.load_checkpoint(work / "model")
    files = [Path(line) for line in (work / "files.txt").read_text().splitlines()]
    # the same small warm-up for both (imports, kernels), so the batches' activations count in both
    models.encode_images(clip, ImageCache(work / "shards"), args.batch_size, count=8)
    if args.measure == "files":
        result = measure_here(lambda: embed_from_files(clip, files, args.batch_size))
    else:
        result = measure_here(lambda: embed_from_cache(clip, work / "shards", args.batch_size))
    report_measurement(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="synthetic gallery size")
    parser.add_argument("--gallery", help="a folder of images to use instead of synthetic ones")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--measure", choices=("files", "cache"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        measure(args)
        return 0
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="trafficlip-bench-gallery-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    gallery, queries, checkpoint = make_workdir(work, args.images, args.gallery)
    clip = models.load_checkpoint(checkpoint)
    files = retrieve.gallery_files(gallery)
    (work / "files.txt").write_text("\n".join(str(f) for f in files))
    n = len(files)
    print(f"gallery: {n} images from {gallery if args.gallery else 'the synthetic demo generator'}; "
          f"model {MODEL} ({clip.image_size} px input, random weights), batch {args.batch_size}")

    started = time.perf_counter()
    arrays = decode_files(files, clip.image_size)
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    write_cache(work / "shards", list(arrays.numpy()), clip.image_size, SHARD_SIZE)
    write_seconds = time.perf_counter() - started
    embed_from_cache(clip, work / "shards", args.batch_size)    # first calls (thread pools, kernels)

    # 1. decode-once cache vs decoding from files
    methods = {"cache": lambda: embed_from_cache(clip, work / "shards", args.batch_size),
               "files": lambda: embed_from_files(clip, files, args.batch_size),
               "read": lambda: ImageCache(work / "shards").all(),
               "decode": lambda: decode_files(files, clip.image_size)}
    times, results = interleaved(methods, args.rounds)
    same = torch.equal(results["cache"], results["files"])
    memory = {}
    if not args.no_memory:
        script = Path(__file__).resolve()
        for name in ("cache", "files"):
            memory[name] = measure_in_subprocess(script, ["--measure", name, "--workdir", str(work),
                                                          "--batch-size", str(args.batch_size)]
                                                 + (["--threads", str(args.threads)] if args.threads else []))
    t = {name: median(v) for name, v in times.items()}
    print("\n1. embedding a gallery: decode-once cache vs decoding from files")
    print(f"  {'path':<36} {'median':>10} {'best':>10} {'images/s':>9} {'peak extra':>11}")
    for name, label in (("cache", "ours: read shards + embed"), ("files", "reference: decode files + embed"),
                        ("read", "  of which reading the shards"), ("decode", "  of which decoding the files")):
        mem = f"{memory[name]['peak_extra_mb']:8.0f} MB" if name in memory else ""
        print(f"  {label:<36} {seconds(t[name]):>10} {seconds(min(times[name])):>10} {n / t[name]:9.0f} {mem:>11}")
    print(f"  one-time cost of the cache (prepare stage): decode {seconds(decode_seconds)}, "
          f"write shards {seconds(write_seconds)}")
    print(f"  ratio: {t['files'] / t['cache']:.1f}x faster from the cache "
          f"(images supplied {t['decode'] / t['read']:.0f}x "
          f"faster); same embeddings: {'yes' if same else 'NO'}")

    # 2. batch retrieval's embedding cache: first call (miss) vs second call (hit) vs cache off
    params = params_mod.defaults()
    params["mlflow"]["enabled"] = False
    cache_dir = work / "embedding-cache"
    outputs = {}

    def call(name: str, cache: str | Path):
        out = work / f"out-{name}"
        result = retrieve.run(params, gallery, queries, out, model=str(checkpoint), cache_dir=cache)
        outputs[name] = (out / "submission.json").read_text()
        return result["embedding_cache"]

    def first():
        shutil.rmtree(cache_dir, ignore_errors=True)
        return call("first", cache_dir)

    calls = {"off": lambda: call("off", retrieve.CACHE_OFF), "first": first, "second": lambda: call("second", cache_dir)}
    call_times, states = interleaved(calls, args.rounds)
    ct = {name: median(v) for name, v in call_times.items()}
    same_submissions = outputs["off"] == outputs["first"] == outputs["second"]
    entry_mb = sum(p.stat().st_size for p in cache_dir.glob("*.safetensors")) / 2 ** 20
    print(f"\n2. `trafficlip retrieve` over the same gallery ({n} images, "
          f"{len(queries.read_text().splitlines())} queries)")
    for name, label in (("off", "cache off (every call before)"), ("first", "first call (miss: embed + write)"),
                        ("second", "second call (hit)")):
        print(f"  {label:<36} {seconds(ct[name]):>10} {seconds(min(call_times[name])):>10}   cache: {states[name]}")
    print(f"  ratio: the second call is {ct['first'] / ct['second']:.1f}x faster than the first "
          f"({ct['off'] / ct['second']:.1f}x faster than without the cache); entry {entry_mb:.1f} MB; "
          f"same submissions: {'yes' if same_submissions else 'NO'}")
    ok = same and same_submissions and states["second"] == "hit" and states["first"] == "miss"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
