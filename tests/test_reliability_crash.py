"""Reliability, item 2 and the disk-full case of item 4: crash safety of training and of every output.

- A real `python -m tasks train` killed with SIGKILL at a seeded random step (between checkpoints, and
  in the middle of writing one): the rerun resumes from the last complete checkpoint and ends with
  exactly the weights and loss curve of an uninterrupted run (CPU, fixed seed).
- No output is ever written in place: the code is scanned for writes outside tasks/atomic.py's
  temporaries, and a writer killed mid-write leaves the previous file or folder intact.
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
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks import atomic, models, train
from tasks.errors import TrafficlipError
from tests.conftest import ROOT, tiny_params, tool_env

EPOCHS, EVERY = 5, 3          # 4 steps per epoch on the tiny data: 20 steps, checkpoints at 3, 4, 6, 8, 9, 12, ...


def _params(**overrides) -> dict:
    return tiny_params(epochs=EPOCHS, checkpoint_every_steps=EVERY, **overrides)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / models.WEIGHTS_FILE)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def reference(tiny_prepared, tmp_path_factory) -> Path:
    """The uninterrupted run everything is compared with."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    train.run(_params(), tiny_prepared, folder / "models", folder / "reports")
    return folder


def _train_cli(folder: Path, data: Path) -> subprocess.Popen:
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(_params()))
    args = [sys.executable, "-m", "tasks", "train", "--params", str(params), "--data", str(data),
            "--manifest", str(data / "train" / "manifest.json"), "--out", str(folder / "models"),
            "--reports", str(folder / "reports")]
    return subprocess.Popen(args, cwd=ROOT, env=tool_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _pointer(checkpoints: Path) -> dict | None:
    try:
        return json.loads((checkpoints / "last.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):   # (written atomically: never half a file)
        return None


def _writing(checkpoints: Path) -> list[Path]:
    return list(checkpoints.glob(".step_*.tmp"))


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
        if process.poll() is None:
            process.kill()
            process.wait()
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
    _assert_same_weights(reference / "models" / "model", tmp_path / "models" / "model")
    assert (reference / "reports" / "train_steps.csv").read_text() == (tmp_path / "reports" / "train_steps.csv").read_text()
    leftovers = [p.name for p in (tmp_path / "models").rglob(".*")]
    assert leftovers == [], leftovers                              # the killed run's temporaries were removed


# --- nothing is written in place -------------------------------------------------------------------

# the context managers and calls whose result is a private temporary, not an output path
TEMPORARIES = {"atomic_path", "atomic_dir", "TemporaryDirectory", "NamedTemporaryFile", "mkdtemp", "BytesIO",
               "StringIO"}
# writes that are deliberately not atomic, each with its reason
ALLOWED = {
    ("registry.py", "_file_lock"): "opens the lock file to lock it; nothing is written to it",
    ("orchestration.py", "ingest"): "copies into a mkdtemp() staging folder, then renames it into place",
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
    """Every file tasks/ writes goes through tasks/atomic.py (a temporary beside the target, renamed
    over it), or is a private temporary; the scan also catches what it should."""
    found = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        if path.name != "atomic.py":
            found += in_place_writes(path.read_text(), path.name)
    assert found == [], "writes that are not atomic:\n" + "\n".join(found)
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


KILLED_WRITER = textwrap.dedent("""
    import pathlib, sys, time
    from tasks.atomic import atomic_dir, atomic_path
    target, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    with (atomic_dir(target) if sys.argv[3] == "dir" else atomic_path(target)) as tmp:
        path = tmp / "open_clip_model.safetensors" if sys.argv[3] == "dir" else tmp
        with open(path, "wb") as handle:
            handle.write(b"new, half written")
            handle.flush()
            ready.touch()
            time.sleep(120)
""")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_writer_killed_mid_write_leaves_the_previous_output_intact(tmp_path, kind):
    target = tmp_path / ("submission.json" if kind == "file" else "model")
    if kind == "file":
        target.write_text("old, complete")
    else:
        target.mkdir()
        (target / "open_clip_model.safetensors").write_text("old, complete")
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(ready), kind], cwd=ROOT,
                               env=tool_env())
    try:
        while not ready.exists():
            assert process.poll() is None, "the writer died before writing"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    content = target / "open_clip_model.safetensors" if kind == "dir" else target
    assert content.read_text() == "old, complete"
    leftovers = atomic.remove_stale_temporaries(tmp_path, target.name)
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{target.name}.") and leftovers[0].endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, "ready"])


def test_a_folder_is_swapped_whole_while_it_is_being_read(tmp_path):
    """A reader looking up a checkpoint folder while it is replaced 200 times always finds it (Linux: one
    renameat2(RENAME_EXCHANGE), not two renames with a moment between them when the name is free).
    (A reader that resolved the old folder just before a swap can still see it being removed.)"""
    target = tmp_path / "model"
    with atomic.atomic_dir(target) as tmp:
        for name in ("config.json", "weights.safetensors"):
            (tmp / name).write_text("0")
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(target.is_dir())
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 201):
            with atomic.atomic_dir(target) as tmp:
                for name in ("config.json", "weights.safetensors"):
                    (tmp / name).write_text(str(version))
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 200 and set(seen) == {True}
    assert {p.name: p.read_text() for p in target.iterdir()} == {"config.json": "200", "weights.safetensors": "200"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_outputs_get_the_permissions_of_a_plain_open(tmp_path):
    """Not the 0600 / 0700 of a temporary: a container or the Airflow worker running as another user
    can read what a step wrote."""
    mask = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "report.json", "{}")
        with atomic.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights.safetensors").write_bytes(b"x")
    finally:
        os.umask(mask)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


# --- disk full while writing a checkpoint ---------------------------------------------------------

def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
    except OSError:
        return False
    return result.returncode == 0


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
        _assert_same_weights(reference / "models" / "model", out / "model")
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=False)
