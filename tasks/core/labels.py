"""Reading the challenge's label files: ``image$attribute$text``, vehicles and pedestrians.

Every line becomes either a :class:`Record` or a :class:`~tasks.errors.InputError` naming the file,
line and field; the caller decides (params ``data.on_error``) whether an error stops the run or is
quarantined into the validation report. Nothing is dropped silently.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from tasks.core.errors import InputError
from tasks.core.vocab import COLOURS, PEDESTRIAN_BITS, PEDESTRIAN_WORDS, VEHICLE_TYPES

VEHICLE = "vehicle"
PEDESTRIAN = "pedestrian"
CATEGORIES = (VEHICLE, PEDESTRIAN)
OVERALL = "overall"
METRIC_GROUPS = (OVERALL, *CATEGORIES)   # how metrics are reported: all queries, then each category
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val")

_ARTICLES = {"a", "an", "the"}
_COLOUR_BY_WORD = {c.lower(): c for c in COLOURS} | {"gray": "grey"}
_TYPE_BY_WORD = {t.lower(): t for t in VEHICLE_TYPES}
_VECTOR_CHARS = re.compile(r"^[\d\s,.\-+]+$")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class VehicleAttributes:
    colour: str | None
    brand: str | None
    vehicle_type: str | None

    @property
    def key(self) -> str:
        """Normalised relevance key: equal keys <=> the organisers count the image as relevant."""
        parts = (self.colour or "", (self.brand or "").lower(), (self.vehicle_type or "").lower())
        return "vehicle:" + "|".join(parts)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(name for name, value in (("colour", self.colour), ("brand", self.brand),
                                              ("type", self.vehicle_type)) if not value)


@dataclass(frozen=True)
class Record:
    """One accepted label line."""
    split: str
    line: int
    image: str              # the name as written in the label file (may lack its extension)
    image_path: str         # path of the image file relative to the data root, extension included
    category: str           # "vehicle" | "pedestrian"
    attribute: str          # the raw attribute field
    key: str                # normalised relevance key
    text: str
    vehicle: VehicleAttributes | None = None
    bits: tuple[int, ...] | None = None

    @property
    def image_file(self) -> str:
        return PurePosixPath(self.image_path).name


def parse_vehicle_phrase(phrase: str) -> VehicleAttributes | None:
    """``A white Audi Sedan.`` -> colour/brand/type; any part may be missing. None if no word is left."""
    words = phrase.strip().rstrip(".").split()
    if words and words[0].lower() in _ARTICLES:
        words = words[1:]
    colour = None
    if words and words[0].lower() in _COLOUR_BY_WORD:
        colour = _COLOUR_BY_WORD[words.pop(0).lower()]
    vehicle_type = None
    if words and words[-1].lower() in _TYPE_BY_WORD:
        vehicle_type = _TYPE_BY_WORD[words.pop().lower()]
    brand = " ".join(words) or None
    if not (colour or brand or vehicle_type):
        return None
    return VehicleAttributes(colour, brand, vehicle_type)


def parse_bits(field_value: str) -> tuple[int, ...] | str:
    """A 21-bit pedestrian vector, or a string saying what is wrong with it."""
    parts = [p.strip() for p in field_value.split(",")]
    if len(parts) != PEDESTRIAN_BITS:
        return f"has {len(parts)} values"
    bad = [p for p in parts if p not in ("0", "1")]
    if bad:
        return f"has non-binary value {bad[0]!r}"
    return tuple(map(int, parts))


def pedestrian_key(bits: Iterable[int]) -> str:
    return "pedestrian:" + "".join(map(str, bits))


def bits_from_key(key: str) -> tuple[int, ...]:
    return tuple(int(c) for c in key.split(":", 1)[1])


def check_image_name(name: str, file: Path, line: int) -> None:
    """Refuse names that could escape the dataset root (``../``, absolute paths, separators)."""
    if not name:
        raise InputError(file, "image name is empty", line=line, field="image",
                         expected="a file name such as 000123.jpg")
    if (name.startswith(("/", "\\")) or _DRIVE.match(name) or "/" in name or "\\" in name
            or name in (".", "..") or "\x00" in name):
        raise InputError(file, f"image name {name!r} is a path, not a file name", line=line,
                         field="image", expected="a plain file name inside the split's image folder")


def outside_root(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, leads out of the dataset ``root``.

    A link inside the dataset to a file elsewhere (``x.jpg -> /etc/shadow``) is refused like ``../``.
    The one exception is a link into a DVC cache (``.dvc/cache/...``): what DVC's ``symlink`` cache
    type makes of every tracked file.
    """
    return _outside(path.resolve(), root.resolve())


def _outside(real: Path, real_root: Path) -> bool:
    if real.is_relative_to(real_root):
        return False
    return not any(parent.name == "cache" and parent.parent.name == ".dvc" for parent in real.parents)


class Folder:
    """An image folder, listed once (``os.scandir``): which names are files, and which lead out of the
    dataset root: what ``resolve_image`` and ``outside_root`` answer per file, without a syscall per
    path component for every image: a plain file's real path is its folder's real path and its name,
    so only the folder and the files that are links are resolved (checking each of 155,000 images with
    ``Path.resolve`` took 15 s). A missing folder lists no file."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root
        self.relative = path.relative_to(root).as_posix()     # the folder's part of a record's image_path
        self._entries: dict[str, os.DirEntry] = {}
        try:
            with os.scandir(path) as entries:
                self._entries = {entry.name: entry for entry in entries}
        except (FileNotFoundError, NotADirectoryError):
            pass
        self._real_root = root.resolve()
        # where a plain file of this folder leads: into the folder's real path
        self._outside_plain = _outside(path.resolve() / "_", self._real_root)

    def _is_file(self, name: str) -> bool:
        entry = self._entries.get(name)
        try:
            return entry is not None and entry.is_file()    # follows a link, as Path.is_file
        except OSError:
            return False

    def find(self, name: str) -> str | None:
        """The name of the file for ``name``; names may lack their extension (``090000``)."""
        for candidate in _file_names(name):
            if self._is_file(candidate):
                return candidate
        return None

    def files(self) -> list[Path]:
        """Every file (links to files included), sorted by name."""
        return [self.path / name for name in sorted(self._entries) if self._is_file(name)]

    def outside(self, name: str) -> bool:
        """``outside_root(path / name, root)`` for a file of this folder."""
        entry = self._entries.get(name)
        if entry is not None and not entry.is_symlink():
            return self._outside_plain
        return _outside((self.path / name).resolve(), self._real_root)


def resolve_image(images_dir: Path, name: str) -> Path | None:
    """The file for ``name`` in ``images_dir``; names may lack their extension (``090000``). One file:
    ``Folder(images_dir, root).find`` answers for many."""
    return next((images_dir / c for c in _file_names(name) if (images_dir / c).is_file()), None)


def _file_names(name: str) -> tuple[str, ...]:
    """The file names a label's image name may stand for, in the order tried: the name itself, then,
    when it has no image extension (``090000``), the name with each one, lower then upper case."""
    if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        return (name,)
    return (name, *(name + suffix for extension in IMAGE_EXTENSIONS for suffix in (extension, extension.upper())))


def read_lines(path: Path) -> Iterator[tuple[int, str | InputError]]:
    """(line number, text) per line; a line that is not UTF-8 yields an InputError instead.

    A UTF-8 byte-order mark and CRLF line ends are accepted.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}", expected="a readable UTF-8 text file") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, InputError(path, f"not valid UTF-8 (byte {exc.start})", line=number,
                                     field="line", expected="UTF-8 text")


def parse_line(text: str, *, file: Path, line: int, split: str, folder: Folder,
               attributes: dict[str, tuple] | None = None) -> Record:
    """One label line's record, or an InputError naming its field. ``attributes`` (attribute text ->
    what it parsed to) remembers each distinct attribute's parse for the next line with the same text:
    a label file repeats a few thousand attributes over its 100,000 lines."""
    fields = text.split("$")
    if len(fields) != 3:
        raise InputError(file, f"has {len(fields)} '$'-separated fields", line=line, field="line",
                         expected="3 fields: image$attribute$text")
    image, attribute, caption = (f.strip() for f in fields)
    check_image_name(image, file, line)
    if not caption:
        raise InputError(file, "text is empty", line=line, field="text", expected="a caption")
    if not attribute:
        raise InputError(file, "attribute is empty", line=line, field="attribute",
                         expected="a vehicle phrase or 21 comma-separated bits")
    parsed = attributes.get(attribute) if attributes is not None else None
    if parsed is None:
        parsed = _parse_attribute(attribute, file, line)
        if attributes is not None:
            attributes[attribute] = parsed
    category, key, vehicle, bits = parsed
    found = folder.find(image)
    if found is None:
        raise InputError(file, f"image {image!r} not found in {folder.path}", line=line,
                         field="image", expected="an existing image file")
    if folder.outside(found):
        raise InputError(file, f"image {image!r} is a link to {(folder.path / found).resolve()}, outside the "
                         f"dataset root {folder.root}", line=line, field="image",
                         expected="image files inside the dataset root")
    return Record(split=split, line=line, image=image, image_path=f"{folder.relative}/{found}",
                  category=category, attribute=attribute, key=key, text=caption, vehicle=vehicle,
                  bits=bits)


def _parse_attribute(attribute: str, file: Path, line: int) -> tuple:
    """(category, key, vehicle attributes, pedestrian bits) of an attribute field (both immutable)."""
    if "," in attribute or _VECTOR_CHARS.match(attribute):
        bits = parse_bits(attribute)
        if isinstance(bits, str):
            raise InputError(file, f"pedestrian vector {bits}", line=line, field="attribute",
                             expected=f"{PEDESTRIAN_BITS} comma-separated 0/1 values")
        return PEDESTRIAN, pedestrian_key(bits), None, bits
    vehicle = parse_vehicle_phrase(attribute)
    if vehicle is None:
        raise InputError(file, f"vehicle phrase {attribute!r} names no colour, brand or type",
                         line=line, field="attribute", expected="e.g. 'A white Audi Sedan.'")
    return VEHICLE, vehicle.key, vehicle, None


@dataclass
class SplitLabels:
    split: str
    file: Path
    records: list[Record] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    lines: int = 0          # non-blank input lines
    blank_lines: int = 0


def label_file(root: Path, split: str) -> Path:
    return root / split / f"{split}_label.txt"


def images_dir(root: Path, split: str) -> Path:
    return root / split / f"{split}_images"


def read_split(root: str | Path, split: str) -> SplitLabels:
    """Parse one split's label file. Conflicting duplicate image labels are errors on the later line."""
    root = Path(root)
    file = label_file(root, split)
    result = SplitLabels(split, file)
    if not file.is_file():
        raise InputError(file, "label file not found", expected=f"{split}/{split}_label.txt under the data root")
    if outside_root(file, root):
        raise InputError(file, f"a link to {file.resolve()}, outside the dataset root {root}",
                         expected="the label file inside the dataset root")
    seen: dict[str, tuple[int, str]] = {}
    attributes: dict[str, tuple] = {}
    folder = Folder(images_dir(root, split), root)
    for number, text in read_lines(file):
        if isinstance(text, str) and not text.strip():
            result.blank_lines += 1
            continue
        result.lines += 1
        if isinstance(text, InputError):
            result.errors.append(text)
            continue
        try:
            record = parse_line(text, file=file, line=number, split=split, folder=folder, attributes=attributes)
            previous = seen.get(record.image_path)
            if previous and previous[1] != record.key:
                raise InputError(file, f"image {record.image!r} is also labelled at line {previous[0]} "
                                 "with a different attribute", line=number, field="attribute",
                                 expected="one attribute per image")
            seen.setdefault(record.image_path, (number, record.key))
            result.records.append(record)
        except InputError as error:
            result.errors.append(error)
    return result


@dataclass
class Query:
    line: int
    text: str
    category: str | None    # None: fits neither category (reported, never guessed)


def read_queries(path: str | Path, vocabulary: "Vocabulary | None" = None) -> tuple[list[Query], list[InputError]]:
    """test_text.txt: one query per line, in submission order. Blank lines are errors except at the end."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "query file not found", expected="test/test_text.txt under the data root")
    queries: list[Query] = []
    errors: list[InputError] = []
    pending_blank: list[int] = []
    for number, text in read_lines(path):
        if isinstance(text, InputError):
            errors.append(text)
            continue
        if not text.strip():
            pending_blank.append(number)
            continue
        errors.extend(InputError(path, "blank query line", line=n, field="text",
                                 expected="one query text per line") for n in pending_blank)
        pending_blank = []
        queries.append(Query(number, text.strip(), query_category(text, vocabulary)))
    return queries, errors


def query_category(text: str, vocabulary: "Vocabulary | None" = None) -> str | None:
    """Decide a query's category from its words (docs/techniques.md), checked in this order.

    pedestrian: it names a person (pedestrian, person, man, woman, ...);
    vehicle: it names a vehicle word or type (vehicle, car, van, Sedan, ...), a colour (vehicle
    captions name one; pedestrian captions, which would also name a person, come first), or a
    brand of the vocabulary;
    None: neither (the caller reports it and searches the whole gallery).
    """
    words = re.findall(r"[a-z0-9&\-]+", text.lower())
    if any(w in PEDESTRIAN_WORDS for w in words):
        return PEDESTRIAN
    vehicle_words = {"vehicle", "car", "bus", "truck", "suv", "sedan", "minivan", "microbus", "van"}
    if any(w in vehicle_words or w in _COLOUR_BY_WORD for w in words):
        return VEHICLE
    if vocabulary is not None:
        lowered = " " + " ".join(words) + " "
        if any(f" {brand.lower()} " in lowered for brand in vocabulary.brands):
            return VEHICLE
    return None


@dataclass
class Vocabulary:
    colours: list[str]
    types: list[str]
    brands: list[str]
    counts: dict[str, dict[str, int]]

    def as_dict(self) -> dict:
        return {"colours": self.colours, "types": self.types, "brands": self.brands, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        return cls(data["colours"], data["types"], data["brands"], data.get("counts", {}))


def extract_vocabulary(records: Iterable[Record]) -> Vocabulary:
    """The vehicle colours, types and brands seen in (training) labels, with their counts."""
    colours, types, brands = Counter(), Counter(), Counter()
    for record in records:
        if record.vehicle is None:
            continue
        if record.vehicle.colour:
            colours[record.vehicle.colour] += 1
        if record.vehicle.vehicle_type:
            types[record.vehicle.vehicle_type] += 1
        if record.vehicle.brand:
            brands[record.vehicle.brand] += 1
    return Vocabulary(sorted(colours), sorted(types), sorted(brands),
                      {"colours": dict(sorted(colours.items())), "types": dict(sorted(types.items())),
                       "brands": dict(sorted(brands.items()))})

