"""Benchmark: prepare and training's image reads as the dataset grows (the real one has 153,728 images).

Prepare at 224 px (``model.name`` ViT-B-16: only its config is read, for the input size; no weights are
built) on demo data of each ``--counts`` size (tasks/demo/synth.py, all three splits together), three ways:

- ``reference``: the prepare of commit b01833e, kept here: one process decodes every image of every
  split into lists of arrays (the scan keeps them all), and only then writes each split, each shard
  stacked into one more array and saved by safetensors;
- ``ours xN``: tasks/steps/prepare.py with ``prepare.workers`` N: decoded on N processes, in order,
  each image streamed into its shard file. Measured ``--prepare-runs`` times per N at each size, the
  worker counts in alternation (x1, x2, x1, x2, ...): a shared machine's speed drifts from minute to
  minute (one process's prepare of the same 10,000 images took 10.8 to 17.3 s here), and alternating
  hits every N alike. The median run's time is reported, with each run's; the ratio of 2 workers to 1 is
  median against median.

Training's per-process memory over ``--train-steps`` steps of ``--train-batch`` pairs (drawn across the
whole training split) with a 224-px model (TrafficCLIP-TinyViT's layers at 224 px, patch 32,
registered here), on the cache each size's prepare wrote, two ways: ``per batch`` (tasks/steps/train.py:
each batch's images read from the cache by index) and ``.all()`` (the whole split in memory first, as
train.py did before, by handing train.py a cache that holds ``ImageCache.all()``).

The other steps at each size, with the same 224-px model (random weights, saved once as a local-dir
checkpoint): ``augment`` (the training split's vehicles scored), ``evaluate`` (the validation split),
``predict`` (the test split and its queries) and ``retrieve`` (the raw test_images folder as a gallery,
as `trafficlip retrieve`/`search`/`serve` read one): wall time, images/s and peak memory.

With ``--torchrun``, training on the largest size's cache under ``torchrun --nproc_per_node`` 1 and 2
(gloo on CPU, one thread per process, ``--train-batch`` pairs per process and step): each rank's peak
memory and its resident memory a quarter of the way through and at the end (flat: no growth per step).

The in-memory ways (the reference prepare, training on ``.all()``) run up to ``--reference-max`` images:
beyond, they need about 2 x 150 KB per image (45 GB at 153,728), more than this machine has.

The demo's validation and test shares are ``--holdout`` (11.46%: the real test split's share of the
153,728 images), so every size has the real proportions.

Each run is a fresh process (this script with ``--measure``), so imports and the page cache are
shared alike. Reported per run: wall time of the step itself (imports excluded) and images/s; the
resident memory before the step (imports: torch and open_clip are most of it) and the step's peak
(``VmHWM`` of the step's process, reset after the imports), and for prepare the peak of the process
tree: that plus each decoding worker's own peak (its ``VmHWM``, read from /proc every 0.25 s), summed
(an upper bound: shared library pages count once per process, and the peaks need not coincide).
Checks: the three prepares write the same bytes (every file); both training ways end with the same
weights.

Incremental prepare: after the full prepares of each size, ``--add`` training images (another demo
draw, renamed) are added to the dataset and ours (the last ``--workers`` value) prepares it again into
a copy of the full prepare's folder (hard links) with its file state, ``--incremental-runs`` times, a
fresh copy each time: it decodes only the added images and reuses the rest. Reported: the median run's
time against the full prepare's (and each run's: one run's time varies with what the disk is still
writing), how many images it decoded and reused, and how many files it did not read at all (the file
state vouched for them).

Targets (the issue "The real dataset's scale"): peak memory at the largest size at most 1.25x the peak
at 10,000 images; prepare with 2 workers at least 1.7x as fast as with 1 (on 2 free cores: a busy
machine gives less); adding 1,000 images to a prepared dataset costs at most 10% of its full prepare.

    python benchmarks/scale.py [--counts 1000,10000,20000] [--workers 1,2] [--prepare-runs 3] [--add 1000]
                               [--train-steps 20]
                               [--reference-max 10000] [--torchrun] [--stages augment,evaluate,predict,retrieve]
                               [--results benchmarks/results.md]   # `make bench-scale`
    # the issue's sizes (about 2 hours on 2 cores, 25 GB of disk at the largest):
    python benchmarks/scale.py --counts 1000,10000,50000,153728 --train-counts 1000,10000,153728 --torchrun
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import (  # noqa: E402
    MEASURE_PREFIX,
    machine,
    peak_mb,
    report_measurement,
    reset_peak,
    rss_mb,
    section_markers,
    verdict,
)

MODEL_224 = "ViT-B-16"                  # prepare reads its config's input size only
TRAIN_MODEL = "TrafficCLIP-Scale224"    # registered by this script in the measuring process
SECTION_START, SECTION_END = section_markers("scale.py")


# ---------------------------------------------------------------------------------------------
# In the measuring process
# ---------------------------------------------------------------------------------------------

def reference_prepare(params: dict, data: Path, out: Path) -> dict:
    """The prepare of commit b01833e: every image decoded, serially, into lists first; then each split
    written, each shard stacked (np.stack) and saved by safetensors. The scan is today's with a sink
    that keeps every array, exactly what that scan's ``image_arrays`` did."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from tasks.core import models
    from tasks.core.atomic import StreamedList, atomic_path, write_json
    from tasks.core.dataset import enforce, scan
    from tasks.core.images import ImageCache
    from tasks.core.paths import MANIFEST, PREPARED_VALIDATION_REPORT, VOCABULARY
    from tasks.steps import prepare

    size = models.image_size_of(params["model"]["name"], params["model"]["pretrained"])
    shard_size = params["prepare"]["shard_size"]
    arrays: dict[str, list] = {"train": [], "val": [], "test": []}

    class Keep:     # the reference way: every array in a list
        def expect(self, split, count):
            pass

        def add(self, split, array, digest):
            arrays[split].append(array)

        def done(self, split, result):
            pass        # the reference writes every split only after the whole scan

    result = scan(data, image_size=size, sink=Keep(), workers=1)
    out.mkdir(parents=True, exist_ok=True)
    enforce(result, params["data"]["on_error"], out / PREPARED_VALIDATION_REPORT)
    for split, split_scan in result.splits.items():
        folder = out / split
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shards = []
        for start in range(0, max(len(arrays[split]), 1), shard_size):
            chunk = arrays[split][start:start + shard_size]
            tensor = (torch.from_numpy(np.stack(chunk)) if chunk else torch.empty((0, size, size, 3), dtype=torch.uint8))
            name = f"images-{start // shard_size:05d}.safetensors"
            with atomic_path(folder / name) as tmp:
                save_file({"images": tensor.contiguous()}, str(tmp))
            shards.append(name)
        write_json(folder / ImageCache.INDEX, {"image_size": size, "count": len(arrays[split]),
                                               "shard_size": shard_size, "shards": shards})
        manifest = (prepare._test_manifest(split_scan, size) if split == "test"
                    else prepare._labelled_manifest(split, split_scan, size))
        # as the reference did: the manifest's lists built whole, then encoded
        write_json(folder / MANIFEST, {k: list(v) if isinstance(v, StreamedList) else v for k, v in manifest.items()})
    write_json(out / VOCABULARY, result.vocabulary.as_dict())
    return {split: {"images": s["images"]} for split, s in result.report["splits"].items()}


def measure_prepare(method: str, workers: int, data: Path, out: Path) -> dict:
    from tasks.core import models
    from tasks.core import params as params_mod
    from tasks.steps import prepare

    params = params_mod.defaults()
    params["model"]["name"] = MODEL_224
    params["prepare"]["workers"] = workers
    models.image_size_of(MODEL_224)          # open_clip imported before the baseline is read
    before = rss_mb()
    reset_peak()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    reuse = {}
    if method == "reference":
        counts = reference_prepare(params, data, out)
    else:
        result = prepare.run(params, data, out)
        counts, reuse = result["counts"], {k: result[k] for k in ("decoded", "reused", "unread")}
    seconds = time.perf_counter() - started
    cpu, workers_cpu = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": round(seconds, 2), "images": sum(c["images"] for c in counts.values()),
            "rss_before_mb": round(before, 1), "peak_mb": round(peak_mb(), 1),
            "cpu_s": round(cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 2),
            "workers_cpu_s": round(workers_cpu.ru_utime + workers_cpu.ru_stime, 2), **reuse}


def _register_train_model(folder: Path) -> None:
    from tasks.core import models
    config = json.loads((models.CONFIG_DIR / "TrafficCLIP-TinyViT.json").read_text())
    config["vision_cfg"].update(image_size=224, patch_size=32)
    (folder / f"{TRAIN_MODEL}.json").write_text(json.dumps(config))
    models.open_clip().add_model_config(folder / f"{TRAIN_MODEL}.json")


class _WholeSplit:
    """What train.py held before: ``ImageCache(folder).all()``, the whole split in one tensor."""

    def __init__(self, folder):
        from tasks.core.images import ImageCache
        self.images = ImageCache(folder).all()
        self.size = self.images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices):
        return self.images[indices]


def measure_train(method: str, data: Path, work: Path, steps: int, batch: int) -> dict:
    import random

    from tasks.core import params as params_mod
    from tasks.core.atomic import read_json, write_json
    from tasks.steps import train

    _register_train_model(work)
    world = int(os.environ.get("WORLD_SIZE", "1"))      # under torchrun: batch pairs per process and step
    manifest = read_json(data / "train" / "manifest.json")
    pairs = random.Random(0).sample(manifest["pairs"], min(len(manifest["pairs"]), steps * batch * world))
    write_json(work / "manifest.json", {**manifest, "pairs": pairs})
    params = params_mod.defaults()
    params["model"]["name"] = TRAIN_MODEL
    params["train"].update(epochs=1, batch_size=batch, warmup_steps=2, seed=0)
    params["mlflow"]["enabled"] = False
    if method == "all":
        train.ImageCache = _WholeSplit
    import torch  # noqa: F401  (imported before the baseline, as prepare's torch is)
    before = rss_mb()
    reset_peak()
    sampler = _Sampler()
    started = time.perf_counter()
    summary = train.run(params, data, work / "models", work / "reports", manifest_path=work / "manifest.json")
    seconds = time.perf_counter() - started
    samples = sampler.stop()
    rank = int(os.environ.get("RANK", "0"))
    weights = (hashlib.sha256((work / "models" / "model" / "open_clip_model.safetensors").read_bytes()).hexdigest()
               if rank == 0 else "")
    # resident memory a quarter of the way through the run and at its end: flat means no growth per step
    quarter, end = (samples[len(samples) // 4], samples[-1]) if samples else (rss_mb(), rss_mb())
    return {"seconds": round(seconds, 2), "steps": summary["steps"], "rss_before_mb": round(before, 1),
            "peak_mb": round(peak_mb(), 1), "weights": weights[:16], "rank": rank, "world": world,
            "pairs_per_s": round(summary["steps"] * batch * world / seconds, 1),
            "rss_quarter_mb": round(quarter, 1), "rss_end_mb": round(end, 1)}


def make_model(folder: Path) -> dict:
    """The 224-px benchmark model (``TRAIN_MODEL``, random weights: cost, not quality) as a local-dir
    checkpoint, which evaluate, predict and retrieve load like any trained model."""
    from tasks.core import models
    _register_train_model(folder.parent)
    models.save_checkpoint(models.build(TRAIN_MODEL, "", seed=0), folder)
    return {"model": str(folder)}


def measure_stage(stage: str, data: Path, raw: Path, model: Path, work: Path) -> dict:
    """One of the steps that read the prepared cache (``augment``: the training split's vehicles, scored
    with this model; ``evaluate``: the validation split; ``predict``:
    the test split and its queries) or the raw gallery (``retrieve``: test_images ranked for
    test_text.txt, as `trafficlip retrieve` does), with the 224-px model; MLflow off, plots off."""
    from tasks.core import models
    from tasks.core import params as params_mod
    from tasks.serving import retrieve
    from tasks.steps import augment, evaluate, predict

    params = params_mod.defaults()
    params["mlflow"]["enabled"] = False
    params["evaluate"]["baseline"] = False
    params["augment"]["model"] = str(model)
    models.load_checkpoint(model)                 # imports and the model's first build before the baseline
    before = rss_mb()
    reset_peak()
    started = time.perf_counter()
    if stage == "augment":
        augment.run(params, data, work / "augmented", work / "augment.json")
        images = json.loads((data / "train" / "images.json").read_text())["count"]
    elif stage == "evaluate":
        evaluate.run(params, data, model, None, work / "eval.json")
        images = json.loads((data / "val" / "images.json").read_text())["count"]
    elif stage == "predict":
        predict.run(params, data, model, work / "predict")
        images = json.loads((data / "test" / "images.json").read_text())["count"]
    else:
        result = retrieve.run(params, raw / "test" / "test_images", raw / "test" / "test_text.txt", work / "retrieve",
                              model=str(model), cache_dir=work / "retrieve-cache")
        images = result.get("images", sum(1 for _ in (raw / "test" / "test_images").iterdir()))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "images": images, "rss_before_mb": round(before, 1),
            "peak_mb": round(peak_mb(), 1)}


class _Sampler:
    """This process's resident memory every 0.2 s (a thread), for the flat-over-the-run check."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(rss_mb())

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


# ---------------------------------------------------------------------------------------------
# In the parent: runs, the process tree's memory, the table
# ---------------------------------------------------------------------------------------------

def _own_peak_mb(pid: int) -> float | None:
    """A process's own peak resident memory (``VmHWM``), from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(args: list[str], timeout: float = 3600) -> dict:
    """This script with ``--measure ...`` in a fresh process; its report, plus ``tree_peak_mb``: the step's
    peak (its own VmHWM) plus the sum of its descendants' own peaks (the decoding workers' VmHWM; an
    upper bound of what they held at once).

    A peak is a high-water mark the kernel keeps, so the descendants are looked up only every 0.25 s:
    scanning the process table every 20 ms, as this did before, took enough of a core to slow the
    measured step (more so with two workers on two cores, which skewed their speed-up).

    The dirty pages of what ran before (a prepare writes 7.5 GB at 50,000 images) are written out
    first (``os.sync``): otherwise the kernel's writeback of the previous step runs during the next
    one, and an incremental prepare measured right after a full one paid for it (its three runs took
    4.2 to 5.2 s at 50,000 images)."""
    import psutil
    os.sync()
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--measure", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent)
    peaks: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(process.pid)
            own = root.cmdline()
        except psutil.Error:
            return
        while not stop.wait(0.25):
            try:
                children = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for proc in children:
                try:
                    # a child between fork and exec still shows its parent's command line and
                    # resident pages (shared with it, not its own): not a worker yet, not counted
                    if proc.cmdline() == own:
                        continue
                except psutil.Error:
                    continue
                peak = _own_peak_mb(proc.pid)
                if peak is not None:
                    peaks[proc.pid] = max(peaks.get(proc.pid, 0.0), peak)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop.set()
        sampler.join()
    workers_peak = sum(peaks.values())
    for line in reversed(stdout.splitlines()):
        if line.startswith(MEASURE_PREFIX):
            result = json.loads(line[len(MEASURE_PREFIX):])
            return {**result, "workers_peak_mb": round(workers_peak, 1),
                    "tree_peak_mb": round(result.get("peak_mb", 0) + workers_peak, 1)}
    raise RuntimeError(f"--measure {' '.join(args)}: no measurement (exit {process.returncode}): {stderr[-3000:]}")


def run_torchrun(processes: int, args: list[str], timeout: float = 3600) -> list[dict]:
    """This script with ``--measure ...`` under ``torchrun --nproc_per_node=processes`` (gloo on CPU, one
    thread per process): every rank's report, by rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(Path(__file__).resolve()), "--measure", *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env=env, timeout=timeout)
    reports = [json.loads(line[len(MEASURE_PREFIX):]) for line in done.stdout.splitlines()
               if line.startswith(MEASURE_PREFIX)]
    if done.returncode or len(reports) != processes:
        raise RuntimeError(f"torchrun x{processes} --measure {' '.join(args)}: exit {done.returncode}, "
                           f"{len(reports)} report(s): {done.stderr[-3000:]}")
    return sorted(reports, key=lambda r: r["rank"])


def files_digest(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 but the reuse keys (sources.safetensors), which the reference never wrote."""
    from tasks.core.paths import SOURCES
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SOURCES}


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the later of the middle two for an even number)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def add_training_images(raw: Path, count: int, work: Path) -> int:
    """Add ``count`` training images and their label lines to the demo dataset ``raw``: another draw
    of the demo generator (seed 12), each file and label renamed ``added-...`` so no name collides."""
    from tasks.demo import synth
    extra = work / f"extra-{time.monotonic_ns()}"
    drawn = -(-count * 10 // 6)                  # 60% of a draw is training data
    synth.generate(extra, vehicles=drawn // 2, pedestrians=drawn - drawn // 2, seed=12)
    lines = []
    for line in (extra / "train" / "train_label.txt").read_text().splitlines():
        image, rest = line.split("$", 1)
        lines.append(f"added-{image}${rest}")
    files = list((extra / "train" / "train_images").iterdir())
    for path in files:
        shutil.copyfile(path, raw / "train" / "train_images" / f"added-{path.name}")
    with open(raw / "train" / "train_label.txt", "a", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))
    shutil.rmtree(extra)
    return len(files)


def markdown_section(text: str, seconds: float, command: str) -> str:
    return (f"{SECTION_START}\n\n## scale.py\n\n`{command}` (`make bench-scale`, not part of `make bench`): "
            f"ok, {seconds:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"```\n{text.rstrip()}\n```\n\n{SECTION_END}\n")


def write_results(path: Path, text: str, seconds: float, command: str) -> None:
    """Put this run's output into ``path`` between the section markers (replacing an earlier one)."""
    from tasks.core.atomic import write_text
    old = path.read_text() if path.is_file() else ""
    section = markdown_section(text, seconds, command)
    pattern = re.compile(re.escape(SECTION_START) + ".*?" + re.escape(SECTION_END) + "\n?", re.S)
    new = pattern.sub(lambda _: section, old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    write_text(path, new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1000,10000,20000", help="dataset sizes (images, all splits)")
    parser.add_argument("--workers", default="1,2", help="prepare.workers values measured")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-counts", default="1000,10000,20000", help="sizes whose caches training reads")
    parser.add_argument("--reference-max", type=int, default=10000,
                        help="largest size the in-memory ways (the reference prepare, training on .all()) run "
                             "at: they hold every image, about 2 x 150 KB each at 224 px")
    parser.add_argument("--torchrun", action="store_true",
                        help="also train with 1 and 2 torchrun processes on the largest size's cache")
    parser.add_argument("--stages", default="augment,evaluate,predict,retrieve",
                        help="steps measured at each size with the 224-px model ('' for none)")
    parser.add_argument("--holdout", type=float, default=0.1146,
                        help="the demo's validation and test shares (the real test split is 11.46%% of the images)")
    parser.add_argument("--add", type=int, default=1000, help="training images added for the incremental prepare")
    parser.add_argument("--prepare-runs", type=int, default=3,
                        help="full prepares measured per worker count at each size, in alternation; the median "
                             "counts (the reference runs once)")
    parser.add_argument("--incremental-runs", type=int, default=3,
                        help="incremental prepares measured at each size (each into a fresh copy); the median counts")
    parser.add_argument("--results", help="also write the output into this markdown file (its scale.py section)")
    parser.add_argument("--work", help="folder for the data (default: a temporary one, removed)")
    parser.add_argument("--measure", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, method, *rest = args.measure
        if kind == "prepare":
            result = measure_prepare(method, int(rest[0]), Path(rest[1]), Path(rest[2]))
        elif kind == "model":
            result = make_model(Path(method))
        elif kind == "stage":
            result = measure_stage(method, *(Path(r) for r in rest))
        else:
            result = measure_train(method, Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]))
        report_measurement(result)
        return 0

    from tasks.demo import synth
    begun = time.perf_counter()
    counts = [int(c) for c in args.counts.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    train_counts = [c for c in (int(c) for c in args.train_counts.split(",") if c) if c in counts]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="trafficlip-scale-"))
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"machine: {machine()}")
    say(f"prepare at 224 px ({MODEL_224}'s input), shard_size 4096; training: {TRAIN_MODEL} (TinyViT layers, 224 px), "
        f"{args.train_steps} steps of {args.train_batch} pairs")
    methods = [("reference", 1)] + [("ours", w) for w in workers]
    prepare_rows: dict[tuple[str, int], dict[int, dict]] = {m: {} for m in methods}
    train_rows: dict[str, dict[int, dict]] = {"all": {}, "batch": {}}
    incremental_rows: dict[int, dict] = {}
    stage_rows: dict[str, dict[int, dict]] = {stage: {} for stage in filter(None, args.stages.split(","))}
    torchrun_rows: dict[int, list[dict]] = {}
    same_output, same_weights = [], []
    model = work / "model-224"
    try:
        if stage_rows:
            run_measured(["model", str(model)])
        for count in counts:
            raw = work / f"raw-{count}"
            started = time.perf_counter()
            synth.generate(raw, vehicles=count // 2, pedestrians=count - count // 2, seed=11,
                           val_fraction=args.holdout, test_fraction=args.holdout)
            print(f"  generated {count} images in {time.perf_counter() - started:.0f} s", flush=True)
            # the reference once, then ours at each worker count in turn, --prepare-runs rounds: this
            # machine's speed drifts from minute to minute, and alternating hits every way alike
            plan = [m for m in methods[:1] if count <= args.reference_max]
            plan += [m for _ in range(args.prepare_runs) for m in methods[1:]]
            from tasks.steps.prepare import state_path
            runs_of: dict[tuple[str, int], list[dict]] = {m: [] for m in methods}
            digests = set()
            kept = work / f"prepared-{count}-ours{workers[-1]}"
            for i, (method, n) in enumerate(plan):
                out = work / f"prepared-{count}-{method}{n}"
                row = run_measured(["prepare", method, str(n), str(raw), str(out)])
                runs_of[(method, n)].append(row)
                print(f"  {count:>6} {method} x{n}, run {len(runs_of[(method, n)])}: {row}", flush=True)
                digests.add(json.dumps(files_digest(out), sort_keys=True))
                if out != kept or (method, n) in plan[i + 1:]:     # one full-size cache on disk at a time;
                    shutil.rmtree(out)                            # each run a full prepare, no reuse
                    state_path(out).unlink(missing_ok=True)
            for method, rows in runs_of.items():
                if rows:
                    prepare_rows[method][count] = {**median_run(rows), "all_seconds": [r["seconds"] for r in rows],
                                                   **{k: max(r[k] for r in rows) for k in ("peak_mb", "tree_peak_mb")}}
            same_output.append(len(digests) == 1)
            for stage in stage_rows:
                folder = work / f"{stage}-{count}"
                folder.mkdir()
                row = run_measured(["stage", stage, str(kept), str(raw), str(model), str(folder)])
                stage_rows[stage][count] = row
                print(f"  {count:>6} {stage}: {row}", flush=True)
                shutil.rmtree(folder)
            if args.torchrun and count == max(counts):
                for processes in (1, 2):
                    folder = work / f"torchrun-{count}-{processes}"
                    folder.mkdir()
                    torchrun_rows[processes] = run_torchrun(processes, ["train", "batch", str(kept), str(folder),
                                                                        str(args.train_steps), str(args.train_batch)])
                    print(f"  {count:>6} torchrun x{processes}: {torchrun_rows[processes]}", flush=True)
                    shutil.rmtree(folder)
            if count in train_counts:
                for method in ("all", "batch") if count <= args.reference_max else ("batch",):
                    folder = work / f"train-{count}-{method}"
                    folder.mkdir()
                    row = run_measured(["train", method, str(kept), str(folder), str(args.train_steps),
                                        str(args.train_batch)])
                    train_rows[method][count] = row
                    print(f"  {count:>6} train {method}: {row}", flush=True)
                    shutil.rmtree(folder)
                if count in train_rows["all"]:
                    same_weights.append(train_rows["all"][count]["weights"] == train_rows["batch"][count]["weights"])
            if args.add:
                added = add_training_images(raw, args.add, work)
                runs = []
                for attempt in range(args.incremental_runs):
                    # each run into its own copy of the full prepare's folder (hard links: the prepare
                    # writes new files and links unchanged shards, never changing one in place) and state
                    copy = work / f"incremental-{count}-{attempt}"
                    subprocess.run(["cp", "-al", str(kept), str(copy)], check=True)
                    if state_path(kept).exists():
                        shutil.copyfile(state_path(kept), state_path(copy))
                    runs.append(run_measured(["prepare", "ours", str(workers[-1]), str(raw), str(copy)]))
                    print(f"  {count:>6} + {added} incremental x{workers[-1]}, run {attempt + 1}: {runs[-1]}",
                          flush=True)
                    shutil.rmtree(copy)
                    state_path(copy).unlink(missing_ok=True)
                incremental_rows[count] = {**median_run(runs), "added": added, "all_seconds": [r["seconds"] for r in runs]}
            shutil.rmtree(kept)
            shutil.rmtree(raw)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    say()
    say(f"prepare (all splits; ours: the median of {args.prepare_runs} runs, its CPU time, the highest peaks)   "
        "images   seconds (each run)   images/s   CPU s: step + workers   RSS before (imports)   peak RSS   "
        "peak of process tree")
    for (method, n), rows in prepare_rows.items():
        for count, r in rows.items():
            name = "reference (serial)" if method == "reference" else f"ours, {n} worker{'s' if n > 1 else ''}"
            each = " / ".join(f"{x:.1f}" for x in r["all_seconds"])
            say(f"{name:<22} {count:>6}   {r['seconds']:>7.1f} ({each})   {r['images'] / r['seconds']:>8.0f}   "
                f"{r['cpu_s']:>8.1f} + {r['workers_cpu_s']:>6.1f}   {r['rss_before_mb']:>17.0f} MB   "
                f"{r['peak_mb']:>5.0f} MB   {r['tree_peak_mb']:>8.0f} MB")
    say()
    largest, base = max(counts), (10000 if 10000 in counts else None)
    for (method, n), rows in prepare_rows.items():
        if not rows:
            continue
        name = "reference" if method == "reference" else f"ours x{n}"
        first = rows[min(rows)]
        growth = ", ".join(f"{c}: {rows[c]['tree_peak_mb'] / first['tree_peak_mb']:.2f}x" for c in counts if c in rows)
        say(f"growth ratio of the tree's peak, {name} (over {min(rows)} images): {growth}")
    if any(c > args.reference_max for c in counts):
        say(f"(the reference runs up to {args.reference_max} images: it holds every decoded image and stacks each "
            f"shard again, about {2 * 224 * 224 * 3 / 2 ** 20 * max(counts) / 1024:.0f} GB at {max(counts)})")
    if base and largest > base:
        for n in workers:
            rows = prepare_rows[("ours", n)]
            ratio = rows[largest]["tree_peak_mb"] / rows[base]["tree_peak_mb"]
            say(f"peak at {largest} <= 1.25x peak at {base} (ours x{n}): {ratio:.2f}x: {verdict(ratio <= 1.25)}")
        reference = prepare_rows[methods[0]]
        top = max(reference, default=base)
        if top > base:
            say(f"(reference: peak at {top} = {reference[top]['tree_peak_mb'] / reference[base]['tree_peak_mb']:.2f}x "
                f"its peak at {base})")
    if 1 in workers and 2 in workers:
        say(f"load average now {' / '.join(f'{x:.1f}' for x in os.getloadavg())}: wall-time ratios need free cores")
        for count in counts:
            one, two = prepare_rows[("ours", 1)][count], prepare_rows[("ours", 2)][count]
            ratio = one["seconds"] / two["seconds"]
            met = verdict(ratio >= 1.7)
            each = " / ".join(f"{a / b:.2f}" for a, b in zip(one["all_seconds"], two["all_seconds"]))
            # on 2 free cores the 2-worker run takes at least its CPU time / 2, and at least each of the
            # step's and the busier worker's own CPU time (the workers share the decoding about equally)
            step, decode = two["cpu_s"], two["workers_cpu_s"]
            bound = (one["cpu_s"] + one["workers_cpu_s"]) / max((step + decode) / 2, step, decode / 2)
            say(f"ratio at {count}: 2 workers {ratio:.2f}x faster than 1, median against median (each round: "
                f"{each}; target 1.7x): {met}; from CPU time (step {step:.1f} s + workers {decode:.1f} s against "
                f"{one['cpu_s']:.1f} s alone), {bound:.2f}x on 2 free cores")
    for count in prepare_rows[methods[0]]:
        ratio = prepare_rows[methods[0]][count]["seconds"] / prepare_rows[("ours", workers[-1])][count]["seconds"]
        say(f"ratio at {count}: ours x{workers[-1]} {ratio:.2f}x faster than the reference")
    if incremental_rows:
        say()
        say(f"incremental prepare (ours x{workers[-1]}, into a copy of the full prepare's folder; the median of "
            f"{args.incremental_runs} runs)   added   decoded   reused (not read)   seconds (each run)   of the full "
            f"prepare   peak of process tree")
        for count, r in incremental_rows.items():
            share = r["seconds"] / prepare_rows[("ours", workers[-1])][count]["seconds"]
            # the target is the issue's: 1,000 images (2%) added to 50,000; adding 10% of a dataset is
            # reported, not judged against it
            target = (f"target <= 10%, only the added decoded): {verdict(share <= 0.10 and r['decoded'] == r['added'])}"
                      if r["added"] * 50 <= count else "the 10% target is for 2% added, not judged here)")
            each = " / ".join(f"{x:.1f}" for x in r["all_seconds"])
            say(f"{count:>6} images + {r['added']:>5}   {r['decoded']:>7}   {r['reused']:>6} ({r.get('unread', 0)})   "
                f"{r['seconds']:>5.1f} ({each})   {share:>6.1%} ({target}   {r['tree_peak_mb']:>6.0f} MB")
    say(f"same output (every file's bytes, reference and ours x{'/x'.join(map(str, workers))}, every size): "
        f"{'yes' if all(same_output) else 'NO'}")
    if train_counts:
        say()
        say("training, one process       images in split   seconds   RSS before   peak RSS   peak - before")
        for method, name in (("all", "whole split (.all())"), ("batch", "read per batch (ours)")):
            for count, r in train_rows[method].items():
                say(f"{name:<26} {count:>6} (all splits)   {r['seconds']:>7.1f}   {r['rss_before_mb']:>7.0f} MB   "
                    f"{r['peak_mb']:>5.0f} MB   {r['peak_mb'] - r['rss_before_mb']:>8.0f} MB")
        small, big = min(train_counts), max(train_counts)
        if big > small:
            for method, name in (("all", ".all()"), ("batch", "per batch")):
                rows = train_rows[method]
                top = max(rows, default=small)
                if top > small:
                    say(f"training peak ratio {name}: {top} / {small} images = "
                        f"{rows[top]['peak_mb'] / rows[small]['peak_mb']:.2f}x")
        say(f"same weights (per batch vs .all(), every size): {'yes' if all(same_weights) else 'NO'}")
    if stage_rows:
        say()
        say(f"steps with the 224-px model ({TRAIN_MODEL}, random weights)   images   seconds   images/s   "
            "RSS before   peak RSS")
        for stage, rows in stage_rows.items():
            for count, r in rows.items():
                say(f"{stage:<9} at {count:>6} (all splits)   {r['images']:>6}   {r['seconds']:>7.1f}   "
                    f"{r['images'] / r['seconds']:>8.0f}   {r['rss_before_mb']:>7.0f} MB   {r['peak_mb']:>5.0f} MB")
            if largest in rows and base in rows:
                ratio = rows[largest]["peak_mb"] / rows[base]["peak_mb"]
                say(f"{stage}: peak at {largest} = {ratio:.2f}x its peak at {base} (target <= 1.25x): "
                    f"{verdict(ratio <= 1.25)}; under 4 GB: {verdict(rows[largest]['peak_mb'] < 4096)}")
    if torchrun_rows:
        say()
        say(f"training under torchrun on the {largest}-image cache ({args.train_steps} steps of {args.train_batch} "
            "pairs per process, gloo, 1 thread each)")
        say("processes   rank   seconds   pairs/s (all)   RSS before   peak RSS   RSS at 1/4   RSS at end")
        for processes, reports in torchrun_rows.items():
            for r in reports:
                say(f"{processes:>9}   {r['rank']:>4}   {r['seconds']:>7.1f}   {r['pairs_per_s']:>13.1f}   "
                    f"{r['rss_before_mb']:>7.0f} MB   {r['peak_mb']:>5.0f} MB   {r['rss_quarter_mb']:>7.0f} MB   "
                    f"{r['rss_end_mb']:>7.0f} MB")
        if 1 in torchrun_rows and 2 in torchrun_rows:
            single = torchrun_rows[1][0]["peak_mb"]
            worst = max(r["peak_mb"] for r in torchrun_rows[2])
            say(f"each of 2 processes within 10% of one process's peak: {worst / single:.2f}x: {verdict(worst <= 1.1 * single)}")
            growth = max(r["rss_end_mb"] / r["rss_quarter_mb"] for rs in torchrun_rows.values() for r in rs)
            say(f"flat over the run (RSS at the end / at a quarter, worst rank): {growth:.2f}x: {verdict(growth <= 1.05)}")
    if args.results:
        command = "python benchmarks/scale.py " + " ".join(a for a in sys.argv[1:])
        write_results(Path(args.results), "\n".join(lines), time.perf_counter() - begun, command.strip())
        print(f"wrote the scale.py section of {args.results}")
    return 0 if all(same_output) and all(same_weights) else 1


if __name__ == "__main__":
    sys.exit(main())
