"""The `trafficlip` CLI (`python -m tasks`) in a subprocess, as a user or a DVC stage runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.workspace import project_env


def argv(*args: str) -> list[str]:
    """The command line of `python -m tasks ARGS` with this interpreter (for Popen)."""
    return [sys.executable, "-m", "tasks", *args]


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m tasks ARGS` to its end, output captured as text, in ``env`` (default: project_env())."""
    return subprocess.run(argv(*args), cwd=cwd, capture_output=True, text=True,
                          env=project_env() if env is None else env)
