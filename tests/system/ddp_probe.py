"""One training step's loss and gradients, written by rank 0 (run by tests/system/test_distributed.py).

`python tests/system/ddp_probe.py OUT GLOBAL_BATCH` is one process; under `torchrun --nproc_per_node=N` each
process takes its share of the same global batch, through the functions `tasks/steps/train.py` uses.
"""

import sys

import torch
from safetensors.torch import save_file

from tasks.core import models
from tasks.core.images import to_model_input
from tasks.steps import train


def main(out: str, global_batch: int) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    dist = train.init_distributed()
    # float64: in float32 BatchNorm's sums over 16 x 48 x 48 values cancel enough that summing them in
    # another order moves some gradients by ~0.1%; in float64 the two agree to ~1e-14, which is what
    # shows that the global batch statistics are right
    clip = models.build("TrafficCLIP-Tiny", "", seed=0)
    clip.model.double()
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (global_batch, clip.image_size, clip.image_size, 3), dtype=torch.uint8,
                           generator=generator)
    words = ["red", "white", "blue", "Sedan", "SUV", "man", "woman", "backpack", "hat", "long sleeves"]
    captions = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (5,), generator=generator))
                for _ in range(max(2, global_batch // 3))]
    # repeated captions: the loss's shared-caption targets come from the global batch on every rank
    texts = [captions[int(i)] for i in torch.randint(0, len(captions), (global_batch,), generator=generator)]
    batch = train.shard(torch.arange(global_batch), dist)
    net = train.distributed_model(clip.model, dist, torch.device("cpu"))
    net.train()
    features = net(to_model_input(images[batch], clip.mean, clip.std).double(), clip.tokenize([texts[i] for i in batch]))
    loss = train.contrastive_loss(dist, shared_captions=True)(*features[:3], clip.tokenize(texts))
    loss.backward()
    if dist.main:
        grads = {f"grad.{name}": p.grad.detach().contiguous() for name, p in clip.model.named_parameters()
                 if p.grad is not None}
        save_file({"loss": loss.detach().reshape(1), **grads}, out)
    if dist.world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
