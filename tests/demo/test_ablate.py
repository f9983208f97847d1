"""`trafficlip ablate`: both arms, every row, both files."""

from __future__ import annotations

import json

from tasks.demo import ablate
from tasks.steps import train
from tests.support.params import tiny_params


def test_ablation_writes_the_table_with_every_row(tiny_raw, tiny_prepared, tmp_path):
    params = tiny_params()
    params["augment"]["min_confidence"] = 0.0     # the tiny model is unsure: make augmentation change captions
    train.run(params, tiny_prepared, tmp_path / "models", tmp_path / "reports")
    result = ablate.run(params, tiny_prepared, tmp_path / "models" / "model", tmp_path / "work",
                        tmp_path / "ablation", teacher="self", truth=tiny_raw / "synth_truth.json")
    expected = [name for name, _, _ in ablate.rows()]
    assert len(expected) == 11 and expected[:2] == ["all off", "all on"]
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert [row["name"] for row in saved["rows"]] == expected
    for row in saved["rows"]:
        for group in ("overall", "vehicle", "pedestrian"):
            assert 0.0 <= row["metrics"][group]["map_at_10"] <= 1.0
            assert 0.0 <= row["metrics"][group]["recall_at_1"] <= 1.0
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert sum(line.startswith(f"| {name} |") for name in expected for line in table) == len(expected)
    assert [e["feature"] for e in saved["effects"]] == list(ablate.FEATURES)
    notes = result["notes"]
    # the pipeline's model is the arm without augmentation; the other arm is trained with the same params
    assert notes["model_without_augmentation"].startswith("reused")
    assert notes["model_with_augmentation"].startswith("trained") and notes["captions_changed"] > 0
    assert notes["teacher"].startswith("self-training")
    assert (tmp_path / "work" / "with_augmentation" / "model").is_dir()
    off = next(r for r in saved["rows"] if r["name"] == "all off")
    assert not any(off["features"].values()) and off["retrieval"]["rerank"] is False
