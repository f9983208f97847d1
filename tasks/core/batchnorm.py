"""Batch normalisation over the global batch of a multi-process training.

A convolutional image tower (open_clip's ModifiedResNet: the RN50 family and TrafficCLIP-Tiny) has
BatchNorm layers. Under DistributedDataParallel each process would normalise by its own shard's
statistics, so N processes x batch B would not train like one process x batch N*B. torch's
``SyncBatchNorm`` fixes that on GPUs only; ``GlobalBatchNorm2d`` does it on any backend (gloo on CPU
included): the per-channel sums and counts, then the sums of squared deviations from the global mean, are
all-reduced (differentiably, so the
gradients are the single-process ones too) and the running statistics are updated from the global batch.
In eval mode, or with one process, it is a plain BatchNorm2d. ``globalise`` swaps the layers in place
and keeps their parameters and buffers, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x   # statistics in fp32 at least
        channels = x.shape[1]
        count = torch.full((1,), xf.numel() / channels, dtype=xf.dtype, device=x.device)
        first = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))    # two passes, as F.batch_norm:
        total = first[-1]                                                # the mean, then the spread
        mean = first[:channels] / total
        centred = xf - mean.view(1, channels, 1, 1)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        shape = (1, channels, 1, 1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def globalise(model: torch.nn.Module) -> int:
    """Make every BatchNorm2d of ``model`` a GlobalBatchNorm2d (in place); how many there were."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
            swapped += 1
    return swapped

