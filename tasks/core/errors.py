"""The project's error vocabulary: what failed, and whether trying again can help.

- :class:`UserError` (and :class:`InputError`, its form for bad input): a mistake in data, parameters or
  a request. The CLI exits 2; orchestration raises it again; the DAGs fail the task at once, no retry.
- :class:`ServiceError`: a service the step needs (the MLflow server, the DVC remote) is down or
  failing. The CLI exits 75 (EX_TEMPFAIL); the DAGs retry it with back-off.
- :class:`StepFailed`: a step's process ended any other way (crashed, killed, out of memory).
  Orchestration raises it; the DAGs retry it (a killed training resumes from its last checkpoint).

Every message is complete on its own: the CLI prints it as one line, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

USER_EXIT = 2
SERVICE_EXIT = 75


class TrafficlipError(Exception):
    """Base of the project's errors: retried unless it is a :class:`UserError`."""


class UserError(TrafficlipError):
    """A mistake a retry cannot fix (bad data, parameters, request): exit 2, never retried."""


class ServiceError(TrafficlipError):
    """A service the step needs is down or failing: exit 75, retried."""


class StepFailed(TrafficlipError):
    """A step's process crashed or was killed (not a user error, not a service): retried."""


def exit_status(exc: TrafficlipError) -> int:
    """The CLI's exit status for an error: 2 for a user's mistake, 75 (retry) for anything else."""
    return USER_EXIT if isinstance(exc, UserError) else SERVICE_EXIT


class InputError(UserError):
    """Bad input: names the file, the line (when there is one), the field and what was expected."""

    def __init__(self, file: str | Path, problem: str, *, line: int | None = None,
                 field: str | None = None, expected: str | None = None):
        self.file = str(file)
        self.line = line
        self.field = field
        self.problem = problem
        self.expected = expected
        where = self.file if line is None else f"{self.file}:{line}"
        what = f"field '{field}': {problem}" if field else problem
        message = f"{where}: {what}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)

    def as_dict(self) -> dict:
        """The JSON form used in validation reports."""
        return {"file": self.file, "line": self.line, "field": self.field,
                "reason": self.problem, "expected": self.expected}


def is_mlflow_error(exc: BaseException) -> bool:
    """A failure the MLflow server or client reported (permissions, limits, lost connection, a missing
    model): not a bug here. Imports nothing: an error can only be MLflow's once MLflow is imported."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    return mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException)
