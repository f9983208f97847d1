"""The README's runnable shell blocks (marked `<!-- runnable -->`) run, in order, as a new user would
run them after `make run`: in a workspace (a git + DVC checkout with the tiny demo data) after
`dvc repro`, with the project's .venv, the default embedded MLflow store (mlruns.db in the workspace)
and the default embedding cache moved into the test's folder."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import ROOT
from tests.support.workspace import embedded_env, make_workspace, run

MARKER = "<!-- runnable -->"


def runnable_blocks(text: str) -> list[str]:
    return re.findall(r"^" + re.escape(MARKER) + r"\n```bash\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_marks_its_runnable_blocks():
    blocks = runnable_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    assert any("dvc exp run" in b for b in blocks) and any("trafficlip search" in b for b in blocks)


@pytest.fixture(scope="module")
def user_workspace(tmp_path_factory, tiny_raw):
    root = make_workspace(tmp_path_factory.mktemp("readme") / "ws", tiny_raw)
    (root / ".venv").symlink_to(ROOT / ".venv")
    env = embedded_env(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(root.parent / "cache"))
    for args in (["dvc", "repro"], ["git", "add", "-A"], ["git", "commit", "-qm", "after make run"]):
        run(args, root, env=env)
    return root, env


@pytest.mark.e2e
@pytest.mark.parametrize("number", range(len(runnable_blocks((ROOT / "README.md").read_text()))))
def test_readme_block_runs(user_workspace, number):
    root, env = user_workspace
    block = runnable_blocks((ROOT / "README.md").read_text())[number]
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"README block {number + 1}:\n{block}\n--- stdout\n{result.stdout[-3000:]}" \
                                   f"\n--- stderr\n{result.stderr[-3000:]}"
