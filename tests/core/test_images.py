"""Image geometry (pad to square with zeros, then resize) and safe decoding."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_save

from tasks.core import images
from tasks.core.errors import InputError, UserError


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


# --- the decoded-image cache: streamed writes, positional reads ----------------------------------

def _random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("count, shard_size", [(0, 4), (1, 4), (7, 3), (9, 3), (10, 100), (12, 1)])
def test_streamed_shards_are_byte_for_byte_what_safetensors_writes(tmp_path, count, shard_size):
    """ShardWriter writes each image as it comes (a short last shard's rows move up behind its shorter
    header); the files are exactly those of safetensors' save_file on the stacked shard, as the
    in-memory writer made them."""
    arrays = _random_images(count, 6, seed=count)
    images.write_cache(tmp_path / "cache", iter(list(arrays)), 6, shard_size)
    index = json.loads((tmp_path / "cache" / "images.json").read_text())
    assert index == {"image_size": 6, "count": count, "shard_size": shard_size,
                     "shards": [f"images-{n:05d}.safetensors" for n in range(max(1, -(-count // shard_size)))]}
    for number, name in enumerate(index["shards"]):
        chunk = torch.from_numpy(arrays[number * shard_size:(number + 1) * shard_size].copy())
        save_file({"images": chunk.contiguous()}, str(tmp_path / "reference.safetensors"))
        assert (tmp_path / "cache" / name).read_bytes() == (tmp_path / "reference.safetensors").read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([*index["shards"], "images.json"])


def test_a_shard_header_for_every_row_count_is_safetensors_own():
    cases = [(rows, 2) for rows in (0, 1, 9, 10, 99, 100, 4095, 4096, 123456)]
    cases += [(rows, size) for rows in (0, 1, 9, 10, 99) for size in (96, 224)]
    for rows, size in cases:
        reference = safetensors_save({"images": torch.empty((rows, size, size, 3), dtype=torch.uint8)})
        header = images.shard_header(rows, size)
        assert reference[:len(header)] == header, (rows, size)
        assert len(reference) == len(header) + rows * size * size * 3


def test_positional_reads_equal_eager_reads_for_any_indices(tmp_path):
    """cache[indices] reads only the rows asked for; for sorted, unsorted, repeated, crossing-shard,
    empty and single indices, as lists, tensors and numpy arrays, it returns what loading every shard
    whole with safetensors returns."""
    arrays = _random_images(23, 5, seed=1)
    images.write_cache(tmp_path / "cache", list(arrays), 5, shard_size=4)
    cache = images.ImageCache(tmp_path / "cache")
    eager = torch.cat([load_file(tmp_path / "cache" / name)["images"] for name in cache.shards])
    assert torch.equal(eager, torch.from_numpy(arrays))
    rng = np.random.default_rng(5)
    cases = [[], [0], [22], list(range(23)), list(range(3, 17)), [22, 0, 11, 11, 3, 3, 3], [4, 3], [7, 8]]
    cases += [rng.integers(0, 23, int(rng.integers(1, 40))).tolist() for _ in range(40)]
    cases += [sorted(set(rng.integers(0, 23, 12).tolist())) for _ in range(10)]
    for indices in cases:
        for form in (list, torch.tensor, np.array):
            got = cache[form(indices) if indices else indices]
            assert got.dtype == torch.uint8 and got.shape == (len(indices), 5, 5, 3)
            assert torch.equal(got, eager[torch.as_tensor(indices, dtype=torch.long)]), indices
    with pytest.raises(IndexError):
        cache[[23]]
    with pytest.raises(IndexError):
        cache[[-1]]


def test_the_cache_keeps_no_pixels_between_calls(tmp_path):
    arrays = _random_images(9, 5, seed=2)
    images.write_cache(tmp_path / "cache", list(arrays), 5, shard_size=4)
    cache = images.ImageCache(tmp_path / "cache")
    first = cache[[0, 1, 2]]
    first.zero_()                                         # a caller's tensor is its own
    assert torch.equal(cache[[0, 1, 2]], torch.from_numpy(arrays[:3]))
    held = [value for value in vars(cache).values() if isinstance(value, (torch.Tensor, np.ndarray, dict))]
    assert held == [], "the cache keeps only the index and the shards' headers"


def _corrupt(case: str, shard: Path, tmp_path: Path) -> None:
    data = bytearray(shard.read_bytes())
    if case == "truncated":
        shard.write_bytes(bytes(data[:-7]))
    elif case == "empty":
        shard.write_bytes(b"")
    elif case == "header length":
        data[0] ^= 0x40
        shard.write_bytes(bytes(data))
    elif case == "header json":
        data[12] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif case == "dtype":
        shard.write_bytes(bytes(data).replace(b'"U8"', b'"I8"', 1))
    elif case == "shape":
        shard.write_bytes(bytes(data).replace(b'"shape":[4,', b'"shape":[3,', 1))
    elif case == "padded":
        shard.write_bytes(bytes(data) + b"\0" * 75)
    elif case == "pickle":
        marker = tmp_path / "payload-ran"
        shard.write_bytes(pickle.dumps(_Payload(str(marker))))
    elif case == "missing":
        shard.unlink()


class _Payload:
    """Unpickling this creates a file: the cache must never unpickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("case", ["truncated", "empty", "header length", "header json", "dtype", "shape", "padded",
                                  "pickle", "missing"])
def test_a_damaged_shard_is_an_error_naming_it(tmp_path, case):
    images.write_cache(tmp_path / "cache", list(_random_images(9, 5)), 5, shard_size=4)
    shard = tmp_path / "cache" / "images-00001.safetensors"
    _corrupt(case, shard, tmp_path)
    with pytest.raises(UserError) as info:
        images.ImageCache(tmp_path / "cache")[[0, 5]]
    message = str(info.value)
    assert message.startswith(f"{shard}: not a readable image cache shard (") and "\n" not in message
    assert message.endswith("rerun `trafficlip prepare`")
    assert not (tmp_path / "payload-ran").exists()


def test_an_index_naming_files_outside_its_folder_is_refused(tmp_path):
    images.write_cache(tmp_path / "cache", list(_random_images(3, 5)), 5, shard_size=4)
    index = tmp_path / "cache" / "images.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "shards": ["../images-00000.safetensors"]}))
    with pytest.raises(UserError, match="inconsistent image cache index"):
        images.ImageCache(tmp_path / "cache")


def test_an_error_while_writing_leaves_finished_shards_and_no_partial_one(tmp_path):
    arrays = _random_images(7, 5, seed=3)
    with pytest.raises(RuntimeError, match="stop"):
        with images.ShardWriter(tmp_path / "cache", 5, shard_size=3) as writer:
            for array in arrays:
                writer.add(array)
            raise RuntimeError("stop")                 # the 7th image is in the open third shard
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["images-00000.safetensors",
                                                                     "images-00001.safetensors"]
    assert torch.equal(load_file(tmp_path / "cache" / "images-00001.safetensors")["images"],
                       torch.from_numpy(arrays[3:6]))
    with pytest.raises(ValueError, match="expected a uint8 \\[5, 5, 3\\] image"):
        images.ShardWriter(tmp_path / "other", 5, 3).add(np.zeros((5, 5, 3), dtype=np.float32))


def _shards_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("count, expected", [(10, 10), (8, 10), (7, 10), (0, 0), (0, 5), (9, 9)])
def test_a_bound_on_the_count_gives_the_same_files(tmp_path, count, expected):
    """``expect(n)`` (prepare knows how many files a split names) reserves the last shard's own header, so
    its rows need not move up; with fewer images than expected (bad files dropped) they move up as
    before. Either way the files are those written without a bound."""
    arrays = _random_images(count, 6, seed=count)
    images.write_cache(tmp_path / "plain", iter(list(arrays)), 6, 3)
    with images.ShardWriter(tmp_path / "bounded", 6, 3) as writer:
        writer.expect(expected)
        for array in arrays:
            writer.add(array)
        writer.close()
    assert _shards_of(tmp_path / "bounded") == _shards_of(tmp_path / "plain")


def test_more_images_than_expected_is_an_error_not_a_bad_shard(tmp_path):
    arrays = _random_images(5, 4, seed=1)
    with pytest.raises(RuntimeError, match="5 images, more than the 4 expected"):
        with images.ShardWriter(tmp_path / "cache", 4, 3) as writer:
            writer.expect(4)
            for array in arrays:
                writer.add(array)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["images-00000.safetensors"]
    with pytest.raises(RuntimeError, match="before the first image"):
        writer = images.ShardWriter(tmp_path / "late", 4, 3)
        writer.add(arrays[0])
        writer.expect(4)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_reused_rows_are_copied_byte_for_byte_with_or_without_the_kernels_copy(tmp_path, monkeypatch, kernel_copy):
    """A run of reused rows (a previous cache's short last shard, then new images: the incremental
    prepare's case) is copied file to file by ``os.copy_file_range``, or by reads and writes where the
    system refuses it; the cache is what writing every row gives."""
    old = _random_images(7, 5, seed=4)
    images.write_cache(tmp_path / "old", iter(list(old)), 5, 3)
    previous = images.ImageCache(tmp_path / "old")
    new = _random_images(3, 5, seed=5)
    if not kernel_copy:
        def refused(*args):
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(images.os, "copy_file_range", refused, raising=False)
    with images.ShardWriter(tmp_path / "reused", 5, 3) as writer:
        writer.expect(10)
        for row in range(7):                  # shards 0 and 1 whole (linked), row 6 starts shard 2
            writer.add_reused(previous, row)
        for array in new:
            writer.add(array)
        writer.close()
    images.write_cache(tmp_path / "plain", iter([*old, *new]), 5, 3)
    assert _shards_of(tmp_path / "reused") == _shards_of(tmp_path / "plain")
    assert (tmp_path / "reused" / "images-00000.safetensors").stat().st_ino == \
        (tmp_path / "old" / "images-00000.safetensors").stat().st_ino
