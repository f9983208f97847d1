"""Step `train`: fine-tune (or train from scratch) an open_clip model on the prepared pairs.

Read top to bottom: ``run`` and ``_train`` tell the story (device, data, model, optimizer, batches
and schedule, resume, the loop with its checkpoints, the outputs); the helpers they call follow,
grouped: processes and device, data and batches, optimizer and learning-rate schedule, checkpoints.
- AdamW (fused where the device supports it), linear warmup then cosine decay, gradient clipping.
- bf16 autocast on GPU (precision auto|bf16), fp32 on CPU; seeded and deterministic on CPU.
- A checkpoint (local-dir folder + optimizer state) at the end of every epoch, and every
  ``checkpoint_every_steps`` if set; rerunning resumes from the last complete one when the
  configuration is unchanged, and ends with the same weights as an uninterrupted run.
- Several processes (``torchrun --nproc_per_node=N -m tasks train ...``): ``train.batch_size`` pairs
  per process, features gathered across processes with gradients (open_clip's ``ClipLoss``), so N
  processes x batch B give the loss and gradients of one process x batch N*B; rank 0 alone writes
  checkpoints, reports and MLflow. NCCL on GPUs, gloo on CPU.
- Per-step loss and learning rate go to ``reports/train_steps.csv`` (a DVC plot) and, with tracking
  on, to MLflow together with validation metrics at every epoch end and the logged model
  (``tasks/mlops/tracking.py``: the ``tracker`` calls below).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from tasks.core import batchnorm, log, models, textenc
from tasks.core import loss as loss_mod
from tasks.core.atomic import read_json, remove_stale_temporaries, write_json, write_text
from tasks.core.errors import TrafficlipError, UserError
from tasks.core.images import ImageCache, to_model_input
from tasks.core.paths import MANIFEST
from tasks.mlops import tracking

STEPS_CSV_FIELDS = ("step", "epoch", "loss", "lr")


def run(params: dict, data: str | Path, out: str | Path, reports: str | Path,
        stop_after_steps: int | None = None, manifest_path: str | Path | None = None) -> dict:
    """Train; write ``<out>/model`` (final), ``<out>/initial`` (the starting model, for the baseline).

    The pairs come from ``manifest_path`` (the augmented manifest in the pipeline; by default the
    prepared ``<data>/train/manifest.json``), the images always from the prepared cache.
    ``stop_after_steps`` interrupts the run after that many optimizer steps (tests use it to
    simulate a crash); the next call resumes from the last checkpoint.
    """
    dist = init_distributed()
    try:
        tracked = params if dist.main else {**params, "mlflow": {**params["mlflow"], "enabled": False}}
        with tracking.start(tracked, "train") as mlflow_run:
            tracker = tracking.TrainTracker(mlflow_run, tracked, data)
            return _train(params, Path(data), Path(out), Path(reports), stop_after_steps, tracker, manifest_path,
                          dist)
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(params: dict, data: Path, out: Path, reports: Path, stop_after_steps: int | None,
           tracker: tracking.TrainTracker, manifest_path: str | Path | None, dist: Distributed) -> dict:
    """The training run of this process (``run`` has joined the processes and started tracking)."""
    logger = log.setup("train" if dist.world == 1 else f"train[rank {dist.rank}/{dist.world}]")
    cfg = params["train"]
    dev, use_bf16 = _setup_device(cfg, dist)

    # data: the decoded-image cache (each batch's images read from it by index: tasks/core/images.py) and
    # every pair's text, tokenised once
    manifest_path = Path(manifest_path) if manifest_path else data / "train" / MANIFEST
    manifest = read_json(manifest_path,
                         "trafficlip prepare" if manifest_path.name == MANIFEST else "trafficlip augment")
    pairs = manifest["pairs"]
    images_meta = manifest["images"]
    if len(pairs) < 2:
        raise UserError(f"{manifest_path}: {len(pairs)} training pair(s); "
                              "contrastive training needs at least 2")
    images = ImageCache(data / "train")
    if len(images_meta) != len(images):
        raise UserError(f"{manifest_path} describes {len(images_meta)} images but the cache "
                              f"{data / 'train'} holds {len(images)}: rerun `trafficlip augment` after `prepare`")
    image_index = torch.tensor([p["image"] for p in pairs], dtype=torch.long)

    # model, loss and optimizer
    clip = models.build(params["model"]["name"], params["model"]["pretrained"], seed=cfg["seed"])
    if images.size != clip.image_size:
        raise UserError(f"prepared images are {images.size} px but {clip.name} takes "
                              f"{clip.image_size} px: rerun `prepare` for this model")
    tokens = clip.tokenize([p["text"] for p in pairs])
    if dist.main and not (out / "initial").is_dir():
        models.save_checkpoint(clip, out / "initial", extra={"role": "initial", "seed": cfg["seed"]})
    clip.model.to(dev)
    loss_fn = contrastive_loss(dist, cfg["shared_captions"])
    optimizer = _optimizer(clip.model, cfg["lr"], cfg["weight_decay"], dev)

    # batches and schedule: per process; the global batch (what one step's loss sees) is
    # batch_size x processes
    groups = _pair_groups(cfg["batching"], pairs, images_meta)
    batch_size = min(cfg["batch_size"], max(len(g) for g in groups) // dist.world)
    global_batch = batch_size * dist.world
    if batch_size < 2:
        raise UserError(f"{len(pairs)} training pairs cannot make batches of at least 2 pairs for each of "
                              f"{dist.world} processes")
    steps_per_epoch = len(_global_batches(groups, global_batch, cfg["seed"], 0, dist, logger))
    total_steps = steps_per_epoch * cfg["epochs"]
    warmup = min(cfg["warmup_steps"], total_steps // 2)

    # resume from the last complete checkpoint if it was made with the same configuration
    checkpoints = Checkpoints(out / "checkpoints")
    run_fingerprint = fingerprint(params, data, manifest)
    if dist.world > 1:
        run_fingerprint += f"-x{dist.world}"
    # the loop needs image_index, tokens and groups only: the manifest's dicts (a few hundred bytes per
    # pair and image) are not kept through training, so the step's peak does not add them to the model's
    pair_count = len(pairs)
    del manifest, pairs, images_meta
    step, rows = _resume(checkpoints, run_fingerprint, total_steps, clip, optimizer, out, dist, logger)
    dist.barrier()
    net = distributed_model(clip.model, dist, dev)

    # the loop: one optimizer step per global batch, a checkpoint at every epoch end (and every
    # checkpoint_every_steps), validation at every epoch end
    logger.info("training %s on %d pairs: %d epochs x %d steps, batch %d%s, lr %g, %s on %s",
                clip.name, pair_count, cfg["epochs"], steps_per_epoch, batch_size,
                f" x {dist.world} processes" if dist.world > 1 else "", cfg["lr"], "bf16" if use_bf16 else "fp32", dev)
    clip.model.train()
    started, trained_samples, checkpoint_seconds = time.monotonic(), 0, 0.0
    if step == 0 and dist.main:
        tracker.validate(clip, 0)  # the starting point of the validation curves
    every = cfg["checkpoint_every_steps"]
    first_step = step
    # each progress line: steps and samples/s, the epoch, the loss of the last step, the time left
    bar = log.progress(range(step, total_steps), total_steps - step, "train", logger, samples_per_item=global_batch,
                       status=lambda: f"epoch {rows[-1]['epoch']}/{cfg['epochs']}, loss {float(rows[-1]['loss']):.4f}"
                       if rows else f"epoch {step // steps_per_epoch + 1}/{cfg['epochs']}")
    for step in bar:
        epoch, offset = divmod(step, steps_per_epoch)
        if offset == 0 or step == first_step:
            batches = _global_batches(groups, global_batch, cfg["seed"], epoch, dist, logger)
        global_batch_indices = batches[offset]
        batch = shard(global_batch_indices, dist)
        x = to_model_input(images[image_index[batch]], clip.mean, clip.std).to(dev, non_blocking=True)
        t = tokens[batch].to(dev, non_blocking=True)
        lr = lr_at(step, total_steps, cfg["lr"], warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            image_features, text_features, logit_scale = net(x, t)[:3]
            loss = loss_fn(image_features, text_features, logit_scale, tokens[global_batch_indices])
        if not torch.isfinite(loss):
            raise UserError(f"training diverged at step {step} (loss {loss.item()}); lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(clip.model.parameters(), cfg["grad_clip"])
        optimizer.step()
        with torch.no_grad():  # as CLIP: keep the temperature in a sane range
            clip.model.logit_scale.clamp_(0, math.log(100))
        trained_samples += len(batch) * dist.world
        rows.append({"step": step + 1, "epoch": epoch + 1, "loss": f"{loss.item():.6f}", "lr": f"{lr:.6g}"})
        done = step + 1
        if dist.main and (done % steps_per_epoch == 0 or (every and done % every == 0) or done == total_steps):
            state = {"step": done, "epoch": done / steps_per_epoch, "fingerprint": run_fingerprint}
            saving = time.monotonic()
            checkpoints.save(clip, optimizer, state, _steps_csv(rows))
            checkpoint_seconds += time.monotonic() - saving
        if dist.main and done % steps_per_epoch == 0:
            tracker.epoch_end(rows, done, done // steps_per_epoch, clip)
        if stop_after_steps is not None and done >= stop_after_steps and done < total_steps:
            logger.info("stopping after step %d as asked (stop_after_steps)", done)
            tracker.interrupted(done)
            return {"interrupted_at": done}

    # outputs (rank 0): the steps CSV, the final model and the summary; training speed counts the
    # steps alone, without the validation passes and the checkpoint writes
    elapsed = time.monotonic() - started - tracker.seconds - checkpoint_seconds
    if not dist.main:
        return {"rank": dist.rank, "world_size": dist.world, "steps": total_steps}
    write_text(reports / "train_steps.csv", _steps_csv(rows))
    models.save_checkpoint(clip, out / "model", extra={"role": "trained", "fingerprint": run_fingerprint,
                                                       "steps": total_steps, "epochs": cfg["epochs"]})
    summary = {"steps": total_steps, "epochs": cfg["epochs"], "pairs": pair_count, "batch_size": batch_size,
               "processes": dist.world, "global_batch_size": global_batch,
               "final_loss": float(rows[-1]["loss"]) if rows else None,
               "samples_per_second": round(trained_samples / elapsed, 2) if trained_samples else None,
               "seconds": round(elapsed, 2), "checkpoint_seconds": round(checkpoint_seconds, 2),
               "device": dev.type, "precision": "bf16" if use_bf16 else "fp32",
               "fingerprint": run_fingerprint}
    summary.update(tracker.finish(rows, summary, out / "model"))
    write_json(reports / "train_summary.json", summary)
    logger.info("trained: final loss %s, %s samples/s", summary["final_loss"], summary["samples_per_second"])
    return summary


# ---------------------------------------------------------------------------------------------
# Processes and device
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed() -> Distributed:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)


def _setup_device(cfg: dict, dist: Distributed) -> tuple[torch.device, bool]:
    """(device, whether to autocast to bf16); sets the CPU threads and, on CPU, deterministic algorithms."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    dev = torch.device("cuda", dist.local_rank) if dist.world > 1 and torch.cuda.is_available() else models.device()
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
    use_bf16 = cfg["precision"] == "bf16" or (cfg["precision"] == "auto" and dev.type == "cuda")
    return dev, use_bf16


def distributed_model(model: torch.nn.Module, dist: Distributed, dev: torch.device) -> torch.nn.Module:
    """The training forward (tasks/core/textenc.py: text encoded without the padding it never looks at),
    under DistributedDataParallel when there are several processes."""
    model = textenc.ClipForward(model)
    if dist.world == 1:
        return model
    batchnorm.globalise(model)   # BatchNorm (a ResNet image tower) over the global batch, as with 1 process
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def contrastive_loss(dist: Distributed, shared_captions: bool) -> loss_mod.ContrastiveLoss:
    """open_clip's CLIP loss (tasks/core/loss.py); across processes every rank scores its pairs against the
    gathered batch."""
    return loss_mod.ContrastiveLoss(dist.rank, dist.world, shared_captions)


def shard(batch: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """This rank's contiguous share of a global batch (rank order = the gathered feature order)."""
    size = len(batch) // dist.world
    return batch[dist.rank * size:(dist.rank + 1) * size]


# ---------------------------------------------------------------------------------------------
# Data and batches
# ---------------------------------------------------------------------------------------------

def _pair_groups(batching: str, pairs: list[dict], images_meta: list[dict]) -> list[torch.Tensor]:
    """The pair indices that may share a batch: one group per category with ``by_category`` (batches
    drawn within one category are harder: a pedestrian is never a negative for a car query), else all."""
    if batching == "by_category":
        categories = [images_meta[p["image"]]["category"] for p in pairs]
        return [torch.tensor([i for i, c in enumerate(categories) if c == name]) for name in sorted(set(categories))]
    return [torch.arange(len(pairs))]


def epoch_batches(groups: list[torch.Tensor], batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The batches of one epoch: each group shuffled and cut into full batches, batch order shuffled.

    Depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    batches = []
    for group in groups:
        shuffled = group[torch.randperm(len(group), generator=generator)]
        usable = len(group) // batch_size * batch_size if len(group) >= batch_size else len(group)
        batches.extend(shuffled[start:start + batch_size] for start in range(0, usable, batch_size)
                       if len(shuffled[start:start + batch_size]) >= 2)
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def _global_batches(groups: list[torch.Tensor], global_batch: int, seed: int, epoch: int, dist: Distributed,
                    logger) -> list[torch.Tensor]:
    """The epoch's global batches; across processes only those that split evenly (a smaller last
    batch of a small category group is left out of this epoch, and the log says so)."""
    batches = epoch_batches(groups, global_batch, seed, epoch)
    if dist.world == 1:
        return batches
    even = [b for b in batches if len(b) == global_batch]
    if len(even) < len(batches) and epoch == 0:
        logger.info("%d batch(es) smaller than %d pairs do not split over %d processes; left out each epoch",
                    len(batches) - len(even), global_batch, dist.world)
    return even


# ---------------------------------------------------------------------------------------------
# Optimizer and learning-rate schedule
# ---------------------------------------------------------------------------------------------

def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float, dev: torch.device):
    groups = _param_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings' scale and the logit scale (as open_clip_train)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(step: int, total_steps: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total_steps``."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------
# Checkpoints and resuming
# ---------------------------------------------------------------------------------------------

def fingerprint(params: dict, data_dir: Path, manifest: dict) -> str:
    """What a checkpoint must match to be resumed: model and train params and the training data
    (the image cache and the pairs' texts: an augmented manifest that changed no caption is the
    same data as the prepared one)."""
    digest = hashlib.sha256(json.dumps({"model": params["model"], "train": {
        k: v for k, v in params["train"].items() if k not in ("threads", "checkpoint_every_steps")}},
        sort_keys=True).encode())
    digest.update(json.dumps([[pair["text"], pair["image"]] for pair in manifest["pairs"]]).encode())
    index = data_dir / "train" / "images.json"
    if index.is_file():
        digest.update(index.read_bytes())
    return digest.hexdigest()[:16]


def _resume(checkpoints: Checkpoints, run_fingerprint: str, total_steps: int, clip, optimizer: torch.optim.Optimizer,
            out: Path, dist: Distributed, logger) -> tuple[int, list[dict]]:
    """Load the last complete checkpoint into ``clip`` and ``optimizer`` if it was made with the same
    configuration; return the step to go on from and the step rows so far ((0, []): start afresh, the
    checkpoints of another configuration removed)."""
    step, rows = 0, []
    if dist.main:  # what a run killed mid-write left (one writer here: this run)
        remove_stale_temporaries(out, "*")
        remove_stale_temporaries(checkpoints.folder, "step_*")
    last = checkpoints.last()
    if last and last.get("fingerprint") == run_fingerprint and last["step"] <= total_steps:
        folder = checkpoints.folder / last["folder"]
        try:
            resumed = models.load_checkpoint(folder)
            clip.model.load_state_dict(resumed.model.state_dict())
            _load_optimizer_tensors(optimizer, load_file(folder / "optimizer.safetensors"))
            rows = list(csv.DictReader(io.StringIO((folder / "train_steps.csv").read_text())))
        except Exception as exc:
            raise UserError(f"{folder}: the last checkpoint cannot be resumed ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]}); delete {checkpoints.folder} to train "
                                  "afresh") from None
        step = last["step"]
        logger.info("resuming from %s (step %d of %d)", folder, step, total_steps)
    elif last:
        logger.info("checkpoint %s was made with other params or data; starting afresh", last["folder"])
        if dist.main:
            checkpoints.clear()
    return step, rows


class Checkpoints:
    """``<out>/checkpoints/step_000123/`` folders and a ``last.json`` pointer written after each one."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.pointer = folder / "last.json"

    def last(self) -> dict | None:
        if not self.pointer.is_file():
            return None
        state = read_json(self.pointer)
        if not isinstance(state, dict) or not {"folder", "step"} <= set(state):
            raise UserError(f"{self.pointer}: not a checkpoint pointer; delete {self.folder} to train afresh")
        if not (self.folder / state["folder"] / models.WEIGHTS_FILE).is_file():
            return None
        return state

    def save(self, clip, optimizer, state: dict, steps_csv: str) -> None:
        """Write a checkpoint folder (atomically), then the pointer, then remove older ones: a crash or a
        full disk at any point leaves the previous checkpoint complete and pointed to."""
        name = f"step_{state['step']:07d}"
        optimizer_bytes = save_safetensors(_optimizer_tensors(optimizer))
        try:
            models.save_checkpoint(clip, self.folder / name, extra={"trainer_state": state},
                                   files={"optimizer.safetensors": optimizer_bytes,
                                          "train_steps.csv": steps_csv.encode()})
            write_json(self.pointer, {**state, "folder": name})
        except TrafficlipError as exc:
            last = self.last()
            kept = (f"the last complete checkpoint, {self.folder / last['folder']} (step {last['step']}), is intact: "
                    "rerun to resume from it once this is fixed" if last else "there is no earlier checkpoint")
            raise UserError(f"checkpoint at step {state['step']} not saved: {exc}; {kept}") from None
        for old in self.folder.glob("step_*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {f"{index}.{name}": value.detach().cpu().contiguous()
            for index, entries in state.items() for name, value in entries.items() if torch.is_tensor(value)}


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def _steps_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=STEPS_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
