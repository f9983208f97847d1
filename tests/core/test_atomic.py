"""Atomic outputs (tasks/core/atomic.py): a writer killed mid-write leaves the previous file or folder
intact, a folder is swapped whole while it is read, and outputs get a plain open's permissions.
(Reliability item 2, docs/reliability.md; the scan that every output goes through here, and training
killed mid-run: tests/system/test_reliability_crash.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tasks.core import atomic
from tests.support import ROOT, procs
from tests.support.workspace import tool_env

KILLED_WRITER = textwrap.dedent("""
    import pathlib, sys, time
    from tasks.core.atomic import atomic_dir, atomic_path
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
        procs.kill(process)
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


def test_write_json_streamed_writes_what_write_json_writes(tmp_path):
    """The manifests are written by write_json_streamed (json's indented encoder is pure Python, a third
    of an incremental prepare, and holds every token); its bytes are write_json's for any JSON value,
    escapes and nesting included, lists and generated lists alike."""
    import random

    from tasks.core.atomic import StreamedList, write_json, write_json_streamed

    rng = random.Random(0)
    class Name(str):
        pass

    class Count(int):
        pass

    leaves = ["a", 'q"\\\n\t\u2028é', "", None, True, False, 0, -7, 10 ** 20, 1.5, 1e-7, float("nan"),
              float("-inf"), [], {}, Name("sub"), Count(3)]

    def value(depth=0):
        if depth > 3 or rng.random() < 0.4:
            return rng.choice(leaves)
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}é": value(depth + 1) for i in range(rng.randint(0, 3))}

    for case in range(500):
        items = [value() for _ in range(rng.randint(0, 4))]
        plain = {"split": "train", "images": items, "other": value()}
        write_json(tmp_path / "plain.json", plain)
        write_json_streamed(tmp_path / "streamed.json", {**plain, "images": StreamedList(lambda: iter(items), len(items))})
        assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "plain.json").read_bytes(), case
        write_json_streamed(tmp_path / "listed.json", plain)
        assert (tmp_path / "listed.json").read_bytes() == (tmp_path / "plain.json").read_bytes(), case


def test_write_json_streamed_long_lists_of_flat_dicts(tmp_path):
    """A manifest's lists are thousands of flat dicts, encoded many at a time (more than one batch
    here), among other items: the bytes stay write_json's, whatever the strings hold (a brace, a
    comma, a newline: the text the batches are split at), and with any item between the dicts."""
    import random

    from tasks.core.atomic import StreamedList, write_json, write_json_streamed

    rng = random.Random(1)
    tricky = ["}, {", '},\n      {', "}\n", "{", "é\u2028", '"', "\\", ""]
    others = [None, 3, "text", [], {}, [1, 2], {"bits": [0, 1], "key": "p"}, {"a": {"b": 1}}]

    def entry(i):
        if rng.random() < 0.05:
            return rng.choice(others)
        item = {"image": f"{i:06d}.jpg", "text": rng.choice(tricky) + str(i), "n": i, "w": 1.5, "ok": i % 2 == 0,
                "none": None}
        if rng.random() < 0.3:       # a pedestrian: a list among the scalars
            item = {"image": item["image"], "bits": [rng.randint(0, 1) for _ in range(5)], "width": i, "h": None}
        return item

    for count in (0, 1, 2, 1023, 1024, 1025, 2600):
        items = [entry(i) for i in range(count)]
        write_json(tmp_path / "plain.json", {"images": items, "n": count})
        write_json_streamed(tmp_path / "streamed.json", {"images": StreamedList(lambda: iter(items), count), "n": count})
        assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "plain.json").read_bytes(), count
