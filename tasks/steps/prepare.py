"""Step `prepare`: validate the raw dataset and decode every image once into a cache.

It streams: images are decoded on ``prepare.workers`` processes (0: every core; tasks/core/decode.py), in
order, and each goes straight into its split's open cache shard (tasks/core/images.py ``ShardWriter``),
so memory holds about one image per worker in flight, never the dataset. Each split is written into a
temporary folder beside its target and swapped in (tasks/core/atomic.py ``atomic_dir``) only once the
whole dataset has been checked: ``data.on_error: fail`` with a problem leaves the previous cache as it
was, and a run killed mid-way leaves no half-written shard under a final name (the next run removes
its temporaries and writes everything again). The output is byte-for-byte the same for any number of
workers.

Incremental: each split also records the SHA-256 of every cached image's file (``sources.safetensors``,
with the decoder's fingerprint: tasks/core/decode.py ``fingerprint``). A later prepare into the same
folder (``data/prepared`` is a ``persist`` output in dvc.yaml, so DVC leaves it in place when the stage
reruns) hashes every file (or takes its digest from the file state, ``FileState``, when the file's
inode, size and times are unchanged since it was hashed) and decodes only those whose digest the
previous cache does not hold; the others' rows are copied from it. Same bytes and same fingerprint
means the same decode, so the result is byte-for-byte a full prepare's (tested); the log and the
step's result say how many images were decoded and how many reused (docs/scale.md). A shard whose rows
are all a previous shard's, in order, is that file, hard-linked: adding images at the end of a split
rewrites only its last shard.

Output (``data/prepared``, a DVC stage output):
  {train,val,test}/images-*.safetensors + images.json   padded, resized uint8 images
  {train,val,test}/manifest.json                        what each cached image is (labels, original
                                                        width x height), and the text pairs/queries
  {train,val,test}/sources.safetensors                  each cached image's file digest and size (reuse)
  vocabulary.json                                       vehicle colours/types/brands from the training labels
  validation_report.json                                every rejected line or image, and the counts
Beside it, not in it: ``.prepared.prepare-state.safetensors`` (``state_path``), this machine's file state.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from tasks.core import labels, log, models
from tasks.core.atomic import (
    StreamedList,
    atomic_dir,
    atomic_path,
    remove_stale_temporaries,
    write_json,
    write_json_streamed,
)
from tasks.core.dataset import SplitScan, enforce, scan
from tasks.core.decode import fingerprint, resolve_workers
from tasks.core.errors import UserError
from tasks.core.images import ImageCache, ShardWriter
from tasks.core.paths import MANIFEST, PREPARED_VALIDATION_REPORT, SOURCES, VOCABULARY

SPLITS = (*labels.SPLITS, "test")


def _record_entry(record) -> dict:
    entry = {"image": record.image, "path": record.image_path, "category": record.category, "key": record.key}
    if record.vehicle is not None:
        entry.update(colour=record.vehicle.colour, brand=record.vehicle.brand, type=record.vehicle.vehicle_type)
    if record.bits is not None:
        entry["bits"] = list(record.bits)
    return entry


def _labelled_manifest(split: str, result: SplitScan, image_size: int) -> dict:
    """The split's manifest, its lists generated as they are written: an image's entry comes from its
    first record (the records are in the images' first-seen order, the cache's order)."""
    index_of = {path: i for i, path in enumerate(result.image_paths)}

    def images():
        written = 0
        for record in result.records:
            i = index_of[record.image_path]
            if i == written:
                width, height = result.image_sizes[i]
                written += 1
                yield {**_record_entry(record), "width": width, "height": height}
        if written != len(result.image_paths):
            raise AssertionError(f"{split}: images out of their records' order after {written}")

    def pairs():
        for record in result.records:
            yield {"text": record.text, "image": index_of[record.image_path], "line": record.line}
    return {"split": split, "image_size": image_size, "images": StreamedList(images, len(result.image_paths)),
            "pairs": StreamedList(pairs, len(result.records))}


def _test_manifest(result: SplitScan, image_size: int) -> dict:
    def images():
        for p, (w, h) in zip(result.image_paths, result.image_sizes):
            yield {"image": Path(p).name, "path": p, "width": w, "height": h}
    return {"split": "test", "image_size": image_size, "images": StreamedList(images, len(result.image_paths)),
            "queries": [{"text": q.text, "line": q.line, "category": q.category} for q in result.queries]}


SOURCES_FORMAT = "trafficlip.sources/1"


def write_sources(folder: Path, result: SplitScan, decoder: str) -> None:
    """The split's reuse keys, row for row with its cache: the SHA-256 of each image's file (uint8
    [n, 32]) and its original (width, height) (int64 [n, 2]), with the decoder's fingerprint (metadata
    ``trafficlip.sources/1``). A
    safetensors file (nothing in it is unpickled), written atomically."""
    from safetensors.numpy import save_file

    digests = np.frombuffer(b"".join(result.image_digests), dtype=np.uint8).reshape(-1, 32)
    sizes = np.asarray(result.image_sizes, dtype=np.int64).reshape(-1, 2)
    if len(digests) != len(sizes):
        raise AssertionError(f"{folder}: {len(digests)} digests for {len(sizes)} images")
    with atomic_path(folder / SOURCES) as tmp:
        # one metadata entry: safetensors writes several in no fixed order, and the file must be the same
        # bytes every time
        save_file({"sha256": digests, "size": sizes}, str(tmp), metadata={SOURCES_FORMAT: decoder})


class Previous:
    """The images a previous prepare left in ``out``, by the SHA-256 of their files, for those decoded
    with the same decoder fingerprint (anything else is decoded again). ``sizes`` maps each digest
    to the image's original (width, height); ``image(digest)`` reads its cached row."""

    def __init__(self, out: Path, decoder: str, logger):
        self.sizes: dict[bytes, tuple[int, int]] = {}
        self._where: dict[bytes, tuple[ImageCache, int]] = {}
        for split in SPLITS:
            folder = out / split
            if not (folder / SOURCES).exists():
                continue
            try:
                digests, sizes = self._read(folder / SOURCES, decoder)
                cache = ImageCache(folder) if digests is not None else None
            except UserError as exc:
                logger.warning("not reusing %s: %s", folder, exc)
                continue
            if cache is None:
                logger.info("not reusing %s: decoded by other code or libraries (fingerprint differs)", folder)
                continue
            if len(digests) != cache.count:
                logger.warning("not reusing %s: %d digests for %d cached images", folder, len(digests), cache.count)
                continue
            for row, (digest, size) in enumerate(zip(digests, sizes.tolist())):
                if digest not in self._where:       # a digest held twice keeps its first (earlier split's) row
                    self._where[digest] = (cache, row)
                    self.sizes[digest] = tuple(size)

    @staticmethod
    def _read(path: Path, decoder: str) -> tuple[list[bytes] | None, np.ndarray | None]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "np") as handle:
                if (handle.metadata() or {}).get(SOURCES_FORMAT) != decoder:
                    return None, None
                digests, sizes = handle.get_tensor("sha256"), handle.get_tensor("size")
        except Exception as exc:   # safetensors raises its own errors for a damaged file
            raise UserError(f"{path}: not a readable sources file ({type(exc).__name__}: {exc})") from None
        if digests.ndim != 2 or digests.shape[1] != 32 or sizes.shape != (len(digests), 2):
            raise UserError(f"{path}: sha256 {list(digests.shape)} and size {list(sizes.shape)}, "
                            "expected [n, 32] and [n, 2]")
        blob = digests.tobytes()
        return [blob[i:i + 32] for i in range(0, len(blob), 32)], sizes

    def __len__(self) -> int:
        return len(self._where)

    def where(self, digest: bytes) -> tuple[ImageCache, int]:
        """The cache and row holding the image of this digest."""
        return self._where[digest]


STATE_FORMAT = "trafficlip.prepare-state/2"     # /2: paths relative to the resolved data folder
# a file's status: device and inode (unsigned), size, modification and change times in ns (signed)
_STATUS = struct.Struct("<QQqqq")


def state_path(out: Path) -> Path:
    """Where the file state of a prepare into ``out`` lives: beside it, not in it (``data/prepared`` is a
    DVC output, and this file describes this machine's files, not the cache)."""
    return out.parent / f".{out.name}.prepare-state.safetensors"


class FileState:
    """What a prepare knew of each image file: its status (device, inode, size, modification and change
    times in ns) when it was hashed, and the digest. A later prepare takes a file whose status is the
    same as the digest it had, without reading it: DVC's own state does this for ``dvc status`` (with
    inode, size and mtime). The change time is kept as well: a program can set a file's mtime back,
    not its ctime, which the kernel sets on every write. A file written within ``RACY_NS`` of the state
    being saved is left out of it (it could change again within the times' resolution, keeping all
    five numbers), so it is hashed the next time, as git does with its "racily clean" index entries.

    Anything else (no state, another data folder, another file system, a file changed or replaced, a
    damaged state file) means hashing the file, as without a state: the state makes a prepare faster,
    never different. It is one safetensors file beside the output (``state_path``), rewritten
    atomically by each prepare, and holds about 100 bytes per image: the data folder's resolved path
    (so ``data/raw`` and its absolute path share one state), and each file by its path in it.
    The statuses taken during a scan travel with its images (``SplitScan.image_status``), not here.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path, data: Path, logger):
        self.path = path
        self.root = str(data.resolve())
        self._prefix = os.path.join(data, "")        # how ``scan`` names the files it looks at
        self.previous: dict[str, bytes] = {}         # relative path -> status and digest (72 bytes)
        self.unread = 0                              # files whose digest came from here (not read)
        if path.exists():
            try:
                self.previous = self._read()
            except Exception as exc:     # a damaged state only costs the hashing it would have saved
                logger.warning("not using %s (%s: %s): every file is hashed", path, type(exc).__name__, exc)

    def _read(self) -> dict[str, bytes]:
        """Each path's status and digest, as one bytes object (72 bytes: the dictionary of 153,728 files
        holds no tuples of ints, about 150 bytes per file less)."""
        from safetensors import safe_open

        with safe_open(str(self.path), "np") as handle:
            if (handle.metadata() or {}).get(STATE_FORMAT) != self.root:
                return {}
            blob = handle.get_tensor("paths").tobytes()
            names = blob.split(b"\0") if blob else []        # no file: no name (not one empty one)
            status, digests = handle.get_tensor("status"), handle.get_tensor("sha256")
        if status.shape != (len(names), _STATUS.size) or digests.shape != (len(names), 32):
            raise ValueError(f"{len(names)} paths, status {list(status.shape)}, sha256 {list(digests.shape)}")
        rows = np.concatenate([status, digests], axis=1).tobytes()
        width = _STATUS.size + 32
        return {name.decode("utf-8", "surrogateescape"): rows[i * width:(i + 1) * width]
                for i, name in enumerate(names)}

    def look(self, path: str) -> tuple[bytes | None, bytes | None]:
        """``path``'s status now, and its digest if that is the status it had when hashed
        (tasks/core/decode.py ``FileState``)."""
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        status = _STATUS.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = self.previous.get(path[len(self._prefix):]) if path.startswith(self._prefix) else None
        if known is None or known[:_STATUS.size] != status:
            return status, None
        self.unread += 1
        return status, known[_STATUS.size:]

    def record(self, result) -> None:
        """Every cached image's file with the status it had before it was read and its digest."""
        from safetensors.numpy import save_file

        now = time.time_ns()
        names, status, digests = [], [], []
        for split_scan in result.splits.values():
            for relative, seen, digest in zip(split_scan.image_paths, split_scan.image_status,
                                              split_scan.image_digests, strict=True):
                if seen is None or now - max(_STATUS.unpack(seen)[3:]) < self.RACY_NS:
                    continue
                names.append(relative.encode("utf-8", "surrogateescape"))
                status.append(seen)
                digests.append(digest)
        with atomic_path(self.path) as tmp:
            save_file({"paths": np.frombuffer(b"\0".join(names), dtype=np.uint8).copy(),
                       "status": np.frombuffer(b"".join(status), dtype=np.uint8).reshape(-1, _STATUS.size),
                       "sha256": np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32)},
                      str(tmp), metadata={STATE_FORMAT: self.root})


class _Writers:
    """``scan``'s sink for a prepare: each split's :class:`ShardWriter`; a reused image's rows come from
    the previous cache (linked with its whole shard when they can be). A split, once scanned, is finished
    by ``finish(split, result)`` on ``finisher``'s thread; ``finished`` holds those tasks, in order. A
    finish that failed is raised here at the next split's start or end, or within ``CHECK_EVERY`` images
    of the next split: the scan stops then, not after decoding the rest of the dataset."""

    CHECK_EVERY = 1024

    def __init__(self, writers: dict[str, ShardWriter], previous: Previous,
                 finish: Callable[[str, SplitScan], None], finisher: ThreadPoolExecutor):
        self.writers, self.previous, self.finish, self.finisher = writers, previous, finish, finisher
        self.finished: list[Future] = []
        self._added = 0

    def expect(self, split: str, count: int) -> None:
        self.raise_failed()
        self.writers[split].expect(count)

    def add(self, split: str, array, digest: bytes | None) -> None:
        if array is None:
            self.writers[split].add_reused(*self.previous.where(digest))
        else:
            self.writers[split].add(array)
        self._added += 1
        if self._added % self.CHECK_EVERY == 0:
            self.raise_failed()

    def done(self, split: str, result: SplitScan) -> None:
        self.raise_failed()
        self.finished.append(self.finisher.submit(self.finish, split, result))

    def raise_failed(self) -> None:
        """The error of a finish that failed, if one has (without waiting for those still running)."""
        for future in self.finished:
            if future.done() and future.exception() is not None:
                future.result()


def run(params: dict, data: str | Path, out: str | Path) -> dict:
    logger = log.setup("prepare")
    data, out = Path(data), Path(out)
    image_size = models.image_size_of(params["model"]["name"], params["model"]["pretrained"])
    shard_size = params["prepare"]["shard_size"]
    workers = resolve_workers(params["prepare"]["workers"])
    logger.info("scanning %s (images padded to square, resized to %d px) on %d process(es)", data, image_size,
                workers)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*SPLITS, PREPARED_VALIDATION_REPORT, VOCABULARY):   # what a killed run left (one writer: us)
        remove_stale_temporaries(out, name)
    decoder = fingerprint(image_size)
    previous = Previous(out, decoder, logger)
    remove_stale_temporaries(out.parent, state_path(out).name)
    state = FileState(state_path(out), data, logger)
    if len(previous):
        logger.info("%d image(s) of the previous cache can be reused (same file bytes, same decoder)", len(previous))

    def finish(split: str, split_scan: SplitScan) -> None:
        """A scanned split's last shard and index, its reuse keys and its manifest."""
        writers[split].close()
        write_sources(staged[split], split_scan, decoder)
        manifest = (_test_manifest(split_scan, image_size) if split == "test"
                    else _labelled_manifest(split, split_scan, image_size))
        write_json_streamed(staged[split] / MANIFEST, manifest)

    with contextlib.ExitStack() as stack:
        # each split's new folder, swapped in for the old one when the stack closes without an error
        staged = {split: stack.enter_context(atomic_dir(out / split)) for split in SPLITS}
        writers = {split: stack.enter_context(ShardWriter(staged[split], image_size, shard_size)) for split in SPLITS}
        # each split is finished on a thread while the next one decodes (its manifest is Python work the
        # decoding processes would otherwise wait for at the end); left on an error: the thread's current
        # split finishes, and what was not started is dropped, before the writers and folders go
        finisher = ThreadPoolExecutor(1, thread_name_prefix="prepare-finish")
        stack.callback(finisher.shutdown, wait=True, cancel_futures=True)
        sink = _Writers(writers, previous, finish, finisher)
        result = scan(data, image_size=image_size, sink=sink, workers=workers, known=previous.sizes, state=state,
                      progress=lambda it, n, d: log.progress(it, n, d, logger))
        for future in sink.finished:
            future.result()
        enforce(result, params["data"]["on_error"], out / PREPARED_VALIDATION_REPORT)
    write_json(out / VOCABULARY, result.vocabulary.as_dict())
    state.record(result)
    counts = {split: {k: v for k, v in s.items() if k in ("lines", "kept", "quarantined", "images", "queries")}
              for split, s in result.report["splits"].items()}
    reused = sum(s.reused for s in result.splits.values())
    images = sum(len(s.image_paths) for s in result.splits.values())
    logger.info("prepared %s; %d problem(s) quarantined; %d image(s) decoded, %d reused from the previous cache "
                "(%d file(s) not read: unchanged since they were hashed)", counts, result.report["problems"],
                images - reused, reused, state.unread)
    return {"out": str(out), "counts": counts, "problems": result.report["problems"],
            "decoded": images - reused, "reused": reused, "unread": state.unread}
