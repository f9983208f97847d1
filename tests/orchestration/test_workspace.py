"""The workspace the DAGs work in (tasks/orchestration/workspace.py): a run's form values written into
params.yaml and put back when it ends. Its command runner, data checkout and ingest: tests/dags/ and
tests/system/test_reliability_deps.py."""

from __future__ import annotations

import re

import pytest
import yaml

from tasks.orchestration import workspace as orch
from tests.support import ROOT


def test_configure_keeps_comments_validates_and_leaves_unchanged_files_alone(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    before = path.stat().st_mtime_ns
    assert orch.configure(tmp_path, {"train.epochs": yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["epochs"]})[
        "changed"] == {}
    assert path.stat().st_mtime_ns == before
    result = orch.configure(tmp_path, {"train.epochs": 3, "train.lr": 0.0005})
    assert set(result["changed"]) == {"train.epochs", "train.lr"}
    text = path.read_text()
    assert re.search(r"^  epochs: 3 +# passes over the training pairs", text, re.M)
    assert yaml.safe_load(text)["train"]["lr"] == 0.0005
    with pytest.raises(Exception, match="train.epochs"):
        orch.configure(tmp_path, {"train.epochs": "many"})
    # a new run first puts back what the previous run changed (its teardown never ran here)
    assert path.read_text() == (ROOT / "params.yaml").read_text()


def test_a_runs_values_are_put_back_when_it_ends(tmp_path):
    """configure keeps the file it found; restore_params puts it back byte for byte, once."""
    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_bytes()
    path.write_bytes(original)
    assert orch.restore_params(tmp_path)["restored"] is False
    orch.configure(tmp_path, {"train.epochs": 3})
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3
    assert orch.restore_params(tmp_path)["restored"] is True
    assert path.read_bytes() == original
    assert orch.restore_params(tmp_path)["restored"] is False and path.read_bytes() == original


def test_only_the_form_fields_a_user_changed_are_applied():
    defaults = {"epochs": 8, "learning_rate": 0.001, "pretrained": ""}
    form = {"epochs": 8, "learning_rate": 0.002, "pretrained": None, "runner": "local", "data_revision": ""}
    assert orch.overrides_from_form(form, defaults) == {"train.lr": 0.002}


def test_a_commands_output_reaches_the_task_log_as_it_comes(tmp_path, capfd):
    """orchestration.run echoes stdout and stderr line by line while the command runs (a step's progress
    shows in the task log), both to stdout, which Airflow logs at INFO (its stderr would read as errors)."""
    import sys
    script = tmp_path / "talk.py"
    marker = tmp_path / "first-line-seen"
    script.write_text(
        "import sys, time, pathlib\n"
        "print('progress: 1/2', file=sys.stderr, flush=True)\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "for _ in range(200):\n"       # wait until the parent has echoed the first line: it streams
        "    if marker.exists(): break\n"
        "    time.sleep(0.05)\n"
        "print('{\"done\": true}', flush=True)\n")
    import threading
    seen = threading.Event()

    def watch():
        while not seen.is_set():
            if "progress: 1/2" in capfd.readouterr().out:
                marker.write_text("")
                seen.set()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result = orch.run([sys.executable, str(script)], tmp_path, "a step")
    seen.set()
    assert marker.exists(), "the first line was not in the log before the command ended"
    assert result.stdout == '{"done": true}\n' and result.stderr == "progress: 1/2\n"
