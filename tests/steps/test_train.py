"""The training step (tasks/steps/train.py): schedule, loss going down, deterministic resume (CPU)."""

from __future__ import annotations

import json
import shutil

import pytest

from tasks.core import models
from tasks.core.images import ImageCache, write_cache
from tasks.steps import train
from tests.support.params import tiny_params
from tests.support.weights import assert_same_weights


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [train.lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert train.lr_at(100, 100, 1.0, 10) == pytest.approx(0.0)


def test_training_lowers_the_loss_and_writes_outputs(tiny_prepared, tmp_path):
    summary = train.run(tiny_params(epochs=4), tiny_prepared, tmp_path / "models", tmp_path / "reports")
    rows = (tmp_path / "reports" / "train_steps.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss,lr" and len(rows) == summary["steps"] + 1
    losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (tmp_path / "models" / "model" / models.WEIGHTS_FILE).is_file()
    assert (tmp_path / "models" / "initial" / models.WEIGHTS_FILE).is_file()
    assert json.loads((tmp_path / "reports" / "train_summary.json").read_text())["steps"] == summary["steps"]


def test_resume_after_interruption_gives_the_same_weights(tiny_prepared, tmp_path):
    params = tiny_params(epochs=3)
    train.run(params, tiny_prepared, tmp_path / "a", tmp_path / "ra")
    # interrupted after step 4: the last complete checkpoint is the end of epoch 1 (step 3)
    steps_per_epoch = len(json.loads((tiny_prepared / "train" / "manifest.json").read_text())["pairs"]) // 16
    stop = steps_per_epoch + 1
    assert train.run(params, tiny_prepared, tmp_path / "b", tmp_path / "rb", stop_after_steps=stop) == {
        "interrupted_at": stop}
    assert not (tmp_path / "b" / "model").exists()
    last = json.loads((tmp_path / "b" / "checkpoints" / "last.json").read_text())
    assert last["step"] == steps_per_epoch
    train.run(params, tiny_prepared, tmp_path / "b", tmp_path / "rb")
    assert_same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")
    assert (tmp_path / "ra" / "train_steps.csv").read_text() == (tmp_path / "rb" / "train_steps.csv").read_text()


def test_changed_params_do_not_resume_a_stale_checkpoint(tiny_prepared, tmp_path):
    train.run(tiny_params(epochs=2), tiny_prepared, tmp_path / "m", tmp_path / "r", stop_after_steps=3)
    summary = train.run(tiny_params(epochs=2, lr=1e-3), tiny_prepared, tmp_path / "m", tmp_path / "r")
    rows = (tmp_path / "r" / "train_steps.csv").read_text().splitlines()
    assert len(rows) == summary["steps"] + 1  # every step was trained afresh


def test_batches_read_from_the_cache_train_exactly_as_the_split_in_memory(tiny_prepared, tmp_path):
    """Training reads each batch's images from the cache by index (no whole split in memory). The
    images a batch gets do not depend on how the cache is cut into shards: one shard, or shards of 5
    that every batch crosses, train bit-for-bit the same weights (CPU)."""
    resharded = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, resharded)
    whole = ImageCache(tiny_prepared / "train")
    shutil.rmtree(resharded / "train")
    write_cache(resharded / "train", whole.all().numpy(), whole.size, shard_size=5)
    shutil.copy(tiny_prepared / "train" / "manifest.json", resharded / "train" / "manifest.json")
    assert len(ImageCache(resharded / "train").shards) == -(-len(whole) // 5)
    params = tiny_params(epochs=1)
    train.run(params, tiny_prepared, tmp_path / "a", tmp_path / "ra")
    train.run(params, resharded, tmp_path / "b", tmp_path / "rb")
    assert_same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")
