"""The error vocabulary (tasks/core/errors.py): a user's mistake exits 2 and is never retried, anything else
exits 75 so that the DAGs retry it; bad input names its file, line and field."""

from __future__ import annotations

import pytest

from tasks.core import errors
from tasks.core.errors import InputError, ServiceError, StepFailed, TrafficlipError, UserError


@pytest.mark.parametrize("error, status", [
    (UserError("bad value"), 2), (InputError("labels.txt", "bad line", line=3), 2),
    (ServiceError("MLflow is down"), 75), (StepFailed("killed"), 75), (TrafficlipError("other"), 75),
])
def test_the_exit_status_says_whether_a_retry_can_help(error, status):
    assert errors.exit_status(error) == status
    assert (status == errors.USER_EXIT) == isinstance(error, UserError)


def test_an_input_error_names_file_line_field_and_what_was_expected():
    error = InputError("data/raw/train/train_label.txt", "has 2 '$'-separated fields", line=7, field="line",
                       expected="image$attribute$text")
    assert str(error) == ("data/raw/train/train_label.txt:7: field 'line': has 2 '$'-separated fields "
                          "(expected image$attribute$text)")
    assert error.as_dict() == {"file": "data/raw/train/train_label.txt", "line": 7, "field": "line",
                               "reason": "has 2 '$'-separated fields", "expected": "image$attribute$text"}
    # without a line or field, the message is the file and the problem alone
    assert str(InputError("params.yaml", "not found")) == "params.yaml: not found"
