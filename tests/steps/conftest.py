"""Fixtures of the step tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def damaged_raw(raw_copy) -> tuple[Path, Path]:
    """The tiny dataset with three problems: a train line without fields, a train line whose image
    escapes the dataset, and an undecodable validation image (returned second)."""
    label = raw_copy / "train" / "train_label.txt"
    lines = label.read_text().splitlines()
    lines.insert(1, "nofields")
    lines.insert(2, "../../etc/passwd$A white Audi.$This is a white Audi.")
    label.write_text("\n".join(lines) + "\n")
    victim = sorted((raw_copy / "val" / "val_images").iterdir())[0]
    victim.write_bytes(b"not an image")
    return raw_copy, victim
