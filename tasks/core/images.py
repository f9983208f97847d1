"""Images for every step: the loader (tasks/core/decode.py), model input, and the decoded-image cache.

Decoding, padding to a square and resizing live in tasks/core/decode.py (no torch, so that `prepare`'s
pool of decoding processes starts light); they are importable from here as ever.

Decoded images are cached once per prepared dataset (``data/prepared/{train,val,test}/``, a DVC output)
as uint8 safetensors shards, so training never decodes a JPEG twice. The format is safetensors' own:
an 8-byte little-endian header length, a JSON header (one tensor, ``images``: dtype ``U8``, shape
``[n, S, S, 3]``, ``data_offsets``), then the rows, one image of S*S*3 bytes after another. Both sides
stream:

- :class:`ShardWriter` appends each image to the open shard's temporary file as it comes and renames
  the shard into place when it fills (the index, ``images.json``, last), so writing holds no image
  in memory; the files are byte-for-byte what ``safetensors.torch.save_file`` writes. Rows reused
  from a previous cache (``add_reused``) that make up a whole shard of it, in order, are that
  shard's file, linked instead of rewritten.
- :class:`ImageCache` reads only the rows asked for, with positional reads (``os.preadv``) from each
  shard: nothing is kept between calls but the shards' headers, so a process's resident memory does
  not grow with the dataset, and every process reading the cache (torchrun's ranks, evaluation) shares
  one copy of it in the operating system's page cache. The headers are checked before any read (and
  nothing is ever unpickled): a truncated or foreign shard is a UserError naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
from pathlib import Path
from typing import Generator, NamedTuple, Sequence

import numpy as np
import torch

from tasks.core.atomic import atomic_path, read_json, write_json
from tasks.core.decode import (  # noqa: F401  (the loader's names, importable from here as ever)
    MAX_PADDED_SIDE,
    MAX_PIXELS,
    load_image,
    pad_to_square,
    prepare_image,
)
from tasks.core.errors import UserError

SHARD_NAME = "images-{:05d}.safetensors"
TENSOR = "images"               # the one tensor of a shard
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a header
_COPY_BLOCK = 1 << 22           # bytes moved at once when a last, short shard's rows move up


def to_model_input(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B,H,W,3] -> normalised float [B,3,H,W]."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


# ---------------------------------------------------------------------------------------------
# The shard format
# ---------------------------------------------------------------------------------------------

def shard_header(rows: int, size: int) -> bytes:
    """The first bytes of a shard of ``rows`` images of ``size`` px: exactly what safetensors writes
    (length, compact JSON, spaces up to a multiple of 8 bytes)."""
    text = json.dumps({TENSOR: {"dtype": "U8", "shape": [rows, size, size, 3],
                                "data_offsets": [0, rows * size * size * 3]}}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _bad_shard(path: Path, reason: str) -> UserError:
    return UserError(f"{path}: not a readable image cache shard ({' '.join(reason.split())[:200]}); "
                     "rerun `trafficlip prepare`")


def read_shard_layout(path: Path, rows: int, size: int) -> int:
    """Check a shard's header against what the index says it holds (``rows`` images of ``size`` px) and
    the file's length; return where its rows start. Anything else is a UserError naming the file."""
    try:
        with open(path, "rb") as handle:
            length = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                raise _bad_shard(path, f"{length} bytes: shorter than a safetensors header")
            header_bytes = struct.unpack("<Q", head)[0]
            if header_bytes > min(MAX_HEADER_BYTES, length - 8):
                raise _bad_shard(path, f"a header of {header_bytes} bytes in a file of {length}: not safetensors, "
                                       "or truncated")
            header = json.loads(handle.read(header_bytes).decode("utf-8"))
    except FileNotFoundError:
        raise _bad_shard(path, "file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_shard(path, f"its header is not JSON: {exc}") from None
    except OSError as exc:
        raise _bad_shard(path, f"{type(exc).__name__}: {exc}") from None
    row_bytes = size * size * 3
    expected = {"dtype": "U8", "shape": [rows, size, size, 3], "data_offsets": [0, rows * row_bytes]}
    entry = header.get(TENSOR) if isinstance(header, dict) else None
    if not isinstance(entry, dict) or set(header) - {TENSOR, "__metadata__"}:
        names = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise _bad_shard(path, f"holds {names}, not one tensor {TENSOR!r}")
    for field, value in expected.items():
        if entry.get(field) != value:
            raise _bad_shard(path, f"{TENSOR} {field} is {entry.get(field)!r}, the index says {value!r}")
    start = 8 + header_bytes
    if length != start + rows * row_bytes:
        raise _bad_shard(path, f"{length} bytes, expected {start + rows * row_bytes} (truncated or padded)")
    return start


def _read_into(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    """Fill ``buffer`` from ``offset`` of an open file (positional: no shared file position)."""
    done = 0
    while done < len(buffer):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [buffer[done:]], offset + done)
        else:  # pragma: no cover (Windows)
            os.lseek(fd, offset + done, os.SEEK_SET)
            got = os.readv(fd, [buffer[done:]])
        if got <= 0:
            raise _bad_shard(path, f"ends at byte {offset + done}, before the rows its header promises "
                                   "(changed since it was opened?)")
        done += got


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

class ImageCache:
    """Decoded, padded, resized images of one split, in uint8 safetensors shards.

    ``cache[indices]`` returns uint8 [len(indices), S, S, 3] (any order, repeats allowed). Each call
    reads just those rows from the shards (a run of consecutive indices in one read) into a new tensor;
    nothing is kept between calls but the shards' headers, checked when the cache is opened.
    """

    INDEX = "images.json"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_file = self.folder / self.INDEX
        index = read_json(index_file, "trafficlip prepare")
        try:
            self.size: int = int(index["image_size"])
            self.count: int = int(index["count"])
            self.shard_size: int = int(index["shard_size"])
            self.shards: list[str] = [str(name) for name in index["shards"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{index_file}: not an image cache index ({type(exc).__name__}: {exc}); "
                            "rerun `trafficlip prepare`") from None
        wanted = max(1, -(-self.count // self.shard_size)) if self.shard_size > 0 else -1
        if self.size <= 0 or self.count < 0 or len(self.shards) != wanted \
                or any(Path(name).name != name or name in ("", ".", "..") for name in self.shards):
            raise UserError(f"{index_file}: an inconsistent image cache index ({self.count} images of "
                            f"{self.size} px in shards of {self.shard_size}, {len(self.shards)} shard names); "
                            "rerun `trafficlip prepare`")
        self.row_bytes = self.size * self.size * 3
        self._starts = [read_shard_layout(self.folder / name, self.rows_in(number), self.size)
                        for number, name in enumerate(self.shards)]

    def __len__(self) -> int:
        return self.count

    def rows_in(self, number: int) -> int:
        """How many images shard ``number`` holds (``shard_size``, but fewer in the last)."""
        return max(0, min(self.shard_size, self.count - number * self.shard_size))

    def locate(self, index: int) -> tuple[int, int]:
        """The number of the shard holding image ``index``, and the byte offset of its row in that file."""
        number = index // self.shard_size
        return number, self._starts[number] + (index - number * self.shard_size) * self.row_bytes

    def __getitem__(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).numpy()
        if idx.size == 0:
            return torch.empty((0, self.size, self.size, 3), dtype=torch.uint8)
        if int(idx.min()) < 0 or int(idx.max()) >= self.count:
            raise IndexError(f"image index out of range 0..{self.count - 1}")
        unique, inverse = np.unique(idx, return_inverse=True)
        rows = np.empty((len(unique), self.size, self.size, 3), dtype=np.uint8)
        flat = memoryview(rows).cast("B")
        shard_of = unique // self.shard_size
        # runs of consecutive indices inside one shard: one read each
        breaks = np.flatnonzero((np.diff(unique) != 1) | (np.diff(shard_of) != 0)) + 1
        starts, ends = np.concatenate(([0], breaks)), np.concatenate((breaks, [len(unique)]))
        fds: dict[int, int] = {}
        try:
            for a, b in zip(starts.tolist(), ends.tolist()):
                number, offset = self.locate(int(unique[a]))
                if number not in fds:
                    fds[number] = self._open(number)
                _read_into(fds[number], flat[a * self.row_bytes:b * self.row_bytes], offset,
                           self.folder / self.shards[number])
        finally:
            for fd in fds.values():
                os.close(fd)
        if len(unique) != len(idx) or not np.array_equal(unique, idx):
            rows = rows[inverse.reshape(-1)]
        return torch.from_numpy(rows)

    def _open(self, number: int) -> int:
        path = self.folder / self.shards[number]
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise _bad_shard(path, f"{type(exc).__name__}: {exc}") from None

    def all(self) -> torch.Tensor:
        """Every image of the split in one tensor: for small splits (tests, benchmarks) only; the steps
        read batches."""
        return self[torch.arange(self.count)]


class CacheSelection:
    """Some images of a cache (or of a uint8 tensor), indexable like the cache itself."""

    def __init__(self, images, indices: Sequence[int]):
        self.images = images
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, positions) -> torch.Tensor:
        return self.images[self.indices[torch.as_tensor(positions, dtype=torch.long)]]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

class ShardWriter:
    """Writes one split's cache as the images come: ``add(array)`` for each, in order, then ``close()``.

    Each image goes straight to the open shard's temporary file (after room for the header of a full
    shard); a full shard gets its header and is renamed into place (tasks/core/atomic.py), so a shard
    file under its final name is always complete. ``close`` finishes the last shard (its rows move up
    when its shorter header needs fewer bytes) and writes the index, ``images.json``, last. Memory: one
    image at a time. Used as a context manager, an exception removes the open shard's temporary file.

    ``expect(n)``, before the first image: at most ``n`` images will come (`prepare` knows how many
    files a split names; a bad one only makes it fewer). The last, short shard then leaves room for
    its own header, not a full shard's, so its rows need not move up (a pass over up to a whole shard:
    400 MB at 224 px) unless images were dropped.
    """

    def __init__(self, folder: str | Path, size: int, shard_size: int):
        if size <= 0 or shard_size <= 0:
            raise ValueError(f"size and shard_size must be positive, got {size} and {shard_size}")
        self.folder = Path(folder)
        self.size, self.shard_size = size, shard_size
        self.row_bytes = size * size * 3
        self.reserved = len(shard_header(shard_size, size))   # a full shard's header, the longest
        self.count = 0
        self.expected: int | None = None        # at most this many images (expect), or not known
        self.shards: list[str] = []
        self._open: Generator | None = None     # the open shard (see _shard), fed one row at a time
        self._refs: list[tuple[ImageCache, int]] = []   # reused rows not written yet (see add_reused)
        self._finishing: _Finishing | None = None       # the last full shard, being finished (_finish)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self.abort()

    def expect(self, count: int) -> None:
        """At most ``count`` images will be added (in all, this one's ``add`` and ``add_reused``)."""
        if self.count or self._open is not None or self._refs or self.shards:
            raise RuntimeError("expect() comes before the first image")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.expected = count

    def add(self, array: np.ndarray) -> None:
        if array.shape != (self.size, self.size, 3) or array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [{self.size}, {self.size}, 3] image, got {array.dtype} "
                             f"{list(array.shape)}")
        self._write_refs()
        self._append(array)

    def add_reused(self, cache: ImageCache, row: int) -> None:
        """The next image is row ``row`` of another cache (a previous prepare's). The same bytes as
        ``add(cache[[row]][0])``, but when a whole shard of this cache is a whole shard of that one, row
        for row, the file is linked (or copied) instead of rewritten: an unchanged shard costs nothing."""
        if self._continues_refs(cache, row):
            self._refs.append((cache, row))
            if len(self._refs) == self.shard_size:
                self._link_refs()
            return
        self._write_refs()
        self._append(cache[[row]][0].numpy())

    def close(self) -> Path:
        """Finish the last shard (an empty one for an empty split, as safetensors would write it) and
        write the index."""
        if self._refs:
            cache, first = self._refs[0]
            if len(self._refs) == cache.rows_in(first // self.shard_size):   # the whole (last) shard
                self._link_refs()
            else:
                self._write_refs()
        if self._open is not None or not self.shards:
            if self._open is None:
                self._start()
            self._finish()
        self._wait_finishing()
        write_json(self.folder / ImageCache.INDEX, {"image_size": self.size, "count": self.count,
                                                    "shard_size": self.shard_size, "shards": self.shards})
        return self.folder

    def abort(self) -> None:
        """Drop the open shard (its temporary file is removed; finished shards stay)."""
        shard, self._open, self._refs = self._open, None, []
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            finishing.thread.join()        # its own error, if any, is not the one being handled
        if shard is not None:
            shard.close()

    def _append(self, array: np.ndarray) -> None:
        if self._open is None:
            self._start()
        self._open.send(np.ascontiguousarray(array))
        self._count_rows(1)

    def _count_rows(self, rows: int) -> None:
        self.count += rows
        if self.expected is not None and self.count > self.expected:
            raise RuntimeError(f"{self.folder}: {self.count} images, more than the {self.expected} expected")
        if self.count % self.shard_size == 0:
            self._finish()

    def _continues_refs(self, cache: ImageCache, row: int) -> bool:
        """Whether row ``row`` of ``cache`` extends the reused rows that could still be a whole shard of it:
        a new shard begins with a shard's first row, and each next row is the next one of the same cache,
        whose images and shards have this writer's size."""
        if self._open is not None or cache.size != self.size or cache.shard_size != self.shard_size:
            return False
        if not self._refs:
            return row % self.shard_size == 0
        first_cache, first = self._refs[0]
        return cache is first_cache and row == first + len(self._refs)

    def _write_refs(self) -> None:
        """Write the pending reused rows (consecutive rows of one cache: ``_continues_refs``) as one run
        of bytes of their shard file."""
        refs, self._refs = self._refs, []
        if not refs:
            return
        cache, first = refs[0]
        # they begin a new shard here and come from one shard there (_continues_refs), consecutive: one
        # run of bytes of that file, copied by the kernel (no pass through this process's memory)
        number, offset = cache.locate(first)
        self._start()
        self._open.send(_Run(cache.folder / cache.shards[number], offset, len(refs) * self.row_bytes))
        self._count_rows(len(refs))

    def _link_refs(self) -> None:
        """The pending rows are a whole shard of their cache: that file, hard-linked (copied where links
        are refused), is this shard byte for byte (the same rows, so the same header)."""
        cache, first = self._refs[0]
        source = cache.folder / cache.shards[first // self.shard_size]
        read_shard_layout(source, len(self._refs), self.size)
        name = SHARD_NAME.format(len(self.shards))
        with atomic_path(self.folder / name) as tmp:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:     # another file system, or links not allowed
                shutil.copyfile(source, tmp)
        self.shards.append(name)
        self.count += len(self._refs)
        self._refs = []

    def _start(self) -> None:
        number = len(self.shards)
        name = SHARD_NAME.format(number)
        reserved = self.reserved
        if self.expected is not None and self.expected - number * self.shard_size < self.shard_size:
            # the last shard: room for its own header (a header never gets shorter with more rows)
            reserved = len(shard_header(max(0, self.expected - number * self.shard_size), self.size))
        self._open = self._shard(self.folder / name, reserved)
        next(self._open)
        self.shards.append(name)

    def _finish(self) -> None:
        """Finish the open shard (header, then ``fsync`` and rename: tasks/core/atomic.py) on a thread,
        while the next one is written: waiting for the disk to take a whole shard (617 MB at 224 px)
        held the writer, and with it the decoding processes, which have only a few images of room
        ahead of it. One shard finishes at a time; ``close`` waits for the last."""
        shard, self._open = self._open, None
        self._wait_finishing()
        self._finishing = _Finishing(shard)

    def _wait_finishing(self) -> None:
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            finishing.wait()

    def _shard(self, target: Path, reserved: int) -> Generator[None, np.ndarray | _Run | None, None]:
        """One shard file, open while its rows come: ``send(row)`` appends one, ``send(_Run(...))`` the
        rows of a run of another shard's bytes, ``send(None)`` writes the header and renames the file
        into place; ``close()`` (an error) removes the temporary file. ``reserved``: the bytes left for
        the header before the first row."""
        with atomic_path(target) as tmp, open(tmp, "r+b") as handle:
            handle.seek(reserved)
            rows = 0
            while (row := (yield)) is not None:
                if isinstance(row, _Run):
                    handle.flush()
                    _copy_run(row, handle.fileno(), handle.tell())
                    handle.seek(row.length, os.SEEK_CUR)
                    rows += row.length // self.row_bytes
                    continue
                handle.write(memoryview(row).cast("B"))
                rows += 1
            header = shard_header(rows, self.size)
            if len(header) > reserved:                # pragma: no cover (expect() bounds the rows)
                raise AssertionError(f"{target}: a header of {len(header)} bytes in {reserved}")
            if len(header) < reserved:        # a short last shard: its rows move up behind its header
                handle.flush()
                fd = handle.fileno()
                _copy_blocks(fd, fd, reserved, len(header), rows * self.row_bytes)
                os.ftruncate(fd, len(header) + rows * self.row_bytes)
            handle.seek(0)
            handle.write(header)


class _Finishing:
    """A shard's generator sent its last ``None`` on a thread; ``wait`` raises what it raised."""

    def __init__(self, shard: Generator):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(shard,), name="shard-finish", daemon=True)
        self.thread.start()

    def _run(self, shard: Generator) -> None:
        try:
            shard.send(None)
        except StopIteration:
            return
        except BaseException as exc:     # noqa: BLE001 (handed to the writer's thread by wait)
            self.error = exc
            return
        self.error = RuntimeError("a shard did not finish")   # pragma: no cover

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


class _Run(NamedTuple):
    """``length`` bytes of rows at ``offset`` of the shard file ``path``."""
    path: Path
    offset: int
    length: int


def _copy_run(run: _Run, fd: int, position: int) -> None:
    """Copy ``run`` into the open file ``fd`` at ``position``: ``os.copy_file_range`` (the kernel copies,
    or shares the blocks where the file system can), else positional reads and writes of a block at a
    time. The source must still hold those bytes (it is a shard a ``read_shard_layout`` checked)."""
    with open(run.path, "rb") as source:
        src, done = source.fileno(), 0
        copy_range = getattr(os, "copy_file_range", None)
        while done < run.length:
            got = 0
            if copy_range is not None:
                try:
                    got = copy_range(src, fd, run.length - done, run.offset + done, position + done)
                except OSError:      # not across these file systems: copy it here
                    copy_range = None
                    continue
            else:
                got = _copy_blocks(src, fd, run.offset + done, position + done, run.length - done)
            if got <= 0:
                raise _bad_shard(run.path, f"ends before byte {run.offset + run.length} (changed while it "
                                           "was being reused?)")
            done += got


def _copy_blocks(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> int:
    """Copy ``length`` bytes from ``src_offset`` of the open file ``src`` to ``dst_offset`` of ``dst``, a
    block at a time with positional reads and writes; ``src`` may be ``dst`` with the bytes moving
    towards its start (each block is read before anything is written over it). Returns the bytes
    copied: fewer than ``length`` where the source ends first."""
    done = 0
    while done < length:
        block = os.pread(src, min(_COPY_BLOCK, length - done), src_offset + done)
        if not block:
            break
        done += os.pwrite(dst, block, dst_offset + done)
    return done


def write_cache(folder: str | Path, arrays, size: int, shard_size: int) -> Path:
    """Write decoded images (any iterable of uint8 [S, S, 3]) as shards plus an index; each file
    atomically, the index last."""
    with ShardWriter(folder, size, shard_size) as writer:
        for array in arrays:
            writer.add(np.asarray(array))
        return writer.close()
