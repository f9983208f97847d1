"""Batch normalisation over the global batch (tasks/core/batchnorm.py), in one process: swapping the layers
keeps a checkpoint's tensors as they are, and without a process group a GlobalBatchNorm2d is a plain
BatchNorm2d, in training and in eval. (Two processes against one: tests/system/test_distributed.py.)"""

from __future__ import annotations

import copy

import torch

from tasks.core import batchnorm, models


def test_globalise_swaps_every_batchnorm_and_keeps_the_checkpoint():
    clip = models.build("TrafficCLIP-Tiny", seed=0)
    before = {name: tensor.clone() for name, tensor in clip.model.state_dict().items()}
    plain = sum(type(m) is torch.nn.BatchNorm2d for m in clip.model.modules())
    assert plain > 0
    assert batchnorm.globalise(clip.model) == plain
    assert not any(type(m) is torch.nn.BatchNorm2d for m in clip.model.modules())
    assert sum(isinstance(m, batchnorm.GlobalBatchNorm2d) for m in clip.model.modules()) == plain
    after = clip.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert batchnorm.globalise(clip.model) == 0          # already swapped


def test_without_a_process_group_it_normalises_like_batchnorm2d():
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(4)
    torch.nn.init.normal_(reference.weight)
    torch.nn.init.normal_(reference.bias)
    swapped = copy.deepcopy(reference)
    assert batchnorm.globalise(swapped) == 1
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    for _ in range(2):                                   # training: batch statistics, running ones updated
        torch.testing.assert_close(swapped(x), reference(x))
    torch.testing.assert_close(swapped.running_mean, reference.running_mean)
    torch.testing.assert_close(swapped.running_var, reference.running_var)
    swapped.eval()
    reference.eval()
    torch.testing.assert_close(swapped(x), reference(x))  # eval: the running statistics
