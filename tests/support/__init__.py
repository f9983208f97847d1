"""Helpers shared by the tests, one copy each. Fixtures stay in tests/conftest.py, which imports these.

- ``ROOT`` (the checkout), ``BIN`` (this venv's bin folder), ``ARTEFACTS`` (test-artifacts/)
- workspace.py: the environment of the project's commands (``tool_env``), a checked ``run``, a git + DVC
  workspace of the project (``make_workspace``)
- params.py: tiny training parameters (``tiny_params``, ``tracked_params``), unique registered-model names
- cli.py: the CLI in a subprocess (``run``, ``argv``)
- net.py: free ports, HTTP requests, waiting for a server to answer
- procs.py: long-running processes in sessions of their own: start, wait for, stop (process groups)
- airflow.py: an Airflow environment, `trafficlip airflow-setup`, the DagBag, the REST API with a JWT
- services.py: the machine's PostgreSQL and Redis (fresh databases, dropped after)
- engine.py: docker/engine.sh's container engine and images (tests/containers), a workspace owned as a deployment owns it
- browser.py: Debian's Chromium and Playwright
- weights.py: comparing trained weights
- evaluation.py: hand-made metrics and training steps for the report tests
- badinput.py: the bad-input corpus of the reliability tests
- imports.py: the project's import graph, read from the source
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
ARTEFACTS = ROOT / "test-artifacts"
