"""The contrastive loss (tasks/core/loss.py): open_clip's ClipLoss when captions are distinct, identical
captions as shared positives otherwise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.core import loss, models


def _features(n: int, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, dim, generator=generator), dim=-1),
            F.normalize(torch.randn(n, dim, generator=generator), dim=-1), torch.tensor(10.0))


def test_distinct_captions_give_open_clips_loss():
    tokens = torch.tensor([[1, 5, 2], [1, 6, 2], [1, 7, 2], [1, 8, 2]])
    assert loss.shared_caption_targets(tokens) is None
    images, texts, scale = _features(4)
    ours = loss.ContrastiveLoss(0, 1, shared_captions=True)(images, texts, scale, tokens)
    theirs = models.open_clip().ClipLoss()(images, texts, scale)
    torch.testing.assert_close(ours, theirs)


def test_identical_captions_share_their_targets():
    tokens = torch.tensor([[1, 5, 2], [1, 6, 2], [1, 5, 2]])    # rows 0 and 2: the same caption
    targets = loss.shared_caption_targets(tokens)
    torch.testing.assert_close(targets, torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))

    images, texts, scale = _features(3, seed=1)
    logits = scale * images @ texts.t()
    by_hand = 0.0
    for rows in (logits, logits.t()):
        log_p = rows.log_softmax(dim=1)
        by_hand += -(0.5 * (log_p[0, 0] + log_p[0, 2]) + log_p[1, 1] + 0.5 * (log_p[2, 0] + log_p[2, 2])) / 3
    got = loss.ContrastiveLoss(0, 1, shared_captions=True)(images, texts, scale, tokens)
    assert math.isclose(float(got), float(by_hand) / 2, rel_tol=1e-6)
    # off: open_clip's loss, which tells row 0 that caption 2 (its own text) is a negative
    plain = loss.ContrastiveLoss(0, 1, shared_captions=False)(images, texts, scale, tokens)
    torch.testing.assert_close(plain, models.open_clip().ClipLoss()(images, texts, scale))
    assert not math.isclose(float(plain), float(got), rel_tol=1e-3)
