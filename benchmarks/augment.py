"""Benchmark: our attribute augmentation against the reference solution's approach.

The reference (A3R) rebuilt the CLIP model inside its batch loop and, for every image, embedded
every colour x brand x type caption of the vocabulary, then kept the best one that agrees with the
label's known attributes. Ours (tasks/steps/augment.py) builds the model once, embeds each distinct
candidate caption once per run and the images in batches. Both run here on the same checkpoint and
the same vehicle images, and must choose the same attributes.

Images: the first N training vehicles (default 200) whose label names a brand (neither approach
guesses brands). Each keeps what its label leaves out; a label that names colour and type has one
masked in rotation (colour, type, both), so every image has something to complete and the choices
can be checked against the label.

    python benchmarks/augment.py [--data data/prepared] [--model models/model] [--images 200]

Prints both times, the ratio, whether both chose the same attributes, and their accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tasks.core import models  # noqa: E402
from tasks.core.atomic import read_json  # noqa: E402
from tasks.core.images import ImageCache  # noqa: E402
from tasks.core.labels import VEHICLE, VehicleAttributes, Vocabulary  # noqa: E402
from tasks.core.paths import MANIFEST  # noqa: E402
from tasks.steps import augment  # noqa: E402

MASKS = (("colour",), ("type",), ("colour", "type"))


def select(manifest: dict, count: int) -> tuple[list[tuple[int, VehicleAttributes, tuple[str, ...]]], list]:
    """(image index, attributes given to both methods, attributes to complete) and the labelled attributes."""
    items, labelled = [], []
    for index, entry in enumerate(manifest["images"]):
        if entry.get("category") != VEHICLE or not entry.get("brand"):
            continue
        label = VehicleAttributes(entry.get("colour"), entry["brand"], entry.get("type"))
        missing = augment.to_complete(label, guess_brand=False)
        if not missing:
            missing = MASKS[len(items) % len(MASKS)]
        known = VehicleAttributes(None if "colour" in missing else label.colour, label.brand,
                                  None if "type" in missing else label.vehicle_type)
        items.append((index, known, missing))
        labelled.append(label)
        if len(items) == count:
            break
    return items, labelled


def ours(folder: Path, images, items, vocabulary, batch_size: int) -> list[VehicleAttributes]:
    clip = models.load_checkpoint(folder)
    clip.model.to(models.device())
    choices, _ = augment.complete(clip, images, items, vocabulary, batch_size)
    return [choice.attributes for choice in choices]


@torch.inference_mode()
def _plain_text_embeddings(clip, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """open_clip's own encode_text over the whole padded context, as the reference ran it (ours skips
    the padding: tasks/core/textenc.py)."""
    clip.model.eval()
    return torch.cat([F.normalize(clip.model.encode_text(clip.tokenize(prompts[i:i + batch_size])).float(), dim=-1)
                      for i in range(0, len(prompts), batch_size)])


def reference(folder: Path, images, items, vocabulary, batch: int) -> list[VehicleAttributes]:
    """The reference's loop: model rebuilt per batch, every product embedded for every image."""
    products = [VehicleAttributes(c, b, t) for c in vocabulary.colours for b in vocabulary.brands
                for t in vocabulary.types]
    prompts = [augment.prompt(p) for p in products]
    chosen = []
    for start in range(0, len(items), batch):
        clip = models.load_checkpoint(folder)
        clip.model.to(models.device())
        for index, known, missing in items[start:start + batch]:
            texts = _plain_text_embeddings(clip, prompts)
            image = models.encode_images(clip, images[[index]])
            scores = (image @ texts.t())[0]
            agrees = torch.tensor([all(augment.value(p, n) == augment.value(known, n)
                                       for n in augment.ATTRIBUTES if n not in missing) for p in products])
            chosen.append(products[int(scores.masked_fill(~agrees, float("-inf")).argmax())])
    return chosen


def accuracy(chosen, labelled, items) -> dict:
    out = {}
    for name in ("colour", "type"):
        pairs = [(augment.value(c, name), augment.value(l, name)) for c, l, (_, _, missing)
                 in zip(chosen, labelled, items) if name in missing]
        out[name] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--model", default="models/model", help="a local-dir checkpoint folder")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256, help="our embedding batch")
    parser.add_argument("--reference-batch", type=int, default=25, help="images per reference batch (model rebuilt)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, folder = Path(args.data), Path(args.model)
    manifest = read_json(data / "train" / MANIFEST, "trafficlip prepare")
    vocabulary = Vocabulary.from_dict(read_json(data / "vocabulary.json", "trafficlip prepare"))
    images = ImageCache(data / "train")
    images.all()   # both methods read decoded images from memory
    warm = models.load_checkpoint(folder)   # importing open_clip and torch's first calls are part of neither method
    models.encode_texts(warm, ["This is a car."])
    models.encode_images(warm, images[[0]])
    items, labelled = select(manifest, args.images)
    products = len(vocabulary.colours) * len(vocabulary.brands) * len(vocabulary.types)
    print(f"{len(items)} vehicle images, model {folder} on {models.device()}, {products} products per image "
          f"for the reference")

    started = time.perf_counter()
    fast = ours(folder, images, items, vocabulary, args.batch_size)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    slow = reference(folder, images, items, vocabulary, args.reference_batch)
    reference_seconds = time.perf_counter() - started

    same = sum(a == b for a, b in zip(fast, slow))
    print(f"ours:      {ours_seconds:8.2f} s   accuracy vs labels {accuracy(fast, labelled, items)}")
    print(f"reference: {reference_seconds:8.2f} s   accuracy vs labels {accuracy(slow, labelled, items)}")
    print(f"ratio:     {reference_seconds / ours_seconds:8.1f}x faster")
    print(f"same choices: {same}/{len(items)}" + ("" if same == len(items) else "  (DIFFERENT)"))
    return 0 if same == len(items) else 1


if __name__ == "__main__":
    sys.exit(main())
