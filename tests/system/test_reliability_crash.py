"""Reliability, item 2 and the disk-full case of item 4: crash safety of training and of every output.

- A real `python -m tasks train` killed with SIGKILL at a seeded random step (between checkpoints, and
  in the middle of writing one): the rerun resumes from the last complete checkpoint and ends with
  exactly the weights and loss curve of an uninterrupted run (CPU, fixed seed).
- No output is ever written in place: the code is scanned for writes outside tasks/core/atomic.py's
  temporaries (a writer killed mid-write leaves the previous file or folder intact:
  tests/core/test_atomic.py).
- A full disk while writing a checkpoint (a small tmpfs when this process may mount one, else an
  ENOSPC injected into the write): a one-line error, the previous checkpoint intact and resumable.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tasks.core import models
from tasks.core.errors import TrafficlipError
from tasks.steps import train
from tests.support import ROOT, cli, procs
from tests.support.params import tiny_params
from tests.support.weights import assert_same_weights
from tests.support.workspace import tool_env

EPOCHS, EVERY = 5, 3          # 4 steps per epoch on the tiny data: 20 steps, checkpoints at 3, 4, 6, 8, 9, 12, ...


def _params(**overrides) -> dict:
    return tiny_params(epochs=EPOCHS, checkpoint_every_steps=EVERY, **overrides)


@pytest.fixture(scope="module")
def reference(tiny_prepared, tmp_path_factory) -> Path:
    """The uninterrupted run everything is compared with."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    train.run(_params(), tiny_prepared, folder / "models", folder / "reports")
    return folder


def _train_cli(folder: Path, data: Path) -> subprocess.Popen:
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(_params()))
    args = cli.argv("train", "--params", str(params), "--data", str(data), "--manifest",
                    str(data / "train" / "manifest.json"), "--out", str(folder / "models"), "--reports",
                    str(folder / "reports"))
    return subprocess.Popen(args, cwd=ROOT, env=tool_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _pointer(checkpoints: Path) -> dict | None:
    try:
        return json.loads((checkpoints / "last.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):   # (written atomically: never half a file)
        return None


def _writing(checkpoints: Path) -> list[Path]:
    return list(checkpoints.glob(".step_*.tmp"))


@pytest.mark.e2e    # the training CLI killed, then run to its end
@pytest.mark.parametrize("moment", ["between checkpoints", "while writing a checkpoint"])
def test_sigkill_at_a_random_step_then_rerun_resumes_to_identical_weights(tiny_prepared, reference, tmp_path, moment):
    total = EPOCHS * 4
    kill_after = random.Random(f"trafficlip-{moment}").randint(2, total - 8)   # seeded: the same step every run
    checkpoints = tmp_path / "models" / "checkpoints"
    process = _train_cli(tmp_path, tiny_prepared)
    writing = moment == "while writing a checkpoint"

    def at_the_moment() -> bool:
        pointer = _pointer(checkpoints)
        return bool(pointer) and pointer["step"] >= kill_after and bool(_writing(checkpoints)) == writing
    try:
        while process.poll() is None:
            if at_the_moment():      # confirmed with the process frozen (SIGSTOP), so the kill lands there
                process.send_signal(signal.SIGSTOP)
                os.waitpid(process.pid, os.WUNTRACED)
                if at_the_moment():
                    process.send_signal(signal.SIGKILL)
                    break
                process.send_signal(signal.SIGCONT)
            time.sleep(0.002)
        process.wait()
    finally:
        procs.kill(process)
    assert process.returncode == -signal.SIGKILL, f"training ended before the kill:\n{process.stderr.read()[-2000:]}"
    process.stdout.close()
    process.stderr.close()
    assert not (tmp_path / "models" / "model").exists()          # it had not finished
    last = _pointer(checkpoints)
    assert last["step"] >= kill_after and last["step"] < total
    assert bool(_writing(checkpoints)) == writing                 # a half-written folder, or none
    models.load_checkpoint(checkpoints / last["folder"])           # the pointed-to checkpoint is complete

    rerun = _train_cli(tmp_path, tiny_prepared)
    out, err = rerun.communicate()
    assert rerun.returncode == 0, err[-3000:]
    assert f"resuming from {checkpoints / last['folder']} (step {last['step']} of {total})" in err
    assert json.loads(out)["steps"] == total
    assert_same_weights(reference / "models" / "model", tmp_path / "models" / "model")
    assert (reference / "reports" / "train_steps.csv").read_text() == (tmp_path / "reports" / "train_steps.csv").read_text()
    leftovers = [p.name for p in (tmp_path / "models").rglob(".*")]
    assert leftovers == [], leftovers                              # the killed run's temporaries were removed


# --- nothing is written in place -------------------------------------------------------------------

# the context managers and calls whose result is a private temporary, not an output path
TEMPORARIES = {"atomic_path", "atomic_dir", "TemporaryDirectory", "NamedTemporaryFile", "mkdtemp", "BytesIO",
               "StringIO"}
# writes that are deliberately not atomic, each with its reason
ALLOWED = {
    ("mlops/registry.py", "_file_lock"): "opens the lock file to lock it; nothing is written to it",
    ("orchestration/workspace.py", "ingest"): "copies into a mkdtemp() staging folder, then renames it into place",
    ("orchestration/live.py", "main"): "Airflow's log, appended line by line as the run goes: a log, not an output "
                                       "another step reads (a crash leaves the lines written so far, as a log should)",
    ("orchestration/live.py", "_open"): "a task's log for the Airflow UI, written line by line as the task runs "
                                        "(a log, like Airflow's own task logs)",
}


def _root_name(node: ast.AST) -> str | None:
    """The variable an expression such as ``tmp / "x"``, ``str(tmp)`` or ``Path(tmp)`` is built from."""
    while True:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.BinOp):
            node = node.left
        elif isinstance(node, ast.Call) and node.args:
            node = node.args[0]
        elif isinstance(node, ast.Attribute):
            node = node.value
        else:
            return None


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _write_target(call: ast.Call) -> ast.AST | None:
    """The path a call writes to (None: not a write)."""
    name, args, func = _call_name(call), call.args, call.func
    owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
    if name == "open":
        mode = args[1] if len(args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        writes = isinstance(mode, ast.Constant) and bool(set(str(mode.value)) & set("wax+"))
        return args[0] if writes else None
    if isinstance(func, ast.Attribute) and name in ("write_text", "write_bytes", "symlink_to", "hardlink_to"):
        return func.value                                       # path.write_text(...)
    if owner == "os" and name in ("replace", "rename", "link", "symlink") and len(args) > 1:
        return args[1]
    if owner == "shutil" and name in ("copy", "copy2", "copyfile", "copytree", "move") and len(args) > 1:
        return args[1]
    if name == "save_file" or (owner == "torch" and name == "save"):
        return args[1] if len(args) > 1 else None               # save_file(tensors, path), torch.save(obj, path)
    if isinstance(func, ast.Attribute) and name == "rename" and args:
        return args[0]                                          # path.rename(target)
    if isinstance(func, ast.Attribute) and name in ("save", "savefig", "to_csv", "to_parquet") and args \
            and owner not in ("torch", "checkpoints"):        # (train.Checkpoints.save: models.save_checkpoint)
        return args[0]                                          # image.save(path), figure.savefig(path)
    return None


def in_place_writes(source: str, filename: str) -> list[str]:
    """Writes in ``source`` whose target is not a temporary (see TEMPORARIES): ``file:line function: call``."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        temporary = {item.optional_vars.id for node in ast.walk(function) if isinstance(node, ast.With)
                     for item in node.items if isinstance(item.optional_vars, ast.Name)
                     and _call_name(item.context_expr) in TEMPORARIES}
        assignments = [node for node in ast.walk(function) if isinstance(node, ast.Assign)
                       and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)]
        for _ in range(3):  # names derived from temporaries: code = Path(tmp) / "tasks"
            temporary |= {node.targets[0].id for node in assignments
                          if _call_name(node.value) in TEMPORARIES or _root_name(node.value) in temporary}
        for node in ast.walk(function):
            target = _write_target(node) if isinstance(node, ast.Call) else None
            if target is None or _root_name(target) in temporary or (filename, function.name) in ALLOWED:
                continue
            found.append(f"{filename}:{node.lineno} {function.name}: {ast.unparse(node)[:100]}")
    return found


def test_no_output_is_written_in_place():
    """Every file tasks/ writes goes through tasks/core/atomic.py (a temporary beside the target, renamed
    over it), or is a private temporary; the scan also catches what it should."""
    found, scanned = [], []
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        name = path.relative_to(ROOT / "tasks").as_posix()
        if name != "core/atomic.py":
            scanned.append(name)
            found += in_place_writes(path.read_text(), name)
    assert found == [], "writes that are not atomic:\n" + "\n".join(found)
    assert {"steps/train.py", "core/models.py", "mlops/registry.py", "orchestration/workspace.py"} <= set(scanned)
    probe = textwrap.dedent("""
        def bad(out, data, clip):
            (out / "metrics.json").write_text("{}")
            with open(out / "log.txt", "w") as f:
                f.write("x")
            save_file(data, str(out / "w.safetensors"))
            shutil.copy(out / "a", out / "b")
        def good(out, data):
            with atomic_path(out / "w.safetensors") as tmp:
                save_file(data, str(tmp))
            with tempfile.TemporaryDirectory() as scratch:
                (Path(scratch) / "x").write_text("y")
            text = "a".replace("a", "b")
            with open(out / "in.txt") as f:
                return f.read()
    """)
    assert [line.split(" ", 1)[1].split(":")[0] for line in in_place_writes(probe, "probe.py")] == ["bad"] * 4


# --- disk full while writing a checkpoint ---------------------------------------------------------

def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
    except OSError:
        return False
    return result.returncode == 0


@pytest.mark.e2e    # three trainings to their end (the reference, the full disk, the resumed one)
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tiny_prepared, reference, tmp_path, monkeypatch,
                                                                      record_property):
    """The models folder is a 160 MB tmpfs where this process may mount one (root), so the second
    checkpoint (87 MB each, after the 29 MB initial model) really runs out of space; elsewhere the
    same write fails with an injected ENOSPC. `record_property("disk_full", ...)` says which."""
    out = tmp_path / "models"
    mounted = _mount_tmpfs(out, "160m")
    saves = []
    if not mounted:
        import safetensors.torch
        real_save_file = safetensors.torch.save_file

        def save_file(tensors, filename, *args, **kwargs):
            saves.append(filename)
            if "checkpoints" in str(filename) and len([s for s in saves if "checkpoints" in str(s)]) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
            return real_save_file(tensors, filename, *args, **kwargs)
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    record_property("disk_full", "tmpfs of 160 MB" if mounted else "injected ENOSPC (no tmpfs mount here)")
    try:
        with pytest.raises(TrafficlipError) as info:
            train.run(_params(), tiny_prepared, out, tmp_path / "reports")
        message = str(info.value)
        first = out / "checkpoints" / "step_0000003"
        assert "\n" not in message and "checkpoint at step 4 not saved" in message, message
        assert "No space left on device" in message and "ENOSPC" in message
        assert f"the last complete checkpoint, {first} (step 3), is intact" in message
        assert json.loads((out / "checkpoints" / "last.json").read_text())["folder"] == first.name
        assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] == []  # no half folder
        models.load_checkpoint(first)                                   # complete and loadable
        load_file(first / "optimizer.safetensors")
        if mounted:   # free space: the same folder, larger
            subprocess.run(["mount", "-o", "remount,size=600m", str(out)], check=True)
        else:
            monkeypatch.undo()
        summary = train.run(_params(), tiny_prepared, out, tmp_path / "reports")
        assert summary["steps"] == EPOCHS * 4
        assert_same_weights(reference / "models" / "model", out / "model")
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=False)
