"""The contrastive training loss: open_clip's ``ClipLoss``, with pairs that share a caption counted as
positives of each other.

CLIP's loss has one positive per row: image i belongs with caption i, and every other caption of the
batch is a negative. Datasets of attribute captions repeat captions (the demo's commonest pedestrian
description has 106 training images, and a vehicle phrase such as "This is a white Audi Sedan." has
several): two identical captions in one batch have identical embeddings, yet each is told to score its
own image above the other's. With ``train.shared_captions`` on, a row's target spreads evenly over the
pairs whose caption is token-for-token its own (a soft cross-entropy); a batch without repeats gets
exactly CLIP's targets, so the loss is open_clip's whenever nothing is repeated. Across processes the
logits are those of the gathered global batch, as in ``ClipLoss(local_loss=False)``, and the targets
come from the global batch's tokens, which every rank holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shared_caption_targets(tokens: torch.Tensor) -> torch.Tensor | None:
    """[B, B] soft targets (each row sums to 1 over the rows with the same caption), or None when every
    caption of the batch is different (CLIP's one-hot targets)."""
    unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    if len(unique) == len(tokens):
        return None
    same = (inverse[:, None] == inverse[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


class ContrastiveLoss:
    def __init__(self, rank: int, world: int, shared_captions: bool):
        from tasks.core import models
        self.clip_loss = models.open_clip().ClipLoss(local_loss=False, gather_with_grad=world > 1,
                                                     cache_labels=True, rank=rank, world_size=world)
        self.shared_captions = shared_captions

    def __call__(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                 global_tokens: torch.Tensor) -> torch.Tensor:
        """The loss of this rank's features against the global batch whose captions are ``global_tokens``."""
        targets = shared_caption_targets(global_tokens) if self.shared_captions else None
        if targets is None:
            return self.clip_loss(image_features, text_features, logit_scale)
        logits_per_image, logits_per_text = self.clip_loss.get_logits(image_features, text_features, logit_scale)
        targets = targets.to(logits_per_image.device)
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2
