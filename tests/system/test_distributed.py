"""Multi-process training (torchrun, gloo on CPU): N processes x batch B must be one process x batch N*B.

The multi-GPU runners start `torchrun --nproc_per_node=N -m tasks train`; here two CPU processes
stand in for two GPUs (same code path; NCCL instead of gloo is the only difference on GPUs).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support import ROOT, cli
from tests.support.params import tiny_params
from tests.support.weights import weights
from tests.support.workspace import project_env, run

pytestmark = pytest.mark.e2e    # torchrun

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
PROBE = Path(__file__).with_name("ddp_probe.py")      # one training step's loss and gradients


def _run(args, cwd):
    return run(args, cwd, env=project_env(OMP_NUM_THREADS="1"))


def test_two_processes_give_the_loss_and_gradients_of_one_process_with_the_whole_batch(tmp_path):
    probe = str(PROBE)
    _run([sys.executable, probe, str(tmp_path / "one.safetensors"), "16"], ROOT)
    _run([*TORCHRUN, probe, str(tmp_path / "two.safetensors"), "16"], ROOT)
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert set(one) == set(two) and len(one) > 50
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-10, atol=0)
    assert any(".bn" in name for name in one)   # BatchNorm layers: normalised over the global batch
    for name in one:
        # gradients summed over ranks by DDP: equal to the single process's, not N times or 1/N of it
        # (the probe runs in float64; the floor is for gradients that are zero in exact arithmetic,
        # e.g. the attention pool's key bias)
        scale = float(one[name].abs().max())
        torch.testing.assert_close(two[name], one[name], rtol=1e-9, atol=1e-9 * scale + 1e-15,
                                   msg=lambda m: f"{name}: {m}")


def _losses(path):
    with open(path) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_torchrun_training_matches_single_process_training(tiny_prepared, tmp_path):
    import yaml
    # a gentle learning rate: at the tiny tests' 2e-3 a few steps of this 72-pair run are chaotic (the loss
    # jumps up), and float rounding of sums taken in another order then grows step after step
    params = tiny_params(epochs=2, warmup_steps=1, lr=2e-4)
    params_file = tmp_path / "params.yaml"
    single = {**params, "train": {**params["train"], "batch_size": 16}}
    params_file.write_text(yaml.safe_dump(single))
    _run([*cli.argv("train"), "--params", str(params_file), "--data", str(tiny_prepared),
          "--manifest", str(tiny_prepared / "train" / "manifest.json"), "--out", str(tmp_path / "one"),
          "--reports", str(tmp_path / "one-reports")], tmp_path)
    per_process = {**params, "train": {**params["train"], "batch_size": 8}}
    params_file.write_text(yaml.safe_dump(per_process))
    # the multi-GPU runners' form: torchrun starting the installed `trafficlip` program once per process
    result = _run([*TORCHRUN, "--no-python", "trafficlip", "train", "--params", str(params_file), "--data", str(tiny_prepared),
                   "--manifest", str(tiny_prepared / "train" / "manifest.json"), "--out", str(tmp_path / "two"),
                   "--reports", str(tmp_path / "two-reports")], tmp_path)
    assert "x 2 processes" in result.stderr
    one, two = _losses(tmp_path / "one-reports" / "train_steps.csv"), _losses(tmp_path / "two-reports" / "train_steps.csv")
    assert len(one) == len(two) > 4
    assert two == pytest.approx(one, rel=1e-3)
    weights_one, weights_two = weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model")
    start = weights(tmp_path / "one" / "initial")
    lr = params["train"]["lr"]
    total_moved = total_apart = 0.0
    for name, value in weights_one.items():
        # the two trainings differ by under 5% of how far training moved each tensor, give or take float
        # rounding of sums taken in another order, which Adam turns into a step of ~lr for elements whose
        # gradient is ~zero: half a step per element is allowed on top (it decides small tensors such as
        # a 16-channel BatchNorm bias, which training moves by a few steps only)
        moved = float((value.float() - start[name].float()).norm())
        apart = float((weights_two[name].float() - value.float()).norm())
        rounding = 0.5 * lr * value.numel() ** 0.5
        assert apart <= 0.05 * moved + rounding, \
            f"{name}: the trainings differ by {apart:.2e}, training moved it {moved:.2e}"
        total_moved += moved ** 2
        total_apart += apart ** 2
    # and the model as a whole ends where the single process's training ended, within 5% of the way
    assert total_apart ** 0.5 <= 0.05 * total_moved ** 0.5, (total_apart ** 0.5, total_moved ** 0.5)
    # only rank 0 wrote: one summary, recording both processes
    import json
    summary = json.loads((tmp_path / "two-reports" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 16
