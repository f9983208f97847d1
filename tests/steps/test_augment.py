"""Zero-shot attribute augmentation: what is completed, what is left alone, what is reported."""

from __future__ import annotations

import collections
import copy
import json

import pytest

from tasks.core import models
from tasks.core.atomic import read_json
from tasks.core.errors import TrafficlipError
from tasks.core.images import ImageCache
from tasks.core.labels import VehicleAttributes, Vocabulary
from tasks.steps import augment, train
from tests.support.params import tiny_params

CFG = {"enabled": True, "model": "initial", "min_confidence": 0.0, "guess_brand": False, "batch_size": 64}


@pytest.fixture(scope="module")
def clip():
    model = models.build("TrafficCLIP-Tiny", seed=0)
    model.model.eval()
    return model


@pytest.fixture(scope="module")
def prepared(tiny_prepared):
    manifest = read_json(tiny_prepared / "train" / "manifest.json")
    vocabulary = Vocabulary.from_dict(read_json(tiny_prepared / "vocabulary.json"))
    return manifest, vocabulary, ImageCache(tiny_prepared / "train")


def _with_labels(manifest: dict, labels: dict[int, tuple[str | None, str | None, str | None]]) -> dict:
    """A copy of the manifest whose first vehicle images carry the given labels and template captions."""
    out = copy.deepcopy(manifest)
    vehicles = [i for i, e in enumerate(out["images"]) if e["category"] == "vehicle"]
    for slot, (colour, brand, vehicle_type) in labels.items():
        entry = out["images"][vehicles[slot]]
        entry.update(colour=colour, brand=brand, type=vehicle_type)
        for pair in out["pairs"]:
            if pair["image"] == vehicles[slot]:
                pair["text"] = augment.prompt(VehicleAttributes(colour, brand, vehicle_type))
    return out


def _texts(manifest: dict, slot: int) -> list[str]:
    vehicles = [i for i, e in enumerate(manifest["images"]) if e["category"] == "vehicle"]
    return [p["text"] for p in manifest["pairs"] if p["image"] == vehicles[slot]]


def test_complete_caption_unchanged_and_empty_one_completed(prepared, clip):
    manifest, vocabulary, images = prepared
    labelled = _with_labels(manifest, {0: ("white", "Audi", "Sedan"), 1: (None, "Audi", None)})
    out, report = augment.augment_manifest(labelled, vocabulary, images, clip, CFG)
    assert _texts(out, 0) == ["This is a white Audi Sedan."]
    completed = _texts(out, 1)[0]
    parsed = [w for w in completed.rstrip(".").split() if w in vocabulary.colours or w in vocabulary.types]
    assert completed.startswith("This is a") and "Audi" in completed and len(parsed) == 2, completed
    assert report["attributes"]["brand"]["not_guessed"] == report["attributes"]["brand"]["missing"]


def test_min_confidence_decides_what_is_written(prepared, clip):
    manifest, vocabulary, images = prepared
    _, everything = augment.augment_manifest(manifest, vocabulary, images, clip, CFG)
    confidences = [c for change in everything["changes"] for c in change["confidence"].values()]
    assert everything["captions_changed"] > 0
    # the report rounds confidences to 4 places: put the threshold halfway between two distinct
    # reported values so no raw confidence sits on it
    distinct = sorted(set(confidences))
    middle = len(distinct) // 2
    threshold = (distinct[middle - 1] + distinct[middle]) / 2 if len(distinct) > 1 else distinct[0] / 2
    _, some = augment.augment_manifest(manifest, vocabulary, images, clip, {**CFG, "min_confidence": threshold})
    written = [c for change in some["changes"] for c in change["confidence"].values()]
    assert written and all(c >= threshold for c in written)
    assert sum(s["completed"] for s in some["attributes"].values()) == sum(c >= threshold for c in confidences)
    # a randomly initialised model is never confident at the default threshold: nothing is injected
    _, default = augment.augment_manifest(manifest, vocabulary, images, clip, {**CFG, "min_confidence": 0.7})
    assert default["captions_changed"] == 0


def test_brands_are_guessed_only_when_asked(prepared, clip):
    manifest, vocabulary, images = prepared
    labelled = _with_labels(manifest, {0: ("white", None, "Sedan")})
    out, report = augment.augment_manifest(labelled, vocabulary, images, clip, CFG)
    assert _texts(out, 0) == ["This is a white Sedan."] and report["attributes"]["brand"]["completed"] == 0
    out, report = augment.augment_manifest(labelled, vocabulary, images, clip, {**CFG, "guess_brand": True})
    brand = _texts(out, 0)[0].split()[4]
    assert brand in vocabulary.brands and report["attributes"]["brand"]["completed"] >= 1


def test_every_candidate_prompt_is_embedded_once(prepared, clip, monkeypatch):
    manifest, vocabulary, images = prepared
    seen = collections.Counter()
    tokenize = models.ClipModel.tokenize

    def counting(self, texts):
        seen.update(texts)
        return tokenize(self, texts)
    monkeypatch.setattr(models.ClipModel, "tokenize", counting)
    _, report = augment.augment_manifest(manifest, vocabulary, images, clip, CFG)
    expected = set()
    for entry in manifest["images"]:
        if entry["category"] == "vehicle":
            known = VehicleAttributes(entry["colour"], entry["brand"], entry["type"])
            missing = augment.to_complete(known, guess_brand=False)
            if missing:
                expected |= {augment.prompt(c) for c in augment.candidates(known, missing, vocabulary)}
    assert set(seen) == expected and max(seen.values()) == 1
    assert report["prompts_embedded"] == len(expected)


def test_report_counts_reconcile_and_accuracy_uses_the_truth(tiny_raw, prepared, clip):
    manifest, vocabulary, images = prepared
    truth = read_json(tiny_raw / "synth_truth.json")["images"]
    out, report = augment.augment_manifest(manifest, vocabulary, images, clip, CFG, truth)
    vehicles = [e for e in manifest["images"] if e["category"] == "vehicle"]
    assert report["vehicle_images"] == len(vehicles)
    for name in ("colour", "type"):
        stats = report["attributes"][name]
        field = "type" if name == "type" else "colour"
        assert stats["missing"] == sum(e[field] is None for e in vehicles) > 0
        assert stats["to_complete"] == stats["completed"] + stats["not_confident"] + stats["no_candidates"]
        assert stats["truth"]["checked"] == stats["to_complete"]
        assert 0.0 <= stats["truth"]["accuracy_all"] <= 1.0
    changed = [p for p in out["pairs"] if "original_text" in p]
    assert report["captions_changed"] == len(report["changes"]) == len(changed)
    assert [(p["image"], p.get("line")) for p in out["pairs"]] == [(p["image"], p.get("line")) for p in manifest["pairs"]]
    assert out["images"] == manifest["images"]


def test_rewrite_caption_keeps_other_wording():
    old, new = VehicleAttributes(None, "Audi", None), VehicleAttributes("white", "Audi", "Sedan")
    assert augment.rewrite_caption("This is an Audi.", old, new) == "This is a white Audi Sedan."
    assert augment.rewrite_caption("An Audi parked at night.", old, new) == "A white Audi Sedan parked at night."
    assert augment.rewrite_caption("Something else.", old, new) is None


def test_stage_writes_manifest_and_report_and_copies_when_disabled(tiny_raw, tiny_prepared, tmp_path):
    params = tiny_params()
    summary = augment.run(params, tiny_prepared, tmp_path / "aug", tmp_path / "report.json",
                          tiny_raw / "synth_truth.json")
    report = json.loads((tmp_path / "report.json").read_text())
    # the demo's starting model is random: at the default min_confidence it writes nothing
    assert report["model"].startswith("TrafficCLIP-Tiny, random initialisation")
    assert summary["captions_changed"] == report["captions_changed"] == 0
    assert report["attributes"]["colour"]["not_confident"] == report["attributes"]["colour"]["to_complete"] > 0
    params["augment"]["enabled"] = False
    augment.run(params, tiny_prepared, tmp_path / "off", tmp_path / "off.json")
    assert read_json(tmp_path / "off" / augment.MANIFEST_NAME) == read_json(tiny_prepared / "train" / "manifest.json")
    params["augment"].update(enabled=True, model=str(tmp_path / "nowhere"))
    with pytest.raises(TrafficlipError, match="augment.model"):
        augment.run(params, tiny_prepared, tmp_path / "bad", tmp_path / "bad.json")


def test_train_refuses_a_manifest_for_another_cache(tiny_prepared, tmp_path):
    manifest = read_json(tiny_prepared / "train" / "manifest.json")
    manifest["images"] = manifest["images"][:-1]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(TrafficlipError, match="m.json describes .* images but the cache"):
        train.run(tiny_params(), tiny_prepared, tmp_path / "models", tmp_path / "r", manifest_path=tmp_path / "m.json")
