"""Step `validate`: check a dataset in the challenge's layout and write a validation report.

Every label line is either kept or quarantined with its file, line, field and reason; every image
referenced is decoded once (tasks/core/dataset.py), on ``workers`` processes (0: every core), and
dropped at once: only names, original sizes and problems are kept, so memory does not grow with the
images. ``on_error: fail`` stops (exit non-zero, report written); ``quarantine`` goes on without the
bad rows. Always: input rows = kept + quarantined.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.dataset import enforce, scan


def run(data: str | Path, on_error: str = "quarantine", report: str | Path | None = None, workers: int = 1) -> dict:
    """Validate ``data``; returns the report. Raises TrafficlipError when on_error=fail finds problems."""
    result = scan(data, workers=workers)
    enforce(result, on_error, report)
    return result.report
