"""Building, saving and loading open_clip models, and embedding texts and images with them.

Any open_clip architecture works by name, with a pretrained tag (``laion2b_s39b_b160k``), a local
weights file (``.safetensors``, or a torch file read with ``weights_only=True``) or a ``local-dir``
checkpoint folder (``open_clip_config.json`` + ``open_clip_model.safetensors``). The small configs in
``tasks/model_configs`` are registered with open_clip so they are names like any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from tasks.core import textenc
from tasks.core.atomic import atomic_dir
from tasks.core.errors import UserError
from tasks.core.images import to_model_input

PROGRESS_MIN_BATCHES = 8      # image batches from which embedding shows its progress

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
_registered = False


def open_clip():
    """Import open_clip with the project's configs registered (imported lazily: it is slow)."""
    global _registered
    import open_clip as oc
    if not _registered:
        oc.add_model_config(CONFIG_DIR)
        _registered = True
    return oc


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ClipModel:
    model: torch.nn.Module
    tokenizer: object
    name: str                 # architecture name (for a local-dir checkpoint, the one it was built from)
    model_cfg: dict
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    info: dict = field(default_factory=dict)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _wrap(model, tokenizer, name: str, model_cfg: dict, info: dict) -> ClipModel:
    mean = tuple(float(v) for v in getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = tuple(float(v) for v in getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    return ClipModel(model, tokenizer, name, model_cfg, mean, std, _image_size(model), info)


def image_size_of(name: str, pretrained: str = "") -> int:
    """The input size of an architecture (or of a local-dir checkpoint) without building it."""
    if pretrained and Path(pretrained).is_dir():
        config_path = Path(pretrained) / CONFIG_FILE
        try:
            cfg = json.loads(config_path.read_text())["model_cfg"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"model.pretrained: {config_path}: not an open_clip config "
                                  f"({_one_line(exc)})") from None
    else:
        cfg = open_clip().get_model_config(name)
        if cfg is None:
            raise UserError(f"model.name: unknown open_clip architecture {name!r} "
                                  f"(ours: {', '.join(p.stem for p in sorted(CONFIG_DIR.glob('*.json')))})")
    size = cfg["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def build(name: str, pretrained: str = "", seed: int = 0) -> ClipModel:
    """An open_clip model by architecture name and pretrained tag / weights file / local-dir folder."""
    oc = open_clip()
    torch.manual_seed(seed)
    if pretrained and Path(pretrained).is_dir():
        return load_checkpoint(pretrained)
    model_cfg = oc.get_model_config(name)
    if model_cfg is None:
        raise UserError(f"model.name: unknown open_clip architecture {name!r}; see "
                              "open_clip.list_models() or tasks/model_configs/")
    if pretrained and Path(pretrained).suffix not in ("", ".safetensors") and not Path(pretrained).is_file():
        raise UserError(f"model.pretrained: weights file {pretrained!r} not found")
    try:
        model = oc.create_model(name, pretrained=pretrained or None, weights_only=True)
    except Exception as exc:
        if pretrained and Path(pretrained).is_file() or name.startswith("local-dir:"):
            raise weights_error(f"model.pretrained: {pretrained}" if pretrained else f"model.name: {name}",
                                exc) from None
        raise UserError(f"model.pretrained: cannot load {pretrained!r} for {name!r}: {_one_line(exc)}. "
                              "Without network access use a local weights file or folder.") from None
    tokenizer = oc.get_tokenizer(name)
    return _wrap(model, tokenizer, name, model_cfg, {"pretrained": pretrained})


def load_checkpoint(folder: str | Path) -> ClipModel:
    """Load a local-dir checkpoint folder; weights are read as safetensors only."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise UserError(f"{folder}: checkpoint folder not found (train a model first: `trafficlip train`)")
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise UserError(f"{folder}: not a checkpoint folder (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text())
        config["model_cfg"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{config_path}: not an open_clip config ({_one_line(exc)})") from None
    oc = open_clip()
    try:
        model = oc.create_model(f"local-dir:{folder}", weights_only=True)
        tokenizer = oc.get_tokenizer(f"local-dir:{folder}")
    except Exception as exc:
        raise weights_error(str(folder / WEIGHTS_FILE), exc) from None
    info = config.get("trafficlip", {})
    return _wrap(model, tokenizer, info.get("architecture", folder.name), config["model_cfg"], info)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def weights_error(what: str, exc: BaseException) -> UserError:
    """Why weights were not loaded, as one line. A pickle that needs more than plain tensors (code to
    run, objects to build) is refused by ``torch.load(weights_only=True)`` before anything in it runs."""
    import pickle
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        return UserError(f"{what}: refused: a pickle that holds more than plain tensors (it would run code "
                               "or build objects when loaded); only safetensors files, or torch files of plain "
                               "tensors (weights_only=True), are loaded")
    if type(exc).__name__ == "SafetensorError":
        return UserError(f"{what}: not a valid safetensors file ({_one_line(exc)})")
    return UserError(f"{what}: cannot load the weights ({type(exc).__name__}: {_one_line(exc)})")


def save_checkpoint(clip: ClipModel, folder: str | Path, extra: dict | None = None,
                    files: dict[str, bytes] | None = None) -> Path:
    """Write a local-dir checkpoint atomically (the folder appears complete or not at all)."""
    from safetensors.torch import save_file
    state = {k: v.detach().to("cpu").contiguous() for k, v in clip.model.state_dict().items()}
    config = {
        "model_cfg": clip.model_cfg,
        "preprocess_cfg": {"mean": list(clip.mean), "std": list(clip.std), "size": clip.image_size,
                           "resize_mode": "longest", "fill_color": 0, "interpolation": "bicubic"},
        "trafficlip": {"architecture": clip.name, **(extra or {})},
    }
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
    return Path(folder)


def logit_scale(clip: ClipModel) -> float:
    """The model's softmax temperature as a multiplier of cosine similarity (CLIP caps it at 100)."""
    return float(clip.model.logit_scale.detach().exp().clamp(max=100.0))


@torch.inference_mode()
def encode_texts(clip: ClipModel, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float32 text embeddings [len(texts), D] (without the padding a causal text tower
    never looks at: tasks/core/textenc.py)."""
    clip.model.eval()
    dev = next(clip.model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenize(texts[start:start + batch_size]).to(dev)
        chunks.append(F.normalize(textenc.encode_text(clip.model, tokens).float(), dim=-1).cpu())
    dim = clip.model_cfg.get("embed_dim", 0)
    return torch.cat(chunks) if chunks else torch.empty((0, dim))


@torch.inference_mode()
def encode_images(clip: ClipModel, images, batch_size: int = 256, count: int | None = None,
                  flip: bool = False) -> torch.Tensor:
    """L2-normalised float32 image embeddings from uint8 [N,S,S,3] images (a tensor or an ImageCache).

    ``flip`` embeds the horizontally mirrored images. Square images of another size than the model's
    input (a cache prepared for another model) are resized, which keeps their padded geometry.
    """
    clip.model.eval()
    dev = next(clip.model.parameters()).device
    total = len(images) if count is None else count
    chunks = []
    starts = range(0, total, batch_size)
    if len(starts) >= PROGRESS_MIN_BATCHES:   # a long pass: a bar on a terminal, periodic lines in logs
        import logging

        from tasks.core import log
        starts = log.progress(starts, len(starts), "embed images" + (" (mirrored)" if flip else ""),
                              logging.getLogger("trafficlip.embed"))
    for start in starts:
        batch = images[list(range(start, min(start + batch_size, total)))] if not torch.is_tensor(images) \
            else images[start:start + batch_size]
        x = to_model_input(batch, clip.mean, clip.std)
        if flip:
            x = torch.flip(x, dims=[3])
        if x.shape[-1] != clip.image_size:
            x = F.interpolate(x, size=(clip.image_size, clip.image_size), mode="bicubic", antialias=True,
                              align_corners=False)
        x = x.to(dev)
        chunks.append(F.normalize(clip.model.encode_image(x).float(), dim=-1).cpu())
    dim = clip.model_cfg.get("embed_dim", 0)
    return torch.cat(chunks) if chunks else torch.empty((0, dim))

