"""Progress and logs: a bar on a terminal, plain periodic lines otherwise (Airflow's task logs), each
line carrying the step and the run id."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from tests.support.workspace import project_env

SCRIPT = """
from tasks.core import log
logger = log.setup("train")
for _ in log.progress(range(5), 5, "train", logger, every_seconds=0):
    pass
"""


def test_without_a_terminal_progress_is_periodic_lines_with_step_and_run_id():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=project_env(AIRFLOW_CTX_DAG_RUN_ID="manual__2026-11-26"))
    lines = [line for line in result.stderr.splitlines() if "train:" in line]
    assert len(lines) == 5, result.stderr
    assert all("[train run=manual__2026-11-26]" in line for line in lines)
    assert lines[-1].split("] ", 1)[1].startswith("train: 5/5 (")
    assert "\r" not in result.stderr            # no bar drawn into a log file


def test_on_a_terminal_progress_is_a_bar():
    primary, secondary = pty.openpty()
    # (the environment is set explicitly: dag.test() runs earlier in the session leave AIRFLOW_CTX_* behind)
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a 100-column terminal
    try:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=secondary, env=project_env())
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(primary)
    text = output.decode(errors="replace")
    assert "train: 100%" in text and "5/5" in text and "\r" in text, text     # tqdm's bar, redrawn in place


def test_long_embedding_passes_report_progress(tmp_path):
    script = """
import torch
from tasks.core import log
from tasks.core import models
log.setup("evaluate")
clip = models.build("TrafficCLIP-Tiny", "", seed=0)
images = torch.zeros((16, clip.image_size, clip.image_size, 3), dtype=torch.uint8)
models.encode_images(clip, images, batch_size=2)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=project_env(HF_HUB_OFFLINE="1", AIRFLOW_CTX_DAG_RUN_ID="run-embed"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[evaluate run=run-embed] embed images: 8/8" in result.stderr


def test_a_progress_line_says_the_rate_the_status_and_the_time_left():
    script = """
from tasks.core import log
logger = log.setup("train")
state = {"epoch": 1}
for step in log.progress(range(4), 4, "train", logger, every_seconds=0, samples_per_item=64,
                         status=lambda: f"epoch {state['epoch']}/2, loss 1.2345"):
    state["epoch"] = 1 + step // 2
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=project_env())
    lines = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if "train:" in line]
    assert len(lines) == 4, result.stderr
    first, last = lines[0], lines[-1]
    assert first.startswith("train: 1/4 (") and " samples/s), epoch 1/2, loss 1.2345, " in first
    assert first.endswith(" s left")
    assert last.startswith("train: 4/4 (") and last.endswith("epoch 2/2, loss 1.2345, done")


def test_durations_read_as_people_say_them():
    from tasks.core.log import duration
    assert [duration(s) for s in (0.4, 45, 200, 7500)] == ["0 s", "45 s", "3 min 20 s", "2 h 05 min"]
