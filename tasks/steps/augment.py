"""Step `augment`: complete training vehicle captions that miss colour and/or type, zero-shot.

The reference solution's attribute augmentation ("white Audi" -> "white Audi Sedan"): for every
training vehicle whose label lacks colour and/or type (and brand, only with ``guess_brand``), each
completion from the training vocabulary is written as a caption ("This is a white Audi Bus.", ...),
scored by a CLIP model against the image, and the most probable one is kept. An attribute is only
written when the model's softmax probability for it (summed over the other completed attributes)
reaches ``min_confidence``; below that the caption keeps it missing and the report counts it as
not confident, so a model that cannot tell (a randomly initialised one) never injects guesses.

Unlike the reference (model rebuilt per batch, every colour x brand x type product embedded for
every image), the model is built once, every distinct candidate caption is embedded once per run
and the images go through the model in batches: see benchmarks/augment.py.

Output:
  <out>/train_manifest.json    the prepared training manifest with completed texts (train reads its
                               images from the prepared cache; only texts change)
  <report>                     counts per attribute, the model's confidence, every change, and, when
                               the true attributes are known (the demo's synth_truth.json), accuracy
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tasks.core import log, models
from tasks.core.atomic import read_json, write_json, write_json_streamed
from tasks.core.errors import UserError
from tasks.core.images import CacheSelection, ImageCache
from tasks.core.labels import VEHICLE, VehicleAttributes, Vocabulary
from tasks.core.paths import MANIFEST, VOCABULARY
from tasks.core.vocab import article, vehicle_caption

MANIFEST_NAME = "train_manifest.json"
ATTRIBUTES = ("colour", "brand", "type")
_FIELD = {"colour": "colour", "brand": "brand", "type": "vehicle_type"}


def value(attributes: VehicleAttributes, name: str) -> str | None:
    return getattr(attributes, _FIELD[name])


def prompt(attributes: VehicleAttributes) -> str:
    """The caption a candidate is scored as: the training captions' own form."""
    return vehicle_caption(attributes.colour, attributes.brand, attributes.vehicle_type)


def to_complete(attributes: VehicleAttributes, guess_brand: bool) -> tuple[str, ...]:
    """The missing attributes augmentation fills in (brands only when asked)."""
    return tuple(name for name in ATTRIBUTES
                 if value(attributes, name) is None and (name != "brand" or guess_brand))


def candidates(attributes: VehicleAttributes, missing: Sequence[str], vocabulary: Vocabulary) -> list[VehicleAttributes]:
    """Every completion of ``missing`` from the vocabulary, the known attributes kept."""
    options = {"colour": vocabulary.colours, "brand": vocabulary.brands, "type": vocabulary.types}
    choices = [options[name] if name in missing else [value(attributes, name)] for name in ATTRIBUTES]
    return [VehicleAttributes(c, b, t) for c, b, t in itertools.product(*choices)]


@dataclass
class Choice:
    attributes: VehicleAttributes      # the most probable completion
    confidence: dict[str, float]       # per completed attribute: probability of its chosen value


def complete(clip: models.ClipModel, images, items: Sequence[tuple[int, VehicleAttributes, tuple[str, ...]]],
             vocabulary: Vocabulary, batch_size: int = 256) -> tuple[list[Choice | None], int]:
    """Score every completion of every item ``(image index, known attributes, missing)``.

    Returns one Choice per item (None when the vocabulary offers no completion) and the number of
    distinct prompts embedded. Each distinct prompt is embedded once; images in batches; items
    that share their candidates are scored with one matrix product.
    """
    prompt_ids: dict[str, int] = {}
    item_candidates: list[list[VehicleAttributes]] = []
    for _, attributes, missing in items:
        options = candidates(attributes, missing, vocabulary)
        item_candidates.append(options)
        for option in options:
            prompt_ids.setdefault(prompt(option), len(prompt_ids))
    texts = models.encode_texts(clip, list(prompt_ids), batch_size)
    pictures = models.encode_images(clip, CacheSelection(images, [index for index, _, _ in items]), batch_size)
    scale = models.logit_scale(clip)
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, options in enumerate(item_candidates):
        if options:
            groups.setdefault(tuple(prompt_ids[prompt(o)] for o in options), []).append(position)
    choices: list[Choice | None] = [None] * len(items)
    for ids, positions in groups.items():
        options = item_candidates[positions[0]]
        probabilities = torch.softmax(scale * pictures[positions] @ texts[list(ids)].t(), dim=1)   # [n, C]
        best = probabilities.argmax(dim=1)
        missing = items[positions[0]][2]
        marginals = {}
        for name in missing:
            values = sorted({value(o, name) for o in options})
            column = torch.tensor([values.index(value(o, name)) for o in options])
            per_value = torch.zeros((len(positions), len(values)), dtype=probabilities.dtype)
            per_value.index_add_(1, column, probabilities)
            marginals[name] = per_value.gather(1, column[best][:, None]).squeeze(1)
        for row, position in enumerate(positions):
            chosen = options[int(best[row])]
            choices[position] = Choice(chosen, {name: float(marginals[name][row]) for name in missing})
    return choices, len(prompt_ids)


def rewrite_caption(text: str, old: VehicleAttributes, new: VehicleAttributes) -> str | None:
    """The caption with ``new``'s attributes; None when the caption does not name ``old`` in a known form.

    Captions in the template form ("This is a white Audi.") are rewritten whole; otherwise the
    attribute words ("white Audi", with its article) are replaced where they occur.
    """
    if text.strip() == prompt(old):
        return prompt(new)
    old_words = " ".join(v for v in (old.colour, old.brand, old.vehicle_type) if v)
    new_words = " ".join(v for v in (new.colour, new.brand, new.vehicle_type) if v)
    found = re.search(r"\b(?:(an?)\s+)?" + re.escape(old_words) + r"\b", text, re.IGNORECASE)
    if not found:
        return None
    replacement = new_words
    if found.group(1):
        chosen = article(new_words)
        replacement = f"{chosen if found.group(1)[0].isupper() else chosen.lower()} {new_words}"
    return text[:found.start()] + replacement + text[found.end():]


def scoring_model(params: dict) -> tuple[models.ClipModel, str]:
    """The model ``augment.model`` names, and a description for the report."""
    setting = params["augment"]["model"]
    if setting == "initial":
        name, pretrained = params["model"]["name"], params["model"]["pretrained"]
        clip = models.build(name, pretrained, seed=params["train"]["seed"])
        return clip, (f"{name} {pretrained}" if pretrained else
                      f"{name}, random initialisation (seed {params['train']['seed']})")
    if not Path(setting).is_dir():
        raise UserError(f"augment.model: {setting!r} is neither 'initial' nor a checkpoint folder "
                              "(expected 'initial' or a local-dir folder such as models/model)")
    return models.load_checkpoint(setting), f"checkpoint {setting}"


def _attributes(entry: dict) -> VehicleAttributes:
    return VehicleAttributes(entry.get("colour"), entry.get("brand"), entry.get("type"))


def _accuracy(predicted: list[tuple[str, str, bool]], truth: dict, name: str) -> dict:
    """Accuracy of the predictions of one attribute, over all and over the written ones."""
    checked = [(guess, truth[path][name], written) for path, guess, written in predicted
               if path in truth and truth[path].get(name) is not None]
    written = [(g, t) for g, t, w in checked if w]
    return {"checked": len(checked),
            "accuracy_all": round(sum(g == t for g, t, _ in checked) / len(checked), 4) if checked else None,
            "written": len(written),
            "accuracy_written": round(sum(g == t for g, t in written) / len(written), 4) if written else None}


def augment_manifest(manifest: dict, vocabulary: Vocabulary, images, clip: models.ClipModel, cfg: dict,
                     truth: dict | None = None) -> tuple[dict, dict]:
    """The augmented manifest and the report (see the module docstring)."""
    started = time.monotonic()
    entries = manifest["images"]
    vehicles = [i for i, e in enumerate(entries) if e and e.get("category") == VEHICLE]
    items = []
    missing_counts = {name: 0 for name in ATTRIBUTES}
    for index in vehicles:
        attributes = _attributes(entries[index])
        for name in attributes.missing:
            missing_counts[name] += 1
        missing = to_complete(attributes, cfg["guess_brand"])
        if missing:
            items.append((index, attributes, missing))
    choices, prompts = complete(clip, images, items, vocabulary, cfg["batch_size"]) if items else ([], 0)

    per_attribute = {name: {"missing": missing_counts[name], "to_complete": 0, "completed": 0,
                            "not_confident": 0, "no_candidates": 0, "confidences": []} for name in ATTRIBUTES}
    predicted: dict[str, list] = {name: [] for name in ATTRIBUTES}
    written: dict[int, VehicleAttributes] = {}
    confidence_of: dict[int, dict] = {}
    for (index, attributes, missing), choice in zip(items, choices):
        fields = {"colour": attributes.colour, "brand": attributes.brand, "type": attributes.vehicle_type}
        for name in missing:
            stats = per_attribute[name]
            stats["to_complete"] += 1
            if choice is None:
                stats["no_candidates"] += 1
                continue
            confidence = choice.confidence[name]
            stats["confidences"].append(confidence)
            confident = confidence >= cfg["min_confidence"]
            predicted[name].append((entries[index]["path"], value(choice.attributes, name), confident))
            if confident:
                stats["completed"] += 1
                fields[name] = value(choice.attributes, name)
            else:
                stats["not_confident"] += 1
        new = VehicleAttributes(fields["colour"], fields["brand"], fields["type"])
        if new != attributes:
            written[index] = new
            confidence_of[index] = {n: round(choice.confidence[n], 4) for n in missing
                                    if value(new, n) is not None}

    # the output shares every unchanged entry with the input (which stays as it was): a copy of the
    # manifest would double the step's memory for the training split's metadata
    changes, unrewritable, pairs = [], [], []
    for pair in manifest["pairs"]:
        index = pair["image"]
        if index in written:
            text = rewrite_caption(pair["text"], _attributes(entries[index]), written[index])
            if text is None:
                unrewritable.append({"image": entries[index]["path"], "line": pair.get("line"), "text": pair["text"]})
            else:
                changes.append({"image": entries[index]["path"], "line": pair.get("line"), "before": pair["text"],
                                "after": text, "confidence": confidence_of[index]})
                pair = {**pair, "original_text": pair["text"], "text": text,
                        "augmented": {n: value(written[index], n) for n in confidence_of[index]}}
        pairs.append(pair)
    out = {**manifest, "pairs": pairs}

    attributes_report = {}
    for name, stats in per_attribute.items():
        confidences = stats.pop("confidences")
        stats["mean_confidence"] = round(sum(confidences) / len(confidences), 4) if confidences else None
        if name == "brand" and not cfg["guess_brand"]:
            stats["not_guessed"] = stats["missing"]
        if truth is not None:
            stats["truth"] = _accuracy(predicted[name], truth, name)
        attributes_report[name] = stats
    report = {
        "enabled": True, "min_confidence": cfg["min_confidence"], "guess_brand": cfg["guess_brand"],
        "vehicle_images": len(vehicles), "images_to_complete": len(items),
        "images_changed": len({c["image"] for c in changes}), "captions_changed": len(changes),
        "captions_not_rewritable": unrewritable, "prompts_embedded": prompts,
        "attributes": attributes_report, "seconds": round(time.monotonic() - started, 3),
        "changes": changes,
    }
    return out, report


def run(params: dict, data: str | Path, out: str | Path, report_path: str | Path,
        truth_path: str | Path | None = None) -> dict:
    logger = log.setup("augment")
    cfg = params["augment"]
    data, out = Path(data), Path(out)
    manifest = read_json(data / "train" / MANIFEST, "trafficlip prepare")
    truth = None
    if truth_path and Path(truth_path).is_file():
        truth = read_json(truth_path)["images"]
    if not cfg["enabled"]:
        write_json_streamed(out / MANIFEST_NAME, manifest)
        report = {"enabled": False, "captions_changed": 0, "note": "augment.enabled is false: manifest copied"}
        write_json(report_path, report)
        logger.info("augmentation disabled: %s copied unchanged", data / "train" / MANIFEST)
        return report
    vocabulary = Vocabulary.from_dict(read_json(data / VOCABULARY, "trafficlip prepare"))
    clip, description = scoring_model(params)
    clip.model.to(models.device())
    augmented, report = augment_manifest(manifest, vocabulary, ImageCache(data / "train"), clip, cfg, truth)
    report = {"model": description, "truth": str(truth_path) if truth is not None else None, **report}
    write_json_streamed(out / MANIFEST_NAME, augmented)
    write_json(report_path, report)
    summary = {name: {k: v for k, v in stats.items() if k in ("to_complete", "completed", "not_confident",
                                                              "mean_confidence", "truth")}
               for name, stats in report["attributes"].items() if stats["to_complete"]}
    logger.info("%d caption(s) changed by %s; %s", report["captions_changed"], description, summary)
    return {k: v for k, v in report.items() if k not in ("changes", "captions_not_rewritable")}
