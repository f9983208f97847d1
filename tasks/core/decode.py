"""Decoding images: one loader for every step, and a pool of processes that decodes many in order.

Cars are wide and people are tall; squashing them to a square distorts both, so every image is
zero-padded to a square around its centre and then resized to the model's input size. Training,
evaluation, prediction and search all use :func:`prepare_image` (also importable from
``tasks.core.images``), so the geometry is identical.

This module imports no torch (numpy and Pillow only), so that the pool's workers start in a fraction of
a second and hold tens of megabytes, not torch's hundreds: :class:`Decoder` runs :func:`load_image` +
:func:`prepare_image` on ``workers`` processes and yields the results in the order asked, with at most
a small window of them in flight, whatever the number of images (`prepare` and `validate` stream a
whole dataset through it: tasks/core/dataset.py).
"""

from __future__ import annotations

import collections
import hashlib
import io
import mmap
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Protocol

import numpy as np
from PIL import Image, ImageOps

from tasks.core.errors import InputError

# A decompression bomb (a small file that decodes to gigapixels) is refused before decoding.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# the side an elongated image is shrunk to before padding when its padded square would exceed MAX_PIXELS
MAX_PADDED_SIDE = 4096

# The pool: plain subprocesses running ``python -c "from tasks.core.decode import serve; serve()"``, fed tasks
# and read results through pipes (pickle), the decoded arrays through shared memory (_Slots). Why not
# multiprocessing: with "fork", the child inherits the parent mid-state: the step has imported torch, whose
# OpenMP and allocator threads and locks a forked child would copy half-held (a known deadlock; Python 3.12
# warns on fork with threads). With "spawn" or "forkserver", every worker first re-runs the parent's main
# script (as ``__mp_main__``): a script without an ``if __name__ == "__main__"`` guard runs the whole job
# again in each worker, a heredoc (``python - <<EOF``) breaks the pool outright, and a heavy main (Airflow's
# CLI) loads into every worker. A subprocess is a spawn without that: a fresh interpreter that imports this
# module (numpy and Pillow, ~0.2 s, ~40 MB) and nothing of the parent, the same on Linux, macOS and Windows.
# It also ends cleanly when its parent dies, even by SIGKILL: its stdin reaches end-of-file.
IMAGES_PER_TASK = 8              # images a worker decodes per task: amortises the pickling round trip
# Tasks handed out ahead of the consumer per worker: keeps every worker busy, bounds memory. At least
# TASKS_IN_FLIGHT_PER_WORKER; more, up to MAX_TASKS_IN_FLIGHT_PER_WORKER, while the window's arrays fit in
# WINDOW_BYTES of shared memory (a container's /dev/shm is 64 MB by default). Results are taken in order, so
# a worker that falls behind (the scheduler put it aside for the writer: 3 processes on 2 cores) leaves
# the other idle once it has done its share of the window: 4 tasks per worker left a core idle 4-5% of a
# prepare on 2 cores, 16 about 3%.
TASKS_IN_FLIGHT_PER_WORKER = 4
MAX_TASKS_IN_FLIGHT_PER_WORKER = 16
WINDOW_BYTES = 48 * 2 ** 20


def load_image(path: str | Path | bytes, label: str = "<image bytes>", *, data: bytes | None = None) -> Image.Image:
    """Decode an image file to RGB, applying its EXIF orientation. Bad files raise InputError.

    ``path`` may also be the encoded bytes of an image (the MLflow model's input); ``label`` then
    names it in errors. ``data``: the file's bytes, already read (:func:`read_file`); they are decoded
    and ``path`` only names them, with the same messages as a decode from the file.
    """
    if isinstance(path, (bytes, bytearray)):
        source, shown = io.BytesIO(path), label
        path = label
    elif data is not None:
        source, shown = io.BytesIO(data), repr(str(path))   # as Pillow names a file it opened itself
        path = Path(path)
    else:
        source = path = Path(path)
        shown = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # Pillow's notes on odd metadata ("Corrupt EXIF")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise InputError(path, f"image is {image.width}x{image.height} pixels", field="image",
                                     expected=f"at most {MAX_PIXELS} pixels")
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                    image = Image.alpha_composite(background, rgba)
                if image.mode.startswith("I"):  # 16-bit (I;16, I;16B, ...) or 32-bit integer grey
                    image = _sixteen_bit_to_grey(image)
                return image.convert("RGB")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(path, f"refused as a decompression bomb ({exc})", field="image",
                         expected=f"at most {MAX_PIXELS} pixels") from None
    except FileNotFoundError:
        raise InputError(path, "image file not found", field="image", expected="an existing image file") from None
    except Exception as exc:  # a damaged file can make a decoder raise anything (OSError, SyntaxError, struct.error)
        reason = str(exc).replace(repr(source), shown) or type(exc).__name__
        raise InputError(path, f"cannot decode image: {reason}", field="image",
                         expected="a readable JPEG/PNG/BMP/WebP file") from None


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit by its full range (65535 -> 255), the same scale for every image: a dark
    16-bit image stays dark. A 32-bit integer image ("I") is read the same way, unless all its values
    already fit in 0..255 (an 8-bit image stored as I)."""
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or array.max(initial=0) > 255:
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def pad_to_square(image: Image.Image) -> Image.Image:
    """Centre the image on a black square whose side is its longer edge."""
    side = max(image.width, image.height)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """Pad to a square with zeros, resize to size x size (bicubic); uint8 [size, size, 3].

    An image so elongated that its padded square would exceed MAX_PIXELS (a 100000 x 10 strip is
    only a megapixel, its square 10 gigapixels) is first shrunk, aspect ratio kept, to a longer side
    of MAX_PADDED_SIDE, so memory stays bounded; the geometry is the same up to rounding."""
    side = max(image.width, image.height)
    if side * side > MAX_PIXELS:
        scale = MAX_PADDED_SIDE / side
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
    square = pad_to_square(image)
    if square.width != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Many images, in order, on several processes
# ---------------------------------------------------------------------------------------------

class Decoded(NamedTuple):
    """One file's outcome: the prepared array (None without a size, or on error), the original
    (width, height), or the InputError's report entry (``InputError.as_dict()``).

    With known digests (``Decoder(known=...)``): ``digest`` is the SHA-256 of the file's bytes (the
    bytes that were decoded), and ``reused`` says the digest was known, so the file was read and
    hashed but not decoded (``array`` and ``size`` are None: the caller has them). With a file state
    (``Decoder(state=...)``): ``status``, what the state said of the file before it was read."""
    array: np.ndarray | None
    size: tuple[int, int] | None
    error: dict | None
    digest: bytes | None = None
    reused: bool = False
    status: bytes | None = None


class FileState(Protocol):
    """What can vouch for a file's digest without reading it (`prepare`'s file state)."""

    def look(self, path: str) -> tuple[bytes | None, bytes | None]:
        """The file's status now (None: it cannot be had), and the digest it had when last hashed with
        that same status (None: unknown, or changed since)."""


def _unlooked(path: str) -> tuple[None, None]:
    return None, None


def read_file(path: str | Path) -> bytes:
    """A file's bytes; a missing or unreadable file is the InputError that decoding it would give."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputError(path, "image file not found", field="image", expected="an existing image file") from None
    except OSError as exc:
        raise InputError(path, f"cannot decode image: {exc}", field="image",
                         expected="a readable JPEG/PNG/BMP/WebP file") from None


def decode_file(path: str | Path, size: int | None, known: frozenset[bytes] | None = None) -> Decoded:
    """Decode one file (and prepare it when ``size`` is given); a bad file is an outcome, not a raise.

    With ``known`` (a set of SHA-256 digests, possibly empty), the file is read once, hashed, and
    decoded from those same bytes unless its digest is known (then it is not decoded at all)."""
    try:
        if known is None:
            image, digest = load_image(path), None
        else:
            data = read_file(path)
            digest = hashlib.sha256(data).digest()
            if digest in known:
                return Decoded(None, None, None, digest, True)
            image = load_image(path, data=data)
        return Decoded(prepare_image(image, size) if size else None, image.size, None, digest)
    except InputError as exc:
        return Decoded(None, None, exc.as_dict())


def _with_status(outcome: Decoded, status: bytes | None) -> Decoded:
    """``outcome`` with the file status a state gave (no new tuple without a state: status None)."""
    return outcome if status is None else outcome._replace(status=status)


def fingerprint(size: int) -> str:
    """What a prepared image is a function of, besides its file's bytes: this module's code (loading,
    padding, resizing), the versions of Pillow, its JPEG library and numpy, and the size. Two decodes
    with equal file digests and equal fingerprints give the same bytes, so a cache keyed by both can
    hand back an earlier decode instead of decoding again (`prepare`'s reuse: tasks/steps/prepare.py)."""
    from PIL import features

    text = "\0".join((Image.__version__, str(features.version_codec("jpg")), np.__version__, str(size)))
    return hashlib.sha256(Path(__file__).read_bytes() + b"\0" + text.encode()).hexdigest()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int) -> int:
    """``prepare.workers``: 0 means every core this process may use."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return workers or available_cores()


class Decoder:
    """Decodes files in order, on ``workers`` processes (1: in this process, no pool).

    ``with Decoder(workers) as decoder: for outcome in decoder.map(paths, size): ...``: outcomes come in
    the order of ``paths``. With ``known`` digests, every file is hashed and a file whose digest is
    known is not decoded (:func:`decode_file`): this process hashes them and sends the workers only
    the others. Tasks of IMAGES_PER_TASK files go to the least busy worker, at most ``window(size)``
    of them ahead of the consumer, so memory holds a bounded window of decoded images whatever the
    number of files. Workers start as tasks need them (up to ``workers``; all at once with ``start``),
    serve every later ``map``, and stop on ``close`` (or leaving the ``with``).

    ``state`` (with ``known``; :class:`FileState`): looked at once per file, in order, before the file
    is read; each outcome carries the status it gave (``Decoded.status``), and a file whose vouched
    digest is known is reused with no read at all.
    """

    def __init__(self, workers: int = 1, known: frozenset[bytes] | None = None, state: FileState | None = None):
        self.workers = resolve_workers(workers)
        self.known = None if known is None else frozenset(known)
        self.look = state.look if state is not None and known is not None else _unlooked
        self._pool: list[_Worker] = []
        self._done = threading.Condition()
        self._results: dict[int, tuple] = {}
        self._next_task = 0
        self._slots: _Slots | None = None      # shared memory the workers put decoded arrays in

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close(kill=kind is not None)

    def window(self, size: int | None) -> int:
        """How many tasks a map of ``size`` px hands out ahead of its consumer (see WINDOW_BYTES)."""
        if not size:            # no arrays: a map without a size
            return self.workers * TASKS_IN_FLIGHT_PER_WORKER
        task_bytes = IMAGES_PER_TASK * size * size * 3
        per_worker = min(MAX_TASKS_IN_FLIGHT_PER_WORKER, WINDOW_BYTES // (task_bytes * self.workers))
        return self.workers * max(TASKS_IN_FLIGHT_PER_WORKER, per_worker)

    def start(self, size: int | None) -> None:
        """Start every worker now, ready for maps of ``size`` px, instead of as tasks need them: their
        start-up (a fresh interpreter importing numpy and Pillow, ~0.2 s) then overlaps what the caller
        does before its first map (``scan`` reads a split's labels). Nothing with one worker."""
        if self.workers == 1:
            return
        self._slots_for(self.window(size), size)
        while len(self._pool) < self.workers:
            self._spawn()

    def close(self, kill: bool = False) -> None:
        """Stop the workers: each finishes what it has and exits at the end of its input (at once with
        ``kill``)."""
        pool, self._pool = self._pool, []
        for worker in pool:
            worker.stop(kill)
        self._results.clear()
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.close()

    def map(self, paths: Iterable[str | Path], size: int | None) -> Iterator[Decoded]:
        """Each path's :class:`Decoded`, in order."""
        look = self.look
        if self.workers == 1:
            for path in map(str, paths):
                status, digest = look(path)
                if digest is not None and digest in self.known:
                    yield Decoded(None, None, None, digest, True, status)
                else:
                    yield _with_status(decode_file(path, size, self.known), status)
            return
        if not self.known:      # nothing to reuse (a first prepare): the workers hash what they decode
            statuses: collections.deque = collections.deque()   # of the files handed out, not yet yielded

            def looked(names: Iterable[str]) -> Iterator[str]:
                for name in names:
                    statuses.append(look(name)[0])
                    yield name

            for outcome in self._map(looked(map(str, paths)), size):
                yield _with_status(outcome, statuses.popleft())
            return
        # With known digests, every file is hashed here first (a read and a SHA-256: about 12 us for a
        # demo image, the hashing outside the GIL) and only the others go to the workers: a known file
        # then costs no message to a worker and back, which was most of an incremental prepare.
        paths = [str(p) for p in paths]
        early: list[tuple[bytes | None, bytes | dict | None]] = []
        for path in paths:      # (status, the known file's digest, a read error, or None: decode)
            status, digest = look(path)
            if digest is None:
                try:
                    digest = hashlib.sha256(read_file(path)).digest()
                except InputError as exc:
                    early.append((status, exc.as_dict()))
                    continue
            early.append((status, digest if digest in self.known else None))
        rest = self._map((p for p, (_, e) in zip(paths, early) if e is None), size)
        for status, entry in early:
            if entry is None:       # decoded (and hashed again, from the bytes it decoded)
                yield _with_status(next(rest), status)
            elif isinstance(entry, dict):
                yield Decoded(None, None, entry, status=status)
            else:
                yield Decoded(None, None, None, entry, True, status)
        for _ in rest:
            raise AssertionError("a decoded image without its file")    # pragma: no cover

    def _map(self, paths: Iterable[str | Path], size: int | None) -> Iterator[Decoded]:
        batches = _batches((str(p) for p in paths), IMAGES_PER_TASK)
        window = self.window(size)
        slots = self._slots_for(window, size)
        slot_bytes = IMAGES_PER_TASK * size * size * 3 if slots is not None else 0
        owner: dict[int, _Worker] = {}
        wanted, exhausted = self._next_task, False
        try:
            while True:
                while not exhausted and self._next_task - wanted < window:   # hand out tasks up to the window
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    worker = self._least_busy()
                    # task n's arrays go to slot n % window: the task before it in that slot was taken
                    # (its arrays copied out) before this one could be handed out
                    worker.send(self._next_task, batch, size,
                                None if slots is None else self._next_task % window * slot_bytes)
                    owner[self._next_task] = worker
                    self._next_task += 1
                if wanted == self._next_task:
                    return
                outcomes = self._take(wanted, owner.pop(wanted), slots, size, wanted % window * slot_bytes)
                wanted += 1
                yield from outcomes
        finally:
            if owner:     # left before the end (an error): results still coming would be nobody's
                self.close(kill=True)

    def _least_busy(self) -> _Worker:
        """The worker with the fewest tasks; a new one while every worker has some and there are fewer
        than ``workers`` (a small dataset starts only the workers it keeps busy)."""
        if len(self._pool) < self.workers and all(w.outstanding for w in self._pool):
            self._spawn()
        return min(self._pool, key=lambda w: w.outstanding)

    def _spawn(self) -> None:
        # with known digests, map() sends a worker only files whose digest is not known: it hashes
        # what it decodes (an empty set), and the set itself (50,000 digests: 2 MB) never travels
        hashing = None if self.known is None else frozenset()
        self._pool.append(_Worker(len(self._pool), self._done, self._results, hashing,
                                  None if self._slots is None else self._slots.fd))

    def _slots_for(self, window: int, size: int | None) -> _Slots | None:
        """Shared memory with room for ``window`` tasks' arrays of ``size`` px (made, or grown, before
        any task of this map is handed out); None without a size, or where it cannot be made (the
        arrays then come through the pipes). It is made before the first worker starts, whether or not
        this map has a size (a page, then), since workers get it when they start."""
        need = window * IMAGES_PER_TASK * size * size * 3 if size else 0
        if self._slots is None and not self._pool:
            self._slots = _Slots.create(max(need, mmap.PAGESIZE))
        if not size or self._slots is None:
            return None
        if self._slots.capacity < need and not self._slots.grow(need):
            return None                    # no room for the larger arrays: this map uses the pipes
        return self._slots                 # (each worker maps a grown file when a task needs it)

    def _take(self, task: int, worker: _Worker, slots: _Slots | None = None, size: int | None = None,
              base: int = 0) -> list[Decoded]:
        with self._done:
            while task not in self._results and worker.failure is None:
                self._done.wait()
            if task not in self._results:
                raise RuntimeError(worker.failure)
            kind, payload = self._results.pop(task)
        worker.outstanding -= 1
        if kind == "raised":    # not a bad image (those are outcomes) but a failure of the decoder itself
            raise payload
        if slots is None:
            return [Decoded(*outcome) for outcome in payload]
        # an array in shared memory is sent as its place in the task's slot: copied out here, so the
        # slot is free for a later task once this returns
        row = size * size * 3
        return [Decoded(slots.read(base + array * row, (size, size, 3)) if isinstance(array, int) else array, *rest)
                for array, *rest in payload]


class _Worker:
    """One decoding process and the thread that reads its results into ``results``."""

    def __init__(self, number: int, done: threading.Condition, results: dict, known: frozenset[bytes] | None,
                 shared: int | None = None):
        package_root = str(Path(__file__).resolve().parents[2])   # the folder holding ``tasks``
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        self.number, self.outstanding, self.failure = number, 0, None
        self.process = subprocess.Popen([sys.executable, "-c", "from tasks.core.decode import serve; serve()"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        pass_fds=() if shared is None else (shared,))
        self._done, self._results = done, results
        self._reader = threading.Thread(target=self._read, name=f"decoder-{number}", daemon=True)
        self._reader.start()
        self._write((known, shared))    # the first message: the known digests (or None), the shared memory's fd

    def _write(self, message) -> None:
        try:
            pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.flush()
        except OSError:    # it died: the reader thread has the reason, or will have it
            self._reader.join(5)
            raise RuntimeError(self.failure or f"decoding process {self.number} stopped") from None

    def send(self, task: int, paths: list[str], size: int | None, offset: int | None = None) -> None:
        self._write((task, paths, size, offset))
        self.outstanding += 1

    def _read(self) -> None:
        try:
            while True:
                task, result = pickle.load(self.process.stdout)
                with self._done:
                    self._results[task] = result
                    self._done.notify_all()
        except Exception:   # end of its output: it exited (or was killed)
            code = self.process.wait()
            with self._done:
                self.failure = (f"decoding process {self.number} (pid {self.process.pid}) exited with status {code}"
                                + (" (out of memory?)" if code in (-9, 137) else ""))
                self._done.notify_all()

    def stop(self, kill: bool) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        if kill:
            self.process.kill()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        self.process.stdout.close()


def serve() -> None:
    """A decoding process: read the known digests (or None) and the shared memory's file descriptor (or
    None) from stdin, then tasks ``(id, paths, size, offset)``, and write ``(id, result)`` to stdout,
    until stdin ends (the parent closed it, or died). With an offset, the task's arrays are written into
    the shared memory from there, one after another, and the result names each by its number; without,
    they travel in the result. Bad images are outcomes; anything else raised is sent back to be raised
    in the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole process group: the parent handles it
    tasks, results = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                                  # a stray print() goes to stderr, not into the results
    try:
        known, shared = pickle.load(tasks)
    except EOFError:
        return
    memory: mmap.mmap | None = None
    while True:
        try:
            task, paths, size, offset = pickle.load(tasks)
        except EOFError:
            return
        try:
            outcomes = [tuple(decode_file(path, size, known)) for path in paths]
            if offset is not None:
                if memory is None or len(memory) < offset + len(paths) * size * size * 3:
                    memory = mmap.mmap(shared, os.fstat(shared).st_size)    # made, or grown, by the parent
                for number, outcome in enumerate(outcomes):
                    array = outcome[0]
                    if array is not None:       # no copy to bytes first: written from the array's memory
                        start = offset + number * array.nbytes
                        memory[start:start + array.nbytes] = memoryview(np.ascontiguousarray(array)).cast("B")
                        outcomes[number] = (number, *outcome[1:])
            result = ("ok", outcomes)
        except Exception as exc:
            try:
                pickle.dumps(exc)
                result = ("raised", exc)
            except Exception:
                result = ("raised", RuntimeError(f"{type(exc).__name__}: {exc}"))
        try:
            pickle.dump((task, result), results, protocol=pickle.HIGHEST_PROTOCOL)
            results.flush()
        except BrokenPipeError:                    # the parent is gone
            return


class _Slots:
    """Memory shared with the decoding processes: an unlinked temporary file (in /dev/shm where there is
    one), mapped by each side; task ``n`` of a map writes its arrays in slot ``n % window``. A
    decoded image then crosses once, as a copy into this memory, instead of being pickled into a pipe,
    read by this process's reader thread (which needs the GIL) and unpickled: a worker spent a tenth of
    its time waiting for a pipe to drain. Nothing is left behind when a process dies: the file has no
    name, and its memory goes with the last descriptor. Its pages are allocated when it is made
    (``posix_fallocate``): a full /dev/shm (a container's is 64 MB by default) is then a fall-back to the
    pipes, not a worker killed by SIGBUS when it writes."""

    def __init__(self, handle, capacity: int):
        self.handle, self.fd, self.capacity = handle, handle.fileno(), capacity
        self.memory = mmap.mmap(self.fd, capacity)

    @classmethod
    def create(cls, capacity: int) -> _Slots | None:
        if os.name != "posix":
            return None                # pass_fds is POSIX only: the arrays come through the pipes
        for folder in ("/dev/shm", None):          # None: the system's temporary folder
            if folder is not None and not os.path.isdir(folder):
                continue
            handle = None
            try:
                handle = tempfile.TemporaryFile(dir=folder)
                _allocate(handle.fileno(), capacity)
                return cls(handle, capacity)
            except OSError:
                if handle is not None:
                    handle.close()
        return None

    def grow(self, capacity: int) -> bool:
        """Room for ``capacity`` bytes; False (and unchanged) where there is none."""
        try:
            _allocate(self.fd, capacity)
        except OSError:
            return False
        self.memory.close()
        self.memory, self.capacity = mmap.mmap(self.fd, capacity), capacity
        return True

    def read(self, start: int, shape: tuple[int, int, int]) -> np.ndarray:
        return np.frombuffer(self.memory, dtype=np.uint8, count=shape[0] * shape[1] * shape[2],
                             offset=start).reshape(shape).copy()

    def close(self) -> None:
        self.memory.close()
        self.handle.close()


def _allocate(fd: int, size: int) -> None:
    """Make the file ``size`` bytes long with its blocks allocated (OSError where there is no room)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:                                          # pragma: no cover (macOS): sparse, as ftruncate makes it
        os.ftruncate(fd, size)


def _batches(items: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
