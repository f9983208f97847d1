"""Text encoding without the trailing padding (tasks/core/textenc.py): the same embeddings and gradients as
open_clip's own ``encode_text``, and open_clip's path wherever skipping the padding would change them."""

from __future__ import annotations

import pytest
import torch

from tasks.core import models, textenc

SHORT = ["This is a white Audi Sedan.", "This is a red Bus.", "A grey Toyota.", "This is a black Kia SUV."]
LONG = ["A male pedestrian is someone who walks on foot, is between 18 and 60 years old, with his body facing "
        "the camera. He is in a short sleeve shirt with plaid. He is wearing trousers and glasses.",
        "A female pedestrian is someone who walks on foot, is between 18 and 60 years old, with her body "
        "sideways to the camera. She is in a long sleeve shirt. She is wearing shorts."]


def _clip(name: str = "TrafficCLIP-Tiny"):
    clip = models.build(name, seed=3)
    clip.model.train()
    return clip


@pytest.mark.parametrize("texts", [SHORT * 4, SHORT * 8 + LONG * 8, LONG * 3], ids=["short", "mixed", "long"])
def test_same_embeddings_and_gradients_as_open_clip(texts):
    clip = _clip()
    assert textenc.trims(clip.model)
    tokens = clip.tokenize(texts)
    expected = clip.model.encode_text(tokens, normalize=True)
    got = textenc.encode_text(clip.model, tokens, normalize=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    reference = {n: p.grad.clone() for n, p in clip.model.named_parameters() if p.grad is not None}
    clip.model.zero_grad(set_to_none=True)
    (got * weights).sum().backward()
    trimmed = {n: p.grad for n, p in clip.model.named_parameters() if p.grad is not None}
    assert trimmed.keys() == reference.keys()
    for name, grad in reference.items():
        # the padding positions never reach the output: their embeddings get no gradient either way;
        # sums in another order differ in float rounding, hence a tolerance relative to the gradient's scale
        scale = float(grad.abs().max())
        torch.testing.assert_close(trimmed[name], grad, rtol=1e-3, atol=1e-3 * scale, msg=lambda m: f"{name}: {m}")


def test_mixed_lengths_are_encoded_in_two_groups():
    clip = _clip()
    lengths = textenc.lengths(clip.model, clip.tokenize(SHORT * 8 + LONG * 8)).sort().values.tolist()
    cut = textenc.split_point(lengths)
    assert cut == 32 and lengths[cut - 1] < 15 < lengths[cut]
    assert textenc.split_point([20] * 16) is None            # one length: one group
    assert textenc.split_point([30] * 15 + [31]) is None     # a split would save almost nothing
    assert textenc.split_point([7]) is None


def test_a_real_clip_text_tower_trims():
    # a real open_clip architecture (random weights: nothing can be downloaded here)
    clip = models.build("ViT-S-32", seed=0)
    clip.model.eval()
    assert textenc.trims(clip.model)
    tokens = clip.tokenize(SHORT + LONG)
    with torch.no_grad():
        torch.testing.assert_close(textenc.encode_text(clip.model, tokens), clip.model.encode_text(tokens),
                                   rtol=1e-4, atol=1e-5)


def test_a_tower_that_attends_to_padding_uses_open_clips_path(monkeypatch):
    clip = _clip()
    clip.model.attn_mask = None          # what no_causal_mask builds: the padding changes the embedding
    assert not textenc.trims(clip.model)
    calls = []
    original = clip.model.encode_text
    monkeypatch.setattr(clip.model, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    tokens = clip.tokenize(SHORT + LONG)
    textenc.encode_text(clip.model, tokens)
    assert calls == [1]


def test_the_training_forward_matches_clips():
    clip = _clip()
    images = torch.randn(6, 3, clip.image_size, clip.image_size)
    tokens = clip.tokenize(SHORT[:3] + LONG + SHORT[:1])
    expected = clip.model(images, tokens)
    got = textenc.ClipForward(clip.model)(images, tokens)
    for a, b in zip(got, expected[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert list(textenc.ClipForward(clip.model).parameters()) == list(clip.model.parameters())
