"""The decoding pool (tasks/core/decode.py): outcomes in order, bad files as outcomes, workers started
as needed, a dead worker a clear error, 0 workers = every core."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tasks.core import decode


def _files(tiny_raw, tmp_path, count: int) -> list:
    files = sorted((tiny_raw / "train" / "train_images").iterdir())[:count]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return files[:3] + [tmp_path / "broken.jpg", tmp_path / "missing.jpg"] + files[3:]


@pytest.mark.parametrize("size", [20, None])
def test_a_pool_gives_what_one_process_gives_in_order(tiny_raw, tmp_path, size):
    files = _files(tiny_raw, tmp_path, 40)
    with decode.Decoder(1) as one, decode.Decoder(3) as three:
        serial = list(one.map(files, size))
        pooled = list(three.map(files, size))
        again = list(three.map(reversed(files), size))      # the same workers serve a second map
    assert len(serial) == len(pooled) == len(files)
    for a, b in zip(serial, pooled, strict=True):
        assert a.size == b.size and a.error == b.error
        assert (a.array is None and b.array is None) or np.array_equal(a.array, b.array)
    assert [o.size for o in again] == [o.size for o in reversed(serial)]
    assert serial[3].error["reason"].startswith("cannot decode image") and serial[3].array is None
    assert serial[4].error["reason"] == "image file not found"
    assert all((o.array is not None) == (size is not None) for o in serial if o.error is None)


@pytest.mark.parametrize("shared", [True, False])
def test_arrays_through_shared_memory_or_the_pipes_are_the_same_and_a_larger_size_grows_it(
        tiny_raw, tmp_path, monkeypatch, shared):
    """Workers put decoded arrays in memory shared with this process (an unlinked file), or, where it
    cannot be made, send them through their pipes: the same arrays. A map at a larger size than the
    workers' memory was made for grows it (the workers map it again); one without a size needs none,
    and a first map without a size (what validate does) still makes it for the maps after it."""
    files = _files(tiny_raw, tmp_path, 60)
    if not shared:
        monkeypatch.setattr(decode._Slots, "create", classmethod(lambda cls, capacity: None))
    with decode.Decoder(1) as one, decode.Decoder(2) as two:
        for size in (None, 12, 40, None, 12):
            serial = [o.array for o in one.map(files, size)]
            pooled = [o.array for o in two.map(files, size)]
            assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(serial, pooled, strict=True))
            if shared:       # copies, not views of memory a later task writes over
                assert all(b is None or b.flags.owndata for b in pooled)
        assert (two._slots is not None) == shared
        if shared:
            assert two._slots.capacity == two.window(40) * decode.IMAGES_PER_TASK * 40 * 40 * 3
    assert two._slots is None


def test_the_window_of_tasks_fits_a_containers_shared_memory():
    """Tasks in flight: 16 per worker while their arrays fit in 48 MB (a container's /dev/shm is 64 MB
    unless told otherwise), never fewer than 4 per worker."""
    task = decode.IMAGES_PER_TASK * 224 * 224 * 3                          # 1.2 MB at 224 px
    assert decode.Decoder(2).window(224) == 32                             # 38.5 MB
    assert decode.Decoder(8).window(224) == 40 and 40 * task <= 48 * 2 ** 20
    assert decode.Decoder(16).window(224) == 64                            # 4 each: 77 MB, as before
    assert decode.Decoder(2).window(96) == 32 and decode.Decoder(2).window(None) == 8


def test_no_room_in_shared_memory_means_the_pipes(tiny_raw, tmp_path, monkeypatch):
    """The shared memory's pages are allocated up front (a container's /dev/shm is 64 MB): where there
    is no room, at first or to grow it for a larger size, the arrays come through the pipes instead of
    a worker dying of SIGBUS, and they are the same."""
    files = _files(tiny_raw, tmp_path, 30)
    real = decode._allocate
    room = decode.Decoder(2).window(12) * decode.IMAGES_PER_TASK * 12 * 12 * 3       # 12 px, not 40

    def full(fd, size):
        if size > room:
            raise OSError(28, "No space left on device")
        real(fd, size)
    monkeypatch.setattr(decode, "_allocate", full)
    with decode.Decoder(1) as one, decode.Decoder(2) as two:
        for size in (12, 40, 12):
            serial = [o.array for o in one.map(files, size)]
            pooled = [o.array for o in two.map(files, size)]
            assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(serial, pooled, strict=True))
        assert two._slots is not None and two._slots.capacity == room      # not grown
    monkeypatch.setattr(decode, "_allocate", lambda fd, size: (_ for _ in ()).throw(OSError(28, "full")))
    with decode.Decoder(2) as two:
        assert [o.size for o in two.map(files, 12)] == [o.size for o in decode.Decoder(1).map(files, 12)]
        assert two._slots is None


def test_workers_start_only_as_tasks_need_them(tiny_raw, tmp_path):
    files = _files(tiny_raw, tmp_path, 3)                   # 5 files: one task
    with decode.Decoder(4) as decoder:
        assert len(list(decoder.map(files, 16))) == 5
        assert len(decoder._pool) == 1
        assert list(decoder.map([], 16)) == []
    assert decoder._pool == []


def test_a_worker_that_dies_is_an_error_naming_it(tiny_raw, tmp_path):
    files = _files(tiny_raw, tmp_path, 60) * 4
    with decode.Decoder(2) as decoder:
        outcomes = decoder.map(files, 16)
        next(outcomes)
        for worker in decoder._pool:
            worker.process.kill()
        with pytest.raises(RuntimeError, match=r"decoding process \d .*(exited with status -9|stopped)"):
            list(outcomes)
    assert decoder._pool == []


def test_zero_workers_is_every_core_this_process_may_use():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert decode.resolve_workers(0) == decode.Decoder(0).workers == cores
    assert decode.resolve_workers(3) == 3
    with pytest.raises(ValueError, match="workers must be >= 0"):
        decode.resolve_workers(-1)


def test_with_known_digests_a_file_is_hashed_and_decoded_from_the_same_bytes(tiny_raw, tmp_path):
    """Hashing changes nothing about a decode (arrays and error messages alike); a known digest is
    not decoded."""
    import hashlib

    files = _files(tiny_raw, tmp_path, 6)
    for path in files:
        plain, hashed = decode.decode_file(path, 16), decode.decode_file(path, 16, frozenset())
        assert plain.error == hashed.error and plain.size == hashed.size and not hashed.reused
        assert (plain.array is None and hashed.array is None) or np.array_equal(plain.array, hashed.array)
        if plain.error is None:
            assert hashed.digest == hashlib.sha256(path.read_bytes()).digest()
    known = frozenset({hashlib.sha256(files[0].read_bytes()).digest()})
    missing = tmp_path / "missing.jpg"
    with decode.Decoder(2, known) as pool:     # hashed in this process, the unknown ones decoded by workers
        outcomes = list(pool.map([*files, missing, files[0]], 16))
    assert outcomes[0].reused and outcomes[0].array is None and outcomes[0].size is None
    assert outcomes[-1].reused and outcomes[-1].digest == outcomes[0].digest
    assert not any(o.reused for o in outcomes[1:-1])
    for path, outcome in zip([*files[1:], missing], outcomes[1:-1]):   # in order, as one process gives them
        alone = decode.decode_file(path, 16, frozenset())
        assert outcome.error == alone.error and outcome.size == alone.size and outcome.digest == alone.digest
        assert (alone.array is None and outcome.array is None) or np.array_equal(alone.array, outcome.array)
    assert outcomes[-2].error["reason"] == "image file not found"
    assert decode.fingerprint(16) != decode.fingerprint(24)
