"""Errors a user can act on. The CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class TrafficlipError(Exception):
    """An error whose message is complete on its own: the CLI prints it and exits 2."""


class ServiceError(TrafficlipError):
    """A service the step needs (the MLflow server, the DVC remote) is down or failing: worth a retry.
    The CLI exits 75 (EX_TEMPFAIL) so that an orchestrator retries it, unlike a user error (2)."""


SERVICE_EXIT = 75


class InputError(TrafficlipError):
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
