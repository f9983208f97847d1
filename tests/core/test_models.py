"""Models and checkpoints (tasks/core/models.py): an open_clip local-dir round trip, never a pickle,
clear errors for an unknown architecture or pretrained weights that cannot be fetched."""

from __future__ import annotations

import pytest
import torch

from tasks.core import models


def test_checkpoint_round_trip_is_an_open_clip_local_dir(tmp_path):
    clip = models.build("TrafficCLIP-Tiny", seed=1)
    models.save_checkpoint(clip, tmp_path / "ckpt", extra={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [models.CONFIG_FILE, models.WEIGHTS_FILE]
    # open_clip loads the folder by itself
    loaded = models.open_clip().create_model(f"local-dir:{tmp_path / 'ckpt'}")
    for name, tensor in clip.model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    again = models.load_checkpoint(tmp_path / "ckpt")
    assert again.name == "TrafficCLIP-Tiny" and again.image_size == 96 and again.info["note"] == "x"
    texts = ["This is a white Audi Sedan.", "A male pedestrian is someone who walks on foot."]
    assert torch.allclose(models.encode_texts(clip, texts), models.encode_texts(again, texts))
    images = torch.randint(0, 255, (3, 64, 64, 3), dtype=torch.uint8)
    assert torch.allclose(models.encode_images(clip, images), models.encode_images(again, images))


def test_a_pickled_checkpoint_folder_is_not_loaded(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not used")
    with pytest.raises(Exception, match="not a checkpoint folder"):
        models.load_checkpoint(folder)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(Exception, match="unknown open_clip architecture 'ViT-Nope'"):
        models.build("ViT-Nope")


def test_pretrained_tag_without_network_fails_clearly():
    with pytest.raises(Exception, match="model.pretrained"):
        models.build("RN50", pretrained="openai")
