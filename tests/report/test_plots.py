"""The plots of an evaluation (tasks/report/plots.py): PNG images of a sensible size, the training steps
read back from their CSV."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.errors import TrafficlipError
from tasks.report import plots
from tests.support import evaluation


def test_plots_are_png_images_of_a_sensible_size():
    curves = evaluation.png(plots.training_curves(evaluation.STEPS))
    with_validation = evaluation.png(plots.training_curves(evaluation.STEPS, evaluation.VALIDATION))
    bars = evaluation.png(plots.category_metrics(evaluation.metrics()))
    for image in (curves, with_validation, bars):
        assert 600 <= image.width <= 2000 and 300 <= image.height <= 1500, image.size
        assert len(np.unique(np.asarray(image.convert("L")))) > 20   # something is drawn, not a blank canvas
    assert with_validation.height > curves.height                     # the validation panel below
    without_baseline = {k: v for k, v in evaluation.metrics().items() if k != "baseline"}
    assert evaluation.png(plots.category_metrics(without_baseline)).size == bars.size
    # no timestamps or versions inside
    assert plots.training_curves(evaluation.STEPS) == plots.training_curves(evaluation.STEPS)


def test_training_steps_are_read_from_the_csv_and_a_broken_row_is_named(tmp_path):
    csv = tmp_path / "train_steps.csv"
    csv.write_text("step,epoch,loss,lr\n1,1,4.5,0.0001\n2,1,4.25,0.0002\n")
    assert plots.read_steps(csv) == [{"step": 1, "epoch": 1, "loss": 4.5, "lr": 0.0001},
                                     {"step": 2, "epoch": 1, "loss": 4.25, "lr": 0.0002}]
    assert plots.read_steps(tmp_path / "missing.csv") == []
    csv.write_text("step,epoch,loss,lr\n1,1,4.5,0.0001\n2,1,nan?,0.0002\n")
    with pytest.raises(TrafficlipError, match=r"train_steps.csv:3"):
        plots.read_steps(csv)
