"""The project's commands in a subprocess, and a workspace as a deployment has one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support import BIN, ROOT

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
WORKSPACE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")
# what the tiny workspace changes in params.yaml (line edits, so its comments stay as a user has them)
TINY_WORKSPACE_EDITS = {"warmup_steps: 50 ": "warmup_steps: 2  ", "threads: 0 ": "threads: 1 ",
                        "bootstrap_samples: 2000": "bootstrap_samples: 200 ",
                        "gallery_queries: 6 ": "gallery_queries: 2 ", "epochs: 8 ": "epochs: 2 ",
                        "batch_size: 64 ": "batch_size: 16 ", "floor: 0.05 ": "floor: 0.0  "}


def tool_env(**extra: str) -> dict:
    """The environment for the project's commands in a subprocess: this venv's bin first."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **GIT_ENV, **extra}


def project_env(**extra: str) -> dict:
    """tool_env with this checkout's tasks/ importable from any folder (PYTHONPATH)."""
    return tool_env(PYTHONPATH=str(ROOT), **extra)


def embedded_env(**extra: str) -> dict:
    """tool_env without the session's MLflow store: a workspace's own embedded one (sqlite:///mlruns.db)."""
    return {k: v for k, v in tool_env(**extra).items() if k != "MLFLOW_TRACKING_URI"}


def run(args: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (text output captured); with ``check``, fail with the end of its output."""
    result = subprocess.run(args, cwd=cwd, env=tool_env() if env is None else env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def copy_project(target: Path) -> Path:
    """The project's files a workspace holds into ``target``: dvc.yaml, params.yaml with the tiny
    training values, tasks/ and .dvc/ (no cache, no local config)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        shutil.copy(ROOT / name, target / name)
    text = (target / "params.yaml").read_text()
    for old, new in TINY_WORKSPACE_EDITS.items():
        assert old in text, f"params.yaml no longer has {old!r}: update TINY_WORKSPACE_EDITS"
        text = text.replace(old, new)
    (target / "params.yaml").write_text(text)
    shutil.copytree(ROOT / "tasks", target / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / ".dvc", target / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    return target


def make_workspace(target: Path, raw: Path) -> Path:
    """A workspace as a deployment has one: a git + DVC checkout of the project (its dvc.yaml,
    params.yaml with tiny training values, tasks/) with ``raw`` tracked as data/raw, committed."""
    copy_project(target)
    shutil.copytree(raw, target / "data" / "raw")
    for cmd in (["git", "init", "-q"], ["dvc", "add", "-q", "data/raw"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "workspace"]):
        run(cmd, target)
    return target
