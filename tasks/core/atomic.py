"""Atomic output: every file is written to a temporary name beside its target, then renamed.

A crash never leaves a half-written file under the final name, so no later step can read one.
A folder (a checkpoint) is swapped in whole: on Linux in one step (``renameat2`` with
``RENAME_EXCHANGE``), elsewhere by two renames. A write that fails for want of space, quota or
permission is a :class:`~tasks.errors.TrafficlipError` naming the target and saying that its previous
version is unchanged; the temporary is removed. Outputs get the permissions of a plain ``open()``
(0666 less the umask), not the 0600 of a temporary file, so another user (a container, the Airflow
worker) can read them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from json.encoder import encode_basestring
from pathlib import Path
from typing import Iterator

# errors of the file system, not of the program: reported as one line, the previous output kept
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EIO}
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")     # how Rust libraries (safetensors) report them


def _umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_errno(exc: BaseException) -> int | None:
    """The errno of a file-system write failure (an OSError, or a library error quoting one), else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and not isinstance(exc, OSError):
        match = _OS_ERROR_IN_TEXT.search(str(exc))
        code = int(match.group(1)) if match else None
    return code if code in WRITE_ERRORS else None


def _raise_write_failed(target: Path, exc: Exception, existed: bool):
    """Re-raise ``exc`` as one line naming ``target`` if it is a file-system write failure; else as it is."""
    code = write_errno(exc)
    if code is None:
        raise exc
    from tasks.core.errors import UserError
    kept = "its previous version is unchanged" if existed else "nothing was written under that name"
    raise UserError(f"{target}: cannot write it: {os.strerror(code)} (errno {errno.errorcode.get(code, code)}); "
                          f"{kept}") from None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        _raise_write_failed(target, exc, existed)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, target)
        except Exception as exc:
            _raise_write_failed(target, exc, existed)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json(target: str | Path, obj) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


class StreamedList:
    """A list made as it is written: ``make()`` yields its items (see :func:`write_json_streamed`)."""

    def __init__(self, make, count: int):
        self._make, self._count = make, count

    def __iter__(self):
        return iter(self._make())

    def __len__(self) -> int:
        return self._count


_SCALARS = frozenset({str, int, float, bool, type(None)})
_STR = frozenset({str})
_BATCH = 1024       # flat dicts of a streamed list encoded in one call of the C encoder


def _flat_dict(value) -> bool:
    """A non-empty dict of str keys and scalar values: one call of the C encoder writes it as the
    indented encoder does (``_flat_encoder``)."""
    return (type(value) is dict and bool(value) and _SCALARS.issuperset(map(type, value.values()))
            and _STR.issuperset(map(type, value)))


def _flat(value) -> bool:
    """A flat dict (``_flat_dict``) or a non-empty list of scalars."""
    if type(value) is list:
        return bool(value) and _SCALARS.issuperset(map(type, value))
    return _flat_dict(value)


@functools.lru_cache(maxsize=None)
def _flat_encoder(level: int):
    """json's C encoder (it is used when there is no ``indent``) with an item separator that puts each
    item of a flat container at ``level`` on its own indented line: such a container's text, between
    its brackets, is exactly what the indented encoder writes there."""
    return json.JSONEncoder(ensure_ascii=False, separators=(",\n" + "  " * (level + 1), ": ")).encode


def _json_text(value, level: int) -> str:
    """``json.dumps(value, indent=2, ensure_ascii=False)``'s text for ``value`` at nesting ``level``,
    the same bytes, built by joining strings: the json module encodes with ``indent`` in Python, a
    generator step and a string per token (millions for a manifest of 100,000 images, all held by
    ``json.dumps`` until it joins them). A non-empty dict or list of plain scalars (a manifest's entry
    for an image or a pair) is encoded in one call of the C encoder (``_flat_encoder``)."""
    if _flat(value):
        text = _flat_encoder(level)(value)         # "{" item ",\n<indent>" item ... "}"
        return text[0] + "\n" + "  " * (level + 1) + text[1:-1] + "\n" + "  " * level + text[-1]
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return json.dumps(value)
    inner = "\n" + "  " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"keys must be str here, got {key!r}")
        items = (f"{encode_basestring(k)}: {_json_text(v, level + 1)}" for k, v in value.items())
        return "{" + inner + ("," + inner).join(items) + "\n" + "  " * level + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + inner + ("," + inner).join(_json_text(v, level + 1) for v in value) + "\n" + "  " * level + "]"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _flat_dicts_text(dicts: list[dict], level: int) -> str:
    """The indented text of flat dicts (``_flat_dict``) at ``level``, as a list's items (joined by the list's
    separator), from one call of the C encoder: it writes ``[{a,S b},S {c,S d}]`` (S: the item separator
    of ``level``, with its newline); the indented encoder writes each dict's items after a newline, and
    the dicts apart. Only a dict's end and the next one's start are ``},S {``: an encoded string holds no
    newline (it is escaped), and no scalar ends with a brace."""
    inner, outer = "\n" + "  " * (level + 1), "\n" + "  " * level
    text = _flat_encoder(level)(dicts)
    return "{" + inner + text[2:-2].replace("}," + inner + "{", outer + "}," + outer + "{" + inner) + outer + "}"


def _json_chunks(value, level: int = 0) -> Iterator[str]:
    """The text of ``value`` in pieces: the top-level dict value by value, and a list (or
    :class:`StreamedList`) among its values item by item."""
    inner = "\n" + "  " * (level + 1)
    if isinstance(value, (StreamedList, list, tuple)) and level == 1:
        if not len(value):
            yield "[]"
            return
        separator = "[" + inner
        batch: list[dict] = []      # consecutive flat dicts (a manifest's entries): encoded together
        for item in value:
            if _flat_dict(item):
                batch.append(item)
                if len(batch) == _BATCH:
                    yield separator + _flat_dicts_text(batch, level + 1)
                    separator, batch = "," + inner, []
                continue
            if batch:
                yield separator + _flat_dicts_text(batch, level + 1)
                separator, batch = "," + inner, []
            yield separator
            yield _json_text(item, level + 1)
            separator = "," + inner
        if batch:
            yield separator + _flat_dicts_text(batch, level + 1)
        yield "\n" + "  " * level + "]"
    elif isinstance(value, dict) and value and level == 0:
        separator = "{" + inner
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"keys must be str here, got {key!r}")
            yield separator + encode_basestring(key) + ": "
            yield from _json_chunks(item, level + 1)
            separator = "," + inner
        yield "\n}"
    else:
        yield _json_text(value, level)


def write_json_streamed(target: str | Path, obj) -> Path:
    """Byte-for-byte :func:`write_json` (atomically, the same indent and escaping) for a large document:
    the text is written as it is made, item by item of its top-level lists, never held whole, and
    several times faster. A :class:`StreamedList` value is generated as it is written."""
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for chunk in _json_chunks(obj):
            handle.write(chunk)
        handle.write("\n")
    return Path(target)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; swap it in for ``target`` if the block succeeds.

    Readers see the old folder or the new one, complete: the two are exchanged in one step where the
    system can (Linux); elsewhere the old folder is moved aside first and removed only after the new
    one is in place.
    """
    target = Path(target)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        _raise_write_failed(target, exc, existed)
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())
            for item in tmp.rglob("*"):
                if item.is_file():
                    with open(item, "rb") as handle:
                        os.fsync(handle.fileno())
            if not target.exists():
                os.replace(tmp, target)
            elif not _exchange(tmp, target):
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            # after an exchange, tmp holds the old folder: removed below
        except Exception as exc:
            _raise_write_failed(target, exc, existed)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path, name_glob: str = "*") -> list[str]:
    """Remove the temporaries that writers killed mid-way left in ``folder`` (``.NAME.*.tmp`` and
    ``.NAME.old-PID``) for names matching ``name_glob``. Only for a folder with one writer (a training
    run's output folder): another writer's temporary would be removed under it."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for pattern in (f".{name_glob}.*.tmp", f".{name_glob}.old-*"):
        for item in folder.glob(pattern):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed.append(item.name)
    return sorted(removed)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path, produced_by: str = ""):
    """Read a JSON file another step wrote; a missing or broken one is a clear TrafficlipError."""
    from tasks.core.errors import UserError
    path = Path(path)
    hint = f"; run `{produced_by}` first" if produced_by else ""
    if not path.is_file():
        raise UserError(f"{path}: not found{hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}){hint}") from None
