"""Benchmark: our training step against `open_clip_train` (open_clip's own training script).

Both train the same model config (TrafficCLIP-Tiny unless --model) from the same random start on the
same pairs, with the same batch size, precision (fp32 on CPU, bf16 autocast on GPU), learning rate,
warmup and CPU threads. `open_clip_train.main` runs in this process (so our model configs are
registered) on a CSV of (image path, caption), decoding and transforming JPEGs in its DataLoader as
the reference pipeline does; ours reads the prepared decode-once cache. Runs alternate (ours,
theirs, ours, theirs) so that load on the machine hits both alike.

Reported: steady-state samples/s (ours from its train summary; theirs from its own log lines,
after the first logged interval) and the whole call's wall time, each median over the rounds, and
the ratio. "Same answer": both reach a finite final loss below the first step's loss (they differ
in data order and augmentation, so weights are not compared).

Model FLOP utilisation: the model's FLOPs per training sample (torch's FLOP counter over open_clip's
forward + backward, the text at its full context length as open_clip_train runs it; both sides' rates
are converted with this one count, so the padding our text encoding skips is credited as work done)
times samples/s, over the device's peak (datasheet dense bf16 for a known GPU, a measured large fp32
matmul on CPU, or --peak-tflops).

    python benchmarks/training.py [--pairs 2000] [--batch 64] [--epochs 1] [--rounds 2]
    python benchmarks/training.py --model ViT-B-16 --batch 256 --pairs 20000   # on a GPU
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tasks.core import models  # noqa: E402
from tasks.core import params as params_mod  # noqa: E402
from tasks.core.atomic import read_json  # noqa: E402
from tasks.core.labels import images_dir, resolve_image  # noqa: E402
from tasks.demo import synth  # noqa: E402
from tasks.steps import (
    prepare,  # noqa: E402
    train,  # noqa: E402
)


def make_data(root: Path, pairs: int, model: str) -> tuple[Path, Path, Path]:
    """Demo data with about ``pairs`` training pairs, prepared for ``model``'s input size (ours) and as
    a CSV (theirs)."""
    raw = root / "raw"
    per_category = int(pairs / 0.9 / 2) + 1
    synth.generate(raw, vehicles=per_category, pedestrians=per_category, seed=5, val_fraction=0.05,
                   test_fraction=0.05)
    params = params_mod.defaults()
    params["model"]["name"] = model
    prepared = root / "prepared"
    prepare.run(params, raw, prepared)
    manifest = read_json(prepared / "train" / "manifest.json", "prepare")
    csv_path = root / "train.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for pair in manifest["pairs"]:
            name = manifest["images"][pair["image"]]["image"]
            writer.writerow([str(resolve_image(images_dir(raw, "train"), name)), pair["text"]])
    return prepared, csv_path, raw


def run_ours(prepared: Path, out: Path, args) -> dict:
    params = params_mod.defaults()
    params["model"]["name"] = args.model
    params["train"].update(epochs=args.epochs, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                           threads=args.threads, precision="auto")
    params["mlflow"]["enabled"] = False
    started = time.monotonic()
    summary = train.run(params, prepared, out / "models", out / "reports")
    wall = time.monotonic() - started
    losses = [float(r.split(",")[2]) for r in (out / "reports" / "train_steps.csv").read_text().splitlines()[1:]]
    return {"samples_per_second": summary["samples_per_second"], "wall": wall, "first_loss": losses[0],
            "final_loss": losses[-1], "steps": summary["steps"]}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_theirs(csv_path: Path, out: Path, args) -> dict:
    from open_clip_train import main as oc_main
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    argv = ["--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", ",",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", args.model,
            "--batch-size", str(args.batch), "--epochs", str(args.epochs), "--lr", str(args.lr),
            "--warmup", str(args.warmup), "--wd", "0.1", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
            "--precision", "amp_bf16" if torch.cuda.is_available() else "fp32", "--workers", str(args.workers),
            "--logs", str(out), "--name", "oc", "--save-frequency", "0", "--report-to", "",
            "--log-every-n-steps", "5", "--seed", "0", "--image-resize-mode", "longest"]
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    try:
        oc_main.main(argv)
    finally:
        logging.getLogger().removeHandler(capture)
    wall = time.monotonic() - started
    rates, losses = [], []
    for line in capture.lines:
        rate = re.search(r"([\d.]+)/s,", line)
        loss = re.search(r"Loss: ([\d.]+)", line)
        if rate and "Train Epoch" in line:
            rates.append(float(rate.group(1)))
        if loss and "Train Epoch" in line:
            losses.append(float(loss.group(1)))
    if not rates:
        raise RuntimeError("open_clip_train logged no throughput lines:\n" + "\n".join(capture.lines[-20:]))
    steady = rates[1:] or rates
    return {"samples_per_second": statistics.median(steady), "wall": wall, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None}


def model_flops_per_sample(name: str, batch: int = 4) -> float:
    """The model's FLOPs for one training sample (forward + backward of open_clip's own forward, the
    text over the full context as open_clip_train runs it), counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode
    clip = models.build(name, seed=0)
    clip.model.train()
    images = torch.randn(batch, 3, clip.image_size, clip.image_size)
    tokens = clip.tokenize(["This is a white Audi Sedan."] * batch)
    counter = FlopCounterMode(display=False)
    with counter:
        image_features, text_features, scale = clip.model(images, tokens)[:3]
        (scale * image_features @ text_features.t()).logsumexp(dim=1).sum().backward()
    return counter.get_total_flops() / batch


def peak_flops(device: str) -> tuple[float, str]:
    """(FLOP/s, what it is): the GPU's dense bf16 peak from --peak-tflops or a known table, on CPU the
    best of a few large fp32 torch.mm on this machine's threads (what the cores can actually reach)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in GPU_BF16_DENSE_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name} dense bf16 peak {tflops} TFLOP/s (datasheet)"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 2048 ** 3 / best, f"torch.mm fp32 2048^3 on {torch.get_num_threads()} CPU threads (measured)"


GPU_BF16_DENSE_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--workers", type=int, default=1, help="open_clip_train DataLoader workers")
    parser.add_argument("--model", default="TrafficCLIP-Tiny",
                        help="any open_clip architecture (random weights), e.g. ViT-B-16 or ViT-L-14 on a GPU")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak for MFU (default: datasheet bf16 for known GPUs, measured mm on CPU)")
    args = parser.parse_args()
    models.open_clip()   # registers tasks/model_configs with open_clip (both use it)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        prepared, csv_path, _ = make_data(tmp, args.pairs, args.model)
        pairs = len(read_json(prepared / "train" / "manifest.json", "prepare")["pairs"])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"{args.model}, {pairs} pairs, batch {args.batch}, {args.epochs} epoch(s), {device}, "
              f"{args.threads} threads, open_clip_train with {args.workers} DataLoader worker(s)")
        ours, theirs = [], []
        for number in range(args.rounds):
            ours.append(run_ours(prepared, tmp / f"ours-{number}", args))
            theirs.append(run_theirs(csv_path, tmp / f"theirs-{number}", args))
            print(f"round {number + 1}: ours {ours[-1]['samples_per_second']:8.1f} samples/s "
                  f"({ours[-1]['wall']:.1f} s), open_clip_train {theirs[-1]['samples_per_second']:8.1f} samples/s "
                  f"({theirs[-1]['wall']:.1f} s)", flush=True)
    ours_rate = statistics.median(r["samples_per_second"] for r in ours)
    theirs_rate = statistics.median(r["samples_per_second"] for r in theirs)
    ours_wall = statistics.median(r["wall"] for r in ours)
    theirs_wall = statistics.median(r["wall"] for r in theirs)
    learned = all(r["final_loss"] < r["first_loss"] for r in ours + theirs if r["first_loss"] is not None)
    print(f"ours:             {ours_rate:8.1f} samples/s   wall {ours_wall:6.1f} s")
    print(f"open_clip_train:  {theirs_rate:8.1f} samples/s   wall {theirs_wall:6.1f} s")
    print(f"ratio:            {ours_rate / theirs_rate:8.2f}x samples/s (target 1.5x), "
          f"{theirs_wall / ours_wall:.2f}x wall")
    print(f"both learned (final loss below first): {'yes' if learned else 'NO'}")
    flops = model_flops_per_sample(args.model)
    if args.peak_tflops:
        peak, what = args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops}"
    else:
        peak, what = peak_flops("cuda" if torch.cuda.is_available() else "cpu")
    print(f"model FLOPs per training sample: {flops / 1e9:.3f} GFLOP (forward + backward, full text context)")
    print(f"MFU (model FLOPs x samples/s / peak): ours {flops * ours_rate / peak:.1%}, "
          f"open_clip_train {flops * theirs_rate / peak:.1%}; peak {peak / 1e12:.3f} TFLOP/s = {what}")
    print(f"peak RSS of this process: {_peak_rss_mb():.0f} MB")


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
