"""Image geometry (pad to square with zeros, then resize) and safe decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.core import images
from tasks.core.errors import InputError


def test_wide_image_is_centred_on_a_black_square():
    wide = Image.new("RGB", (100, 40), (255, 0, 0))
    square = images.pad_to_square(wide)
    assert square.size == (100, 100)
    array = np.asarray(square)
    assert (array[:30] == 0).all() and (array[70:] == 0).all()          # 30 black rows above and below
    assert (array[30:70] == [255, 0, 0]).all()


def test_tall_image_padded_left_and_right_then_resized():
    tall = Image.new("RGB", (30, 90), (0, 255, 0))
    array = images.prepare_image(tall, 45)
    assert array.shape == (45, 45, 3) and array.dtype == np.uint8
    # 90x90 canvas, the figure occupies columns 30..60 -> 15..30 after halving
    assert (array[:, :13] == 0).all() and (array[:, 32:] == 0).all()
    assert (array[:, 16:29, 1] > 200).all()


def test_aspect_ratio_is_preserved_not_squashed():
    wide = Image.new("RGB", (200, 50), (255, 255, 255))
    array = images.prepare_image(wide, 64)
    lit_rows = np.where(array.max(axis=(1, 2)) > 128)[0]
    assert 14 <= len(lit_rows) <= 18  # 50/200 of 64 = 16 rows, not 64


def test_model_input_normalisation():
    batch = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    x = images.to_model_input(batch, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 4, 4) and torch.allclose(x, torch.ones_like(x))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_modes_decode_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.new(mode, (8, 6)).save(path)
    assert images.load_image(path).mode == "RGB"


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    assert images.load_image(path).size == (20, 40)


@pytest.mark.parametrize("content", [b"", b"this is text, not a jpeg", b"\xff\xd8\xff\xe0" + b"\x00" * 10])
def test_unreadable_files_are_input_errors(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        images.load_image(path)
    assert "bad.jpg" in str(info.value) and info.value.field == "image"


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 5_000)).save(path)  # a tiny file, 50 megapixels decoded
    with pytest.raises(InputError, match="pixels"):
        images.load_image(path)


def test_cache_round_trip_across_shards(tmp_path):
    arrays = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(7)]
    images.write_cache(tmp_path / "cache", arrays, 8, shard_size=3)
    cache = images.ImageCache(tmp_path / "cache")
    assert len(cache) == 7 and len(cache.shards) == 3
    got = cache[[6, 0, 4]]
    assert got[:, 0, 0, 0].tolist() == [6, 0, 4]
    assert torch.equal(cache.all()[:, 0, 0, 0], torch.arange(7, dtype=torch.uint8))
