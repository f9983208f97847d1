"""The prepare step (tasks/steps/prepare.py): on a damaged dataset only the good rows reach the image
cache, and fail mode stops before writing one (or leaves the previous one as it was); the cache is the
same bytes for any number of decoding processes, and the same as the in-memory prepare wrote before
it streamed; a prepare killed mid-way leaves no half-written shard, and the next run completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from tasks.core import images, labels, models
from tasks.core.atomic import StreamedList, write_json
from tasks.core.errors import TrafficlipError
from tasks.steps import prepare
from tests.support import ROOT
from tests.support.params import tiny_params


def test_prepare_quarantines_and_caches_only_good_rows(damaged_raw, tmp_path):
    raw_copy, _ = damaged_raw
    result = prepare.run(tiny_params(), raw_copy, tmp_path / "prepared")
    assert result["problems"] == 3
    manifest = json.loads((tmp_path / "prepared" / "train" / "manifest.json").read_text())
    index = json.loads((tmp_path / "prepared" / "train" / "images.json").read_text())
    assert index["count"] == len(manifest["images"]) and all(p["image"] < index["count"] for p in manifest["pairs"])


def test_prepare_with_fail_stops_before_writing_a_cache(damaged_raw, tmp_path):
    raw_copy, _ = damaged_raw
    params = tiny_params()
    params["data"]["on_error"] = "fail"
    with pytest.raises(TrafficlipError):
        prepare.run(params, raw_copy, tmp_path / "prepared")
    assert (tmp_path / "prepared" / "validation_report.json").is_file()
    assert not (tmp_path / "prepared" / "train").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _params(shard_size: int, workers: int, on_error: str = "quarantine") -> dict:
    params = tiny_params()
    params["prepare"].update(shard_size=shard_size, workers=workers)
    params["data"]["on_error"] = on_error
    return params


def test_any_number_of_workers_writes_the_same_bytes(damaged_raw, tmp_path):
    """The report, manifests, vocabulary, index and every shard: byte-for-byte the same with 1 process
    and with a pool of 2, on a dataset with problems (quarantined) and shards that split the splits."""
    raw_copy, _ = damaged_raw
    outputs = {}
    for workers in (1, 2):
        prepare.run(_params(5, workers), raw_copy, tmp_path / f"w{workers}")
        outputs[workers] = _files(tmp_path / f"w{workers}")
    assert outputs[1].keys() == outputs[2].keys()
    assert {"train/images-00014.safetensors", "validation_report.json", "test/manifest.json"} <= outputs[1].keys()
    for name, data in outputs[1].items():
        assert outputs[2][name] == data, name
    assert not [name for name in outputs[1] if "/." in f"/{name}"]            # no temporaries left


def _serial_in_memory_cache(raw: Path, split: str, size: int, shard_size: int, folder: Path) -> None:
    """The cache as prepare wrote it before it streamed (commit b01833e): every image of the split
    decoded in order in this process and kept in a list, then each shard stacked and written by
    safetensors' save_file, and the index."""
    if split == "test":
        paths = sorted(p for p in (raw / "test" / "test_images").iterdir() if p.is_file())
    else:
        paths = [raw / p for p in dict.fromkeys(r.image_path for r in labels.read_split(raw, split).records)]
    arrays = [images.prepare_image(images.load_image(path), size) for path in paths]
    folder.mkdir(parents=True)
    shards = []
    for start in range(0, max(len(arrays), 1), shard_size):
        chunk = arrays[start:start + shard_size]
        name = f"images-{start // shard_size:05d}.safetensors"
        save_file({"images": torch.from_numpy(np.stack(chunk)).contiguous()}, str(folder / name))
        shards.append(name)
    write_json(folder / "images.json", {"image_size": size, "count": len(arrays), "shard_size": shard_size,
                                        "shards": shards})


def test_the_streamed_cache_is_what_the_in_memory_prepare_wrote(tiny_raw, tmp_path):
    prepare.run(_params(7, 2), tiny_raw, tmp_path / "prepared")
    size = json.loads((tmp_path / "prepared" / "train" / "images.json").read_text())["image_size"]
    for split in ("train", "val", "test"):
        _serial_in_memory_cache(tiny_raw, split, size, 7, tmp_path / "reference" / split)
        reference, streamed = _files(tmp_path / "reference" / split), _files(tmp_path / "prepared" / split)
        assert len(reference) > 3 and reference.keys() <= streamed.keys()
        for name, data in reference.items():
            assert streamed[name] == data, f"{split}/{name}"


def test_a_failing_check_leaves_the_previous_cache_as_it_was(damaged_raw, tiny_raw, tmp_path):
    out = tmp_path / "prepared"
    prepare.run(_params(7, 2), tiny_raw, out)
    before = {name: data for name, data in _files(out).items() if name != "validation_report.json"}
    with pytest.raises(TrafficlipError, match="validation failed with 3 problem"):
        prepare.run(_params(7, 2, on_error="fail"), damaged_raw[0], out)
    after = _files(out)
    assert json.loads(after.pop("validation_report.json"))["problems"] == 3
    assert after == before


@pytest.mark.parametrize("where", ["finishing train", "scanning val"])
def test_an_error_while_a_split_is_finished_or_the_next_decoded_leaves_the_previous_cache(tiny_raw, tmp_path,
                                                                                           monkeypatch, where):
    """A scanned split is finished (last shard, reuse keys, manifest) on a thread while the next one
    decodes: an error on either side reaches the caller, and the previous cache stays as it was, with
    no temporaries left behind."""
    out = tmp_path / "prepared"
    prepare.run(_params(7, 2), tiny_raw, out)
    before = _files(out)
    if where == "finishing train":       # the disk fills while the training manifest is written
        real = prepare.write_json_streamed

        def full_disk():
            raise OSError(28, "No space left on device")
            yield

        def write(target, obj):
            if Path(target).parent.name.startswith(".train."):
                obj = {**obj, "images": StreamedList(full_disk, 1)}
            return real(target, obj)
        monkeypatch.setattr(prepare, "write_json_streamed", write)
        expected = r"\.train\.[^/]*\.tmp/manifest\.json: cannot write it: No space left on device"
    else:
        real_add = prepare._Writers.add

        def add(self, split, array, digest):
            if split == "val":
                raise RuntimeError("the decoder broke")
            return real_add(self, split, array, digest)
        monkeypatch.setattr(prepare._Writers, "add", add)
        expected = "the decoder broke"
    with pytest.raises((TrafficlipError, RuntimeError), match=expected):
        prepare.run(_params(7, 2), tiny_raw, out)
    assert _files(out) == before                              # hidden temporaries (.NAME.*.tmp) included


def test_a_split_that_failed_to_finish_stops_the_scan_of_the_next(tiny_raw, tmp_path, monkeypatch):
    """The training split's finish fails while the validation split decodes: the scan stops within
    ``CHECK_EVERY`` images (here 1) instead of decoding the rest of the dataset first."""
    out = tmp_path / "prepared"

    def broken(target, split_scan, decoder):
        if Path(target).name.startswith(".train."):
            raise RuntimeError("the training split's reuse keys broke")
    monkeypatch.setattr(prepare, "write_sources", broken)
    monkeypatch.setattr(prepare._Writers, "CHECK_EVERY", 1)
    real_add, added = prepare._Writers.add, []

    def add(self, split, array, digest):
        if split != "train":
            self.finished[0].exception()     # the training split's finish has failed before this image
        added.append(split)
        return real_add(self, split, array, digest)
    monkeypatch.setattr(prepare._Writers, "add", add)
    with pytest.raises(RuntimeError, match="reuse keys broke"):
        prepare.run(_params(7, 2), tiny_raw, out)
    assert added.count("val") == 1 and "test" not in added
    assert not [p for p in out.iterdir() if p.name.startswith(".")]         # no temporaries left


def _slow_to_decode(raw: Path) -> None:
    """Make the training images large (each takes tens of milliseconds to decode and shrink)."""
    for path in sorted((raw / "train" / "train_images").iterdir()):
        with Image.open(path) as image:
            image.convert("RGB").resize((1000, 1000)).save(path, "JPEG", quality=90)


def test_a_prepare_killed_mid_way_leaves_no_half_shard_and_the_next_run_completes(raw_copy, tmp_path):
    _slow_to_decode(raw_copy)
    out = tmp_path / "prepared"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params(1, 2)))
    process = subprocess.Popen([sys.executable, "-m", "tasks", "prepare", "--params", str(tmp_path / "params.yaml"),
                                "--data", str(raw_copy), "--out", str(out)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not list(out.glob(".train.*.tmp/images-00002.safetensors")):   # three shards written
            assert process.poll() is None, f"prepare ended first: {process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.005)
        workers = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert len(workers) >= 2
    # the pool's processes notice that their parent is gone and exit
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    # what it left: temporaries only; every shard under its final name is complete
    assert not (out / "train").exists() and not (out / "validation_report.json").exists()
    shards = list(out.rglob("images-*.safetensors"))
    assert len(shards) >= 3
    size = models.image_size_of(tiny_params()["model"]["name"])
    for shard in shards:
        images.read_shard_layout(shard, 1, size)                 # complete: its header and length agree
    # the next run removes them and writes the whole cache, as a run that was never interrupted
    prepare.run(_params(1, 2), raw_copy, out)
    prepare.run(_params(1, 2), raw_copy, tmp_path / "clean")
    assert _files(out) == _files(tmp_path / "clean")
    assert len(list((out / "train").glob("images-*.safetensors"))) == 72


# ---------------------------------------------------------------------------------------------
# Incremental: a prepare into the folder of a previous one decodes only the files it has not seen
# ---------------------------------------------------------------------------------------------

def _new_images(raw: Path, removed_lines: list[str], kept_lines: list[str]) -> set[str]:
    kept = {line.split("$")[0] for line in kept_lines}
    return {line.split("$")[0] for line in removed_lines} - kept


def test_adding_images_decodes_only_them_and_the_cache_is_a_full_prepares(raw_copy, tmp_path):
    """The ingest DAG's case: images and their lines are added to data/raw. The next prepare into the
    same folder hashes every file, decodes only the new ones, copies the others' rows from the previous
    cache, and writes byte-for-byte what a full prepare writes (shards, indexes, manifests, sources)."""
    label = raw_copy / "train" / "train_label.txt"
    lines = label.read_text().splitlines()
    label.write_text("\n".join(lines[:-12]) + "\n")
    out = tmp_path / "prepared"
    first = prepare.run(_params(7, 2), raw_copy, out)
    assert first["reused"] == 0 and first["decoded"] == sum(c["images"] for c in first["counts"].values())

    label.write_text("\n".join(lines) + "\n")                 # 12 lines back, with their images
    added = _new_images(raw_copy, lines[-12:], lines[:-12])
    assert added
    inodes = {p.name: p.stat().st_ino for p in (out / "train").glob("images-*.safetensors")}
    second = prepare.run(_params(7, 2), raw_copy, out)
    assert second["decoded"] == len(added)
    assert second["reused"] == first["decoded"]
    # the shards before the added images are the previous files, linked, not rewritten; the last is new
    after = {p.name: p.stat().st_ino for p in (out / "train").glob("images-*.safetensors")}
    last_old = max(inodes)
    assert all(after[name] == inode for name, inode in inodes.items() if name != last_old)
    assert after[last_old] != inodes[last_old]
    prepare.run(_params(7, 2), raw_copy, tmp_path / "full")
    assert _files(out) == _files(tmp_path / "full")
    assert (out / "train" / "sources.safetensors").is_file()


def test_a_changed_file_is_decoded_again_and_an_unchanged_run_decodes_nothing(raw_copy, tmp_path):
    out = tmp_path / "prepared"
    prepare.run(_params(7, 1), raw_copy, out)
    again = prepare.run(_params(7, 1), raw_copy, out)
    assert again["decoded"] == 0 and again["reused"] > 0
    victim = sorted((raw_copy / "val" / "val_images").iterdir())[0]
    with Image.open(victim) as image:                          # same name, other bytes (and other pixels)
        image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim, "JPEG", quality=75)
    changed = prepare.run(_params(7, 2), raw_copy, out)
    assert changed["decoded"] == 1
    prepare.run(_params(7, 2), raw_copy, tmp_path / "full")
    assert _files(out) == _files(tmp_path / "full")


def test_another_decoder_or_a_damaged_sources_file_means_decoding_everything(raw_copy, tmp_path, monkeypatch,
                                                                            caplog):
    """Reuse needs the same decoder fingerprint (the decoding code and library versions, the size):
    otherwise, or when a sources file cannot be read, every image is decoded again and the cache is
    still a full prepare's."""
    out = tmp_path / "prepared"
    total = prepare.run(_params(7, 2), raw_copy, out)["decoded"]
    monkeypatch.setattr(prepare, "fingerprint", lambda size: f"another decoder at {size} px")
    assert prepare.run(_params(7, 2), raw_copy, out)["decoded"] == total
    monkeypatch.undo()
    assert prepare.run(_params(7, 2), raw_copy, out)["decoded"] == total     # and back
    (out / "val" / "sources.safetensors").write_bytes(b"\x00" * 40)
    result = prepare.run(_params(7, 2), raw_copy, out)
    assert result["decoded"] == result["counts"]["val"]["images"]     # val decoded again, train and test reused
    assert "not reusing" in caplog.text and "sources.safetensors" in caplog.text
    prepare.run(_params(7, 2), raw_copy, tmp_path / "full")
    assert _files(out) == _files(tmp_path / "full")



# ---------------------------------------------------------------------------------------------
# The file state: a file whose status (inode, size, times) is unchanged since it was hashed is not read
# ---------------------------------------------------------------------------------------------

def _count_reads(monkeypatch) -> list[str]:
    from tasks.core import decode
    reads: list[str] = []
    real = decode.read_file

    def counted(path):
        reads.append(str(path))
        return real(path)
    monkeypatch.setattr(decode, "read_file", counted)
    return reads


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unchanged_file_is_not_read_again_and_a_rewritten_one_is(raw_copy, tmp_path, monkeypatch, workers):
    """The third prepare of unchanged data reads no image file (the state vouches for every one). A file
    rewritten with other bytes of the same length and its modification time set back (what a copy
    with ``cp -p``, or ``touch -r``, can do) still has a new change time: it is read, found changed,
    decoded again, and the cache is a full prepare's."""
    monkeypatch.setattr(prepare.FileState, "RACY_NS", 0)
    out = tmp_path / "prepared"
    first = prepare.run(_params(7, workers), raw_copy, out)
    assert prepare.state_path(out).is_file() and not (out / prepare.state_path(out).name).exists()
    reads = _count_reads(monkeypatch)
    again = prepare.run(_params(7, workers), raw_copy, out)
    assert again["decoded"] == 0 and again["reused"] == again["unread"] == first["decoded"]
    assert reads == []
    monkeypatch.chdir(raw_copy.parent)          # the same folder spelt relatively: the same state
    assert prepare.run(_params(7, workers), Path(raw_copy.name), out)["unread"] == first["decoded"]
    assert reads == []

    victim = sorted((raw_copy / "train" / "train_images").iterdir())[3]
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF                     # inside the JPEG's last scan: other pixels, same length
    time.sleep(0.01)
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert victim.stat().st_size == before.st_size and victim.stat().st_mtime_ns == before.st_mtime_ns
    changed = prepare.run(_params(7, workers), raw_copy, out)
    assert reads == [str(victim)]
    assert changed["decoded"] == 1 and changed["unread"] == first["decoded"] - 1
    prepare.run(_params(7, workers), raw_copy, tmp_path / "full")
    assert _files(out) == _files(tmp_path / "full")


def test_the_state_leaves_out_files_written_just_now_and_a_damaged_state_is_ignored(raw_copy, tmp_path,
                                                                                   monkeypatch, caplog):
    """Files written within two seconds of the state being saved are left out of it (they could change
    again within the times' resolution): the data here was just copied, so the next prepare hashes
    every file. A damaged state file is a warning, and every file is hashed, with the same cache."""
    out = tmp_path / "prepared"
    prepare.run(_params(7, 2), raw_copy, out)
    reads = _count_reads(monkeypatch)
    again = prepare.run(_params(7, 2), raw_copy, out)
    assert again["decoded"] == 0 and len(reads) == again["reused"] and again["unread"] == 0

    prepare.state_path(out).write_bytes(b"\x07" * 30)
    reads.clear()
    monkeypatch.setattr(prepare.FileState, "RACY_NS", 0)
    damaged = prepare.run(_params(7, 2), raw_copy, out)
    assert "not using" in caplog.text and prepare.state_path(out).name in caplog.text
    assert damaged["decoded"] == 0 and len(reads) == damaged["reused"]
    reads.clear()
    assert prepare.run(_params(7, 2), raw_copy, out)["decoded"] == 0 and reads == []   # rewritten whole
