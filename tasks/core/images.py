"""One image loader for every step: decode safely, pad to a square with zeros, resize.

Cars are wide and people are tall; squashing them to a square distorts both, so every image is
zero-padded to a square around its centre and then resized to the model's input size. Training,
evaluation, prediction and search all use :func:`prepare_image`, so the geometry is identical.

Decoded images are cached once per prepared dataset as uint8 safetensors shards (DVC tracks them),
so training never decodes a JPEG twice.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from tasks.core.atomic import atomic_path, read_json, write_json
from tasks.core.errors import InputError

# A decompression bomb (a small file that decodes to gigapixels) is refused before decoding.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# the side an elongated image is shrunk to before padding when its padded square would exceed MAX_PIXELS
MAX_PADDED_SIDE = 4096


def load_image(path: str | Path | bytes, label: str = "<image bytes>") -> Image.Image:
    """Decode an image file to RGB, applying its EXIF orientation. Bad files raise InputError.

    ``path`` may also be the encoded bytes of an image (the MLflow model's input); ``label`` then
    names it in errors.
    """
    source = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else Path(path)
    path = label if isinstance(source, io.BytesIO) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # Pillow's notes on odd metadata ("Corrupt EXIF")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise InputError(path, f"image is {image.width}x{image.height} pixels", field="image",
                                     expected=f"at most {MAX_PIXELS} pixels")
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                    image = Image.alpha_composite(background, rgba)
                if image.mode.startswith("I"):  # 16-bit (I;16, I;16B, ...) or 32-bit integer grey
                    image = _sixteen_bit_to_grey(image)
                return image.convert("RGB")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(path, f"refused as a decompression bomb ({exc})", field="image",
                         expected=f"at most {MAX_PIXELS} pixels") from None
    except FileNotFoundError:
        raise InputError(path, "image file not found", field="image", expected="an existing image file") from None
    except Exception as exc:  # a damaged file can make a decoder raise anything (OSError, SyntaxError, struct.error)
        reason = str(exc).replace(repr(source), str(path)) or type(exc).__name__
        raise InputError(path, f"cannot decode image: {reason}", field="image",
                         expected="a readable JPEG/PNG/BMP/WebP file") from None


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit by its full range (65535 -> 255), the same scale for every image: a dark
    16-bit image stays dark. A 32-bit integer image ("I") is read the same way, unless all its values
    already fit in 0..255 (an 8-bit image stored as I)."""
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or array.max(initial=0) > 255:
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def pad_to_square(image: Image.Image) -> Image.Image:
    """Centre the image on a black square whose side is its longer edge."""
    side = max(image.width, image.height)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """Pad to a square with zeros, resize to size x size (bicubic); uint8 [size, size, 3].

    An image so elongated that its padded square would exceed MAX_PIXELS (a 100000 x 10 strip is
    only a megapixel, its square 10 gigapixels) is first shrunk, aspect ratio kept, to a longer side
    of MAX_PADDED_SIDE, so memory stays bounded; the geometry is the same up to rounding."""
    side = max(image.width, image.height)
    if side * side > MAX_PIXELS:
        scale = MAX_PADDED_SIDE / side
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
    square = pad_to_square(image)
    if square.width != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.uint8)


def to_model_input(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B,H,W,3] -> normalised float [B,3,H,W]."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class ImageCache:
    """Decoded, padded, resized images of one split, in uint8 safetensors shards.

    ``cache[indices]`` returns uint8 [len(indices), S, S, 3]. Shards are loaded lazily and kept.
    """

    INDEX = "images.json"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_file = self.folder / self.INDEX
        index = read_json(index_file, "trafficlip prepare")
        self.size: int = index["image_size"]
        self.count: int = index["count"]
        self.shard_size: int = index["shard_size"]
        self.shards: list[str] = index["shards"]
        self._loaded: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.count

    def _shard(self, number: int) -> torch.Tensor:
        if number not in self._loaded:
            path = self.folder / self.shards[number]
            try:
                self._loaded[number] = load_file(path)["images"]
            except Exception as exc:  # missing, truncated, or not safetensors at all (never unpickled)
                from tasks.core.errors import UserError
                raise UserError(f"{path}: not a readable image cache shard ({type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:200]}); rerun `trafficlip prepare`") from None
        return self._loaded[number]

    def __getitem__(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            return torch.empty((0, self.size, self.size, 3), dtype=torch.uint8)
        if int(idx.min()) < 0 or int(idx.max()) >= self.count:
            raise IndexError(f"image index out of range 0..{self.count - 1}")
        out = torch.empty((idx.numel(), self.size, self.size, 3), dtype=torch.uint8)
        shard_of = idx // self.shard_size
        for number in shard_of.unique().tolist():
            mask = shard_of == number
            out[mask] = self._shard(number)[idx[mask] - number * self.shard_size]
        return out

    def all(self) -> torch.Tensor:
        return self[torch.arange(self.count)]


class CacheSelection:
    """Some images of a cache (or of a uint8 tensor), indexable like the cache itself."""

    def __init__(self, images, indices: Sequence[int]):
        self.images = images
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, positions) -> torch.Tensor:
        return self.images[self.indices[torch.as_tensor(positions, dtype=torch.long)]]


def write_cache(folder: str | Path, arrays: Sequence[np.ndarray], size: int, shard_size: int) -> Path:
    """Write decoded images as shards plus an index; each file atomically, the index last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, max(len(arrays), 1), shard_size):
        chunk = arrays[start:start + shard_size]
        tensor = (torch.from_numpy(np.stack(chunk)) if len(chunk)
                  else torch.empty((0, size, size, 3), dtype=torch.uint8))
        name = f"images-{start // shard_size:05d}.safetensors"
        with atomic_path(folder / name) as tmp:
            save_file({"images": tensor.contiguous()}, str(tmp))
        shards.append(name)
    write_json(folder / ImageCache.INDEX, {"image_size": size, "count": len(arrays),
                                           "shard_size": shard_size, "shards": shards})
    return folder
