"""The challenge's submission file and the organisers' ground-truth format, and scoring one against the other.

Submission: ``{"results": [{"text": "...", "image_names": ["a.jpg", ... 10 names]}, ...]}`` with the
results in test_text.txt order. Ground truth: one line per query, ``text$img1$img2$...``.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Sequence

from tasks.core import atomic
from tasks.core.errors import InputError, UserError
from tasks.core.metrics import organisers_ap_at_k, trec_ap_at_k


def _check_entry(path, index: int, text, names, k: int) -> None:
    where = f"results[{index}]"
    if not isinstance(text, str):
        raise InputError(path, f"text is {type(text).__name__}", field=f"{where}.text", expected="a string")
    if not text.strip():
        raise InputError(path, "text is empty", field=f"{where}.text", expected="a non-empty string")
    if not isinstance(names, list):
        raise InputError(path, f"image_names is {type(names).__name__}", field=f"{where}.image_names",
                         expected=f"a list of exactly {k} image names")
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        field = f"{where}.image_names[{j}]"
        if not isinstance(name, str):
            raise InputError(path, f"image name is {type(name).__name__} {name!r}", field=field,
                             expected="a string")
        if not name.strip():
            raise InputError(path, "image name is empty", field=field, expected="a non-empty file name")
        if name in seen:
            raise InputError(path, f"image name {name!r} repeats image_names[{seen[name]}]", field=field,
                             expected=f"{k} distinct image names")
        seen[name] = j
    if len(names) != k:
        raise InputError(path, f"{len(names)} image names", field=f"{where}.image_names",
                         expected=f"exactly {k}")


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    return int(k)


def write_submission(path: str | Path, results: Sequence[tuple[str, Sequence[str]]], k: int = 10) -> Path:
    """Write the submission JSON atomically; every result must have exactly k distinct image names."""
    k = _check_k(k)
    entries = []
    for i, item in enumerate(results):
        try:
            text, names = item
        except (TypeError, ValueError):
            raise InputError(path, f"result is {type(item).__name__}", field=f"results[{i}]",
                             expected="a (text, image names) pair") from None
        names = list(names) if isinstance(names, (list, tuple)) else names
        _check_entry(path, i, text, names, k)
        entries.append({"text": text, "image_names": names})
    return atomic.write_json(path, {"results": entries})


def _decode(path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(path, f"byte 0x{data[exc.start]:02x} is not valid UTF-8", line=line,
                         expected="UTF-8 text") from None


def _read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found", expected="an existing file") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder", expected="a file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None


def read_submission(path: str | Path, k: int = 10) -> list[tuple[str, list[str]]]:
    """Read and validate a submission; an InputError names the JSON location of the first problem."""
    k = _check_k(k)
    text = _decode(path, _read_bytes(path))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg} at column {exc.colno}", line=exc.lineno,
                         expected="a JSON object") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply", expected="a JSON object") from None
    if not isinstance(doc, dict):
        raise InputError(path, f"top level is a JSON {type(doc).__name__}", field="(top level)",
                         expected='a JSON object {"results": [...]}')
    if "results" not in doc:
        raise InputError(path, "missing", field="results", expected="a list of {text, image_names} objects")
    results = doc["results"]
    if not isinstance(results, list):
        raise InputError(path, f"is a JSON {type(results).__name__}", field="results",
                         expected="a list of {text, image_names} objects")
    out: list[tuple[str, list[str]]] = []
    for i, entry in enumerate(results):
        if not isinstance(entry, dict):
            raise InputError(path, f"is a JSON {type(entry).__name__}", field=f"results[{i}]",
                             expected='an object {"text": ..., "image_names": [...]}')
        for key in ("text", "image_names"):
            if key not in entry:
                raise InputError(path, "missing", field=f"results[{i}].{key}",
                                 expected="a string" if key == "text" else f"a list of exactly {k} image names")
        _check_entry(path, i, entry["text"], entry["image_names"], k)
        out.append((entry["text"], list(entry["image_names"])))
    return out


def read_ground_truth(path: str | Path) -> list[tuple[str, list[str]]]:
    """Read the organisers' ground truth: ``text$img1$img2$...`` per line (UTF-8, BOM and CRLF accepted).

    A line with a text and no image name (``text`` or ``text$``) is a query with no relevant image.
    Blank lines at the end are ignored; any other problem is an InputError with its line number.
    """
    data = _read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw_lines = data.split(b"\n")
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    if not raw_lines:
        raise InputError(path, "no ground-truth lines", expected="one line per query: text$img1$img2$...")
    out: list[tuple[str, list[str]]] = []
    for number, raw in enumerate(raw_lines, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(path, f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not valid UTF-8",
                             line=number, expected="UTF-8 text") from None
        parts = line.split("$")
        text = parts[0]
        if not text.strip():
            raise InputError(path, "empty query text", line=number, field="text",
                             expected="text$img1$img2$...")
        if parts[1:] in ([], [""]):
            # a query with nothing relevant in the gallery (`text` or `text$`): the organisers'
            # scorer counts it, with AP 0; score() reports how many there were
            out.append((text, []))
            continue
        names: list[str] = []
        seen: dict[str, int] = {}
        for j, name in enumerate(parts[1:], start=1):
            name = name.strip()
            if not name:
                raise InputError(path, f"image name {j} is empty", line=number, field="image_names",
                                 expected="non-empty names separated by single '$'")
            if name in seen:
                raise InputError(path, f"image name {j} {name!r} repeats image name {seen[name]}",
                                 line=number, field="image_names", expected="distinct image names")
            seen[name] = j
            names.append(name)
        out.append((text, names))
    return out


def score(submission_path: str | Path, ground_truth_path: str | Path, k: int = 10) -> dict:
    """Score a submission against the organisers' ground truth.

    Returns {"map_at_10" (organisers' rule), "trec_ap_at_10" (R = ground-truth images of the text),
    "queries", "queries_without_relevant"}. The submission must hold the ground truth's texts, in its
    order. A query the ground truth lists no image for scores 0 under both rules and stays in the
    mean, as the organisers' scorer counts it; "queries_without_relevant" says how many there were.
    """
    submission = read_submission(submission_path, k)
    truth = read_ground_truth(ground_truth_path)
    if len(submission) != len(truth):
        raise InputError(submission_path, f"{len(submission)} results but ground truth {ground_truth_path} "
                         f"has {len(truth)} lines", field="results",
                         expected="one result per ground-truth line, in its order")
    organisers, trec = [], []
    for i, ((text, names), (true_text, true_names)) in enumerate(zip(submission, truth)):
        if text != true_text:
            raise InputError(submission_path, f"{text!r} differs from ground truth line {i + 1} {true_text!r}",
                             field=f"results[{i}].text",
                             expected=f"the texts of {ground_truth_path} in its order")
        relevant = set(true_names)
        hits = [name in relevant for name in names[:k]]
        organisers.append(organisers_ap_at_k(hits))
        trec.append(trec_ap_at_k(hits, len(relevant)))
    n = len(truth)
    return {"map_at_10": round(sum(organisers) / n, 6), "trec_ap_at_10": round(sum(trec) / n, 6),
            "queries": n, "queries_without_relevant": sum(not names for _, names in truth)}
