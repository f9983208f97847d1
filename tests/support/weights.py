"""Trained weights compared tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tasks.core import models


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder."""
    return load_file(folder / models.WEIGHTS_FILE)


def assert_same_weights(a: Path, b: Path) -> None:
    """Two checkpoint folders hold exactly the same tensors (bit for bit)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
