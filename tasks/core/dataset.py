"""Checking a dataset in the challenge's layout: every label line kept or quarantined with its file,
line, field and reason, every image referenced decoded once (padded and resized when a size is given).

``scan`` streams: each split's images are decoded in order (on ``workers`` processes:
tasks/core/decode.py) and each prepared array goes to ``sink.add(split, array, digest)`` as it comes, never
into a list, so scanning holds the labels and each image's name and original size, not its pixels: memory
does not grow with the images' size or number. ``enforce`` applies ``data.on_error``: ``fail`` stops
(the report is written first), ``quarantine`` goes on without the bad rows. Always: input rows = kept
+ quarantined. Used by the `validate` and `prepare` steps and by the ingest DAG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

from tasks.core import labels
from tasks.core.atomic import write_json
from tasks.core.decode import Decoded, Decoder, FileState
from tasks.core.errors import InputError, UserError
from tasks.core.labels import IMAGE_EXTENSIONS, Query, Record, Vocabulary

ON_ERROR = ("fail", "quarantine")


class Sink(Protocol):
    """Where ``scan`` puts each prepared image, in each split's cache order."""

    def expect(self, split: str, count: int) -> None:
        """Before the split's first image: at most ``count`` will come (the files its labels or folder
        name; a bad one does not come)."""

    def add(self, split: str, array: np.ndarray | None, digest: bytes | None) -> None:
        """One image: uint8 [S, S, 3], and the SHA-256 of its file (None without ``known``). The array
        is None when the file's digest was known (``scan(known=...)``): the sink has that image."""

    def done(self, split: str, result: SplitScan) -> None:
        """After the split's last image, before the next split's first: what the scan found in it
        (records, image names, sizes and digests), final. The test split comes last."""


@dataclass
class SplitScan:
    records: list[Record] = field(default_factory=list)
    image_paths: list[str] = field(default_factory=list)       # unique decoded images, in first-seen order
    image_sizes: list[tuple[int, int]] = field(default_factory=list)   # original (width, height)
    image_digests: list[bytes] = field(default_factory=list)    # SHA-256 of each image's file (with known)
    image_status: list[bytes | None] = field(default_factory=list)   # each file's status (with a state)
    queries: list[Query] = field(default_factory=list)          # test split only
    reused: int = 0                                              # images whose digest was known: not decoded


@dataclass
class Scan:
    root: Path
    report: dict
    splits: dict[str, SplitScan]
    vocabulary: Vocabulary

    @property
    def ok(self) -> bool:
        return not self.report["rejected"]


def scan(root: str | Path, *, image_size: int | None = None, sink: Sink | None = None, workers: int = 1,
         progress: Callable | None = None, known: Mapping[bytes, tuple[int, int]] | None = None,
         state: FileState | None = None) -> Scan:
    """Parse labels and decode every referenced image once, on ``workers`` processes (0: every core).

    With ``image_size``, each decoded image is padded, resized and handed to ``sink`` (:class:`Sink`),
    in the order of the split's ``image_paths`` (the cache's order); nothing keeps the arrays.
    With ``known`` (SHA-256 of a file's bytes -> that image's original (width, height); may be empty),
    every file is hashed (``image_digests``) and a file whose digest is known is not decoded: its size
    comes from ``known`` and the sink gets None for the array. ``state`` (with ``known``): see
    ``Decoder``; files are named to it as ``os.path.join(root, relative path)``, and each image's status
    is kept in ``image_status``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found",
                         expected="a folder with train/, val/ and test/ in the challenge's layout")
    if sink is not None and not image_size:
        raise ValueError("a sink needs an image_size")
    rejected: list[dict] = []
    splits: dict[str, SplitScan] = {}
    summary: dict[str, dict] = {}
    with Decoder(workers, None if known is None else frozenset(known), state) as decoder:
        decoder.start(image_size)       # the workers start up while the labels are read
        for split in labels.SPLITS:
            parsed = labels.read_split(root, split)
            for error in parsed.errors:
                rejected.append({"split": split, "kind": "label", **error.as_dict()})
            result = SplitScan()
            bad_images: dict[str, dict] = {}
            decoded: set[str] = set()
            items = parsed.records
            unique = list(dict.fromkeys(record.image_path for record in items))   # first-seen order
            if sink is not None:
                sink.expect(split, len(unique))
            outcomes = decoder.map((os.path.join(root, path) for path in unique), image_size)
            for record in (progress(items, len(items), f"decode {split}") if progress else items):
                path = record.image_path
                if path in bad_images:
                    error = bad_images[path]
                elif path in decoded:
                    error = None
                else:   # the first record of this image: the next outcome is its own
                    error = _take(next(outcomes), split, path, result, sink, known)
                    if error is None:
                        decoded.add(path)
                    else:
                        bad_images[path] = error
                if error is None:
                    result.records.append(record)
                else:
                    rejected.append({"split": split, "kind": "image", **error, "file": str(parsed.file),
                                     "line": record.line, "image": path})
            by_category = {c: sum(r.category == c for r in result.records) for c in labels.CATEGORIES}
            summary[split] = {"label_file": str(parsed.file), "lines": parsed.lines, "kept": len(result.records),
                              "quarantined": parsed.lines - len(result.records), "blank_lines": parsed.blank_lines,
                              "images": len(result.image_paths), "by_category": by_category}
            splits[split] = result
            if sink is not None:
                sink.done(split, result)
        vocabulary = labels.extract_vocabulary(splits["train"].records)
        splits["test"], summary["test"] = _scan_test(root, image_size, vocabulary, rejected, progress, decoder, sink,
                                                     known)
        if sink is not None:
            sink.done("test", splits["test"])
    report = {"data": str(root), "splits": summary, "vocabulary": vocabulary.as_dict(),
              "rejected": rejected, "problems": len(rejected)}
    return Scan(root, report, splits, vocabulary)


def _take(outcome: Decoded, split: str, relative: str, result: SplitScan, sink: Sink | None,
          known: Mapping[bytes, tuple[int, int]] | None) -> dict | None:
    """Record one decoded image (its name, original size and digest; its array to the sink); its error
    if bad. A reused image (its digest known) is recorded the same way, its size from ``known``."""
    if outcome.error is not None:
        return outcome.error
    result.image_paths.append(relative)
    result.image_status.append(outcome.status)
    if outcome.reused:
        result.image_sizes.append(tuple(known[outcome.digest]))
        result.reused += 1
    else:
        result.image_sizes.append(outcome.size)
    if outcome.digest is not None:
        result.image_digests.append(outcome.digest)
    if sink is not None and (outcome.array is not None or outcome.reused):
        sink.add(split, outcome.array, outcome.digest)
    return None


def _scan_test(root: Path, image_size: int | None, vocabulary: Vocabulary, rejected: list[dict],
               progress: Callable | None, decoder: Decoder, sink: Sink | None,
               known: Mapping[bytes, tuple[int, int]] | None) -> tuple[SplitScan, dict]:
    result = SplitScan()
    text_file = root / "test" / "test_text.txt"
    image_dir = root / "test" / "test_images"
    summary = {"query_file": str(text_file), "images_dir": str(image_dir)}
    if not text_file.exists() and not image_dir.exists():
        summary.update(present=False)
        return result, summary
    if text_file.exists() and labels.outside_root(text_file, root):
        raise InputError(text_file, f"a link to {text_file.resolve()}, outside the dataset root {root}",
                         expected="the query file inside the dataset root")
    queries, errors = labels.read_queries(text_file, vocabulary)
    for error in errors:
        rejected.append({"split": "test", "kind": "query", **error.as_dict()})
    result.queries = queries
    folder = labels.Folder(image_dir, root)
    files = folder.files()
    if not image_dir.is_dir():
        rejected.append({"split": "test", "kind": "image", "file": str(image_dir), "line": None,
                         "field": "image", "reason": "test image folder not found", "expected": "test/test_images/"})
    # which files are decoded is known before decoding any: the rest are refused by name or place
    refused = {path: _refusal(path, folder) for path in files}
    if sink is not None:
        sink.expect("test", sum(r is None for r in refused.values()))
    outcomes: Iterator[Decoded] = decoder.map((p for p in files if refused[p] is None), image_size)
    quarantined = 0
    for path in (progress(files, len(files), "decode test") if progress else files):
        relative = path.relative_to(root).as_posix()
        error = refused[path] or _take(next(outcomes), "test", relative, result, sink, known)
        if error is None:
            continue
        quarantined += 1
        rejected.append({"split": "test", "kind": "image", **error, "image": relative})
    uncategorised = [{"line": q.line, "text": q.text} for q in queries if q.category is None]
    summary.update(present=True, queries=len(queries), query_lines_rejected=len(errors),
                   image_files=len(files), images=len(result.image_paths), quarantined_images=quarantined,
                   queries_by_category={c: sum(q.category == c for q in queries) for c in labels.CATEGORIES},
                   uncategorised_queries=uncategorised)
    return result, summary


def _refusal(path: Path, folder: labels.Folder) -> dict | None:
    """Why a test image file is not decoded at all (its name or where it links to), or None."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return InputError(path, "not an image file name", field="image",
                          expected="one of " + " ".join(IMAGE_EXTENSIONS)).as_dict()
    if folder.outside(path.name):
        return InputError(path, f"a link to {path.resolve()}, outside the dataset root {folder.root}", field="image",
                          expected="image files inside the dataset root").as_dict()
    return None


def enforce(scan_result: Scan, on_error: str, report_path: str | Path | None) -> None:
    """Write the report; with on_error=fail and any problem, stop with a clear error."""
    if on_error not in ON_ERROR:
        raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    scan_result.report["on_error"] = on_error
    scan_result.report["ok"] = scan_result.ok
    if report_path:
        write_json(report_path, scan_result.report)
    if on_error == "fail" and not scan_result.ok:
        first = scan_result.report["rejected"][0]
        where = f"{first['file']}:{first['line']}" if first.get("line") else first["file"]
        raise UserError(
            f"validation failed with {len(scan_result.report['rejected'])} problem(s); first: {where}: "
            f"{first.get('field') or ''} {first['reason']}"
            + (f"; full list in {report_path}" if report_path else "")
            + " (set data.on_error: quarantine to continue without them)")


