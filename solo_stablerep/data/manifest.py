"""On-disk format of a StableRep synthetic data set (format ``stablerep-synthetic``, version 1).

A data set is one root folder holding ``manifest.jsonl`` (UTF-8 JSON Lines) and the images, placed
by the writers at ``images/<id[0:2]>/<id[2:4]>/<caption_id>_<k:02d>.<ext>``. Line 1 is a header::

    {"format": "stablerep-synthetic", "version": 1, "num_captions": 2,
     "class_names": ["cat", "dog"] or null, "generator": {...free-form settings...}}

``num_captions`` caption lines follow, one per caption::

    {"caption_id": "a1b2c3", "caption": "a photo of a cat", "label": 0 or null,
     "images": ["images/a1/b2/a1b2c3_00.jpg", "images/a1/b2/a1b2c3_01.jpg", ...]}

- ``caption_id``: a non-empty string of letters, digits, ``_`` or ``-``, unique in the file.
- ``label``: null when ``class_names`` is null, else an integer in ``[0, len(class_names))``.
- ``images``: a non-empty list of distinct relative POSIX paths that stay inside the root.

Every error is a :class:`ManifestError` whose one line names the file, line and caption at fault.
Training reads a manifest through its caption index (:mod:`.index`).
"""

from __future__ import annotations

import functools
import json
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate, chain, islice, repeat
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from solo_stablerep.errors import ManifestError
from solo_stablerep.storage import atomic_output

FORMAT_NAME = "stablerep-synthetic"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.jsonl"

_HEADER_KEYS = {"format", "version", "num_captions", "class_names", "generator"}
_RECORD_KEYS = {"caption_id", "caption", "label", "images"}
# relative paths whose every part starts with neither "." nor "/": valid without further checks
_PLAIN_RELATIVE = re.compile(r"(?![A-Za-z]:)[^/\\.][^/\\]*(?:/[^/\\.][^/\\]*)*\Z")
CAPTION_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # a caption id names files and tar members
# a caption line as write_manifest writes it: json.dumps' separators, an id of 4 characters or more,
# a caption without escapes, and up to 100 images whose paths follow the writers' rule (path k
# matched by back-references to the id, its parts and the first path's extension). Groups: id,
# id[0:2], id[2:4], caption, label, the images' JSON, their extension. No part matches a line end.
_WRITTEN = (
    r'\{"caption_id": "(([A-Za-z0-9_-]{2})([A-Za-z0-9_-]{2})[A-Za-z0-9_-]*)", '
    r'"caption": "([^"\\\x00-\x1f]*)", "label": (null|0|[1-9][0-9]{0,9}), '
    r'"images": \[("images/\2/\3/\1_00\.([A-Za-z0-9]+)"'
    + "".join(f'(?:, "images/\\2/\\3/\\1_{k:02d}\\.\\7"' for k in range(1, 100))
    + ")?" * 99
    + r")\]\}"
)
_WRITTEN_LINE = re.compile(_WRITTEN)
_WRITTEN_LINES = re.compile(f"^{_WRITTEN}$", re.MULTILINE)  # every such line of a text
_UNMATCHED = ("",) * 7  # the groups standing for a line _WRITTEN_LINE does not match
_BLOCK_BYTES = 1 << 18  # a manifest is read and checked this many bytes of lines at a time


def image_stem(caption_id: str) -> str:
    """``images/<id[0:2]>/<id[2:4]>/<id>``: a caption's image paths without ``_<k>.<ext>``; ids
    shorter than 4 characters are padded with ``_`` for the two folder names."""
    padded = caption_id.ljust(4, "_")
    return f"images/{padded[0:2]}/{padded[2:4]}/{caption_id}"


def image_component(k: int, ext: str) -> str:
    """Image ``k``'s number and extension, ``<k:02d>.<ext>``, in both layouts (a tar sample's
    component name)."""
    return f"{k:02d}.{ext.lstrip('.')}"


def image_relpath(caption_id: str, k: int, ext: str) -> str:
    """Where the writers place image ``k`` of a caption: ``<image_stem>_<image_component>``."""
    if not CAPTION_ID.match(caption_id):
        raise ManifestError(f"caption_id {caption_id!r}: use only letters, digits, '_' or '-'")
    return f"{image_stem(caption_id)}_{image_component(k, ext)}"


@dataclass
class CaptionRecord:
    """One caption and the relative paths of the images generated from it."""

    caption_id: str
    caption: str
    label: int | None
    images: list[str]


def check_relative_path(path: str, where: str) -> str:
    """``path`` if it is a relative POSIX path staying inside the root; else raises naming
    ``where`` (file, line, caption)."""
    if _PLAIN_RELATIVE.match(path if isinstance(path, str) else ""):
        return path  # the common case, decided by one regex: no "\\", no leading "/", no "." part
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{where}: image path {path!r} is not a non-empty string")
    if "\\" in path or PurePosixPath(path).is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise ManifestError(
            f"{where}: image path {path!r} is absolute (must be relative to the root)"
        )
    depth = 0
    for part in PurePosixPath(path).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise ManifestError(f"{where}: image path {path!r} escapes the root")
    if depth == 0:
        raise ManifestError(f"{where}: image path {path!r} names the root, not a file")
    return path


def rule_extension(caption_id: str, images: list[str]) -> str | None:
    """The extension ``ext`` if ``images`` is exactly ``[image_relpath(caption_id, k, ext) ...]``
    (the writers' rule: the paths are derived from the id, not stored), else None."""
    first = images[0] if images else None
    if not isinstance(first, str):
        return None
    ext = first.rpartition(".")[2]
    prefix = image_stem(caption_id)
    suffixes = _rule_suffixes(ext, len(images))
    if suffixes is None or images != [prefix + suffix for suffix in suffixes]:
        return None
    return ext


@functools.lru_cache(maxsize=64)
def _rule_suffixes(ext: str, n: int) -> tuple[str, ...] | None:
    return None if "/" in ext else tuple(f"_{image_component(k, ext)}" for k in range(n))


def _label_value(text: str, num_classes: int | None) -> int | None:
    """The label a written line's label text stands for (-1: none), None if it is not allowed or
    the line did not match (no text)."""
    if text == "null":
        return -1 if num_classes is None else None
    return int(text) if text and num_classes is not None and int(text) < num_classes else None


def _check_header(header: Any, where: str) -> dict:
    if not isinstance(header, dict):
        raise ManifestError(f"{where}: header must be a JSON object")
    if header.get("format") != FORMAT_NAME:
        raise ManifestError(
            f"{where}: format is {header.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    if header.get("version") != FORMAT_VERSION:
        raise ManifestError(
            f"{where}: unknown version {header.get('version')!r} "
            f"(this reader knows {FORMAT_VERSION})"
        )
    if missing := _HEADER_KEYS - header.keys():
        raise ManifestError(f"{where}: header lacks {sorted(missing)}")
    num = header["num_captions"]
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise ManifestError(f"{where}: num_captions {num!r} is not a non-negative integer")
    names = header["class_names"]
    if names is not None and (
        not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
    ):
        raise ManifestError(f"{where}: class_names must be null or a non-empty list of strings")
    if header["generator"] is not None and not isinstance(header["generator"], dict):
        raise ManifestError(f"{where}: generator must be an object or null")
    return header


def _check_record(
    obj: Any, where: str, num_classes: int | None
) -> tuple[CaptionRecord, str | None]:
    """The validated record, and its images' extension when their paths follow the writers' rule."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: caption line must be a JSON object")
    if obj.keys() != _RECORD_KEYS:
        raise ManifestError(
            f"{where}: columns {sorted(obj.keys())} differ from {sorted(_RECORD_KEYS)}"
        )
    cid = obj["caption_id"]
    if not isinstance(cid, str) or not CAPTION_ID.match(cid):
        raise ManifestError(f"{where}: caption_id {cid!r} is not a string of [A-Za-z0-9_-]")
    where = f"{where} (caption {cid})"
    if not isinstance(obj["caption"], str):
        raise ManifestError(f"{where}: caption text is not a string")
    label = obj["label"]
    if num_classes is None:
        if label is not None:
            raise ManifestError(f"{where}: label {label!r} given but the header has no class_names")
    elif not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
        raise ManifestError(f"{where}: label {label!r} is not an integer in [0, {num_classes})")
    images = obj["images"]
    if not isinstance(images, list) or not images:
        raise ManifestError(f"{where}: images must be a non-empty list of relative paths")
    ext = rule_extension(cid, images)
    if ext is None:  # paths of the writers' rule are valid and distinct by construction
        for path in images:
            check_relative_path(path, where)
        if len(set(images)) != len(images):
            raise ManifestError(f"{where}: images lists a path twice")
    return CaptionRecord(cid, obj["caption"], label, list(images)), ext


class Strings:
    """Strings in one UTF-8 byte blob with end offsets: no Python object per string."""

    def __init__(self):
        self.blob = bytearray()
        self.ends = array("q")

    def __len__(self) -> int:
        return len(self.ends)

    def add(self, text: str) -> None:
        self.blob += text.encode()
        self.ends.append(len(self.blob))

    def extend(self, texts: Sequence[str]) -> None:
        """Adds ``texts`` with one encode of them all (their sizes from their lengths if ASCII)."""
        joined = "".join(texts)
        sizes = map(len, texts) if joined.isascii() else map(len, map(str.encode, texts))
        self.ends.extend(islice(accumulate(sizes, initial=len(self.blob)), 1, None))
        self.blob += joined.encode()

    def __getitem__(self, i: int) -> str:
        return self.blob[self.ends[i - 1] if i > 0 else 0 : self.ends[i]].decode()


class CaptionIds(Strings):
    """Caption ids, and their repeats (16 B per id besides its bytes: end offset and hash)."""

    def __init__(self):
        super().__init__()
        self._hashes = array("q")

    def add(self, caption_id: str) -> None:
        super().add(caption_id)
        self._hashes.append(hash(caption_id))

    def extend(self, caption_ids: Sequence[str]) -> None:
        super().extend(caption_ids)
        self._hashes.extend(map(hash, caption_ids))

    def first_repeat(self) -> tuple[int, int] | None:
        """(first position, repeat position) of the earliest id that repeats an earlier one."""
        hashes = np.frombuffer(self._hashes, dtype=np.int64) if len(self) else np.empty(0, np.int64)
        order = np.argsort(hashes)
        shared = np.flatnonzero(hashes[order[1:]] == hashes[order[:-1]])
        # ids whose hash is shared: compare the ids themselves (hashes may collide), in file order
        candidates = np.unique(np.concatenate([order[shared], order[shared + 1]]))
        first_seen: dict[str, int] = {}
        for position in candidates.tolist():
            first = first_seen.setdefault(self[position], position)
            if first != position:
                return first, position
        return None

    def check_unique(self, manifest: Path) -> None:
        """Raises naming the first repeated id of a manifest read in full (caption i: line i+2)."""
        if (repeat := self.first_repeat()) is not None:
            first, again = repeat
            raise ManifestError(
                f"{manifest}:{again + 2}: caption_id {self[again]!r} repeats line {first + 2}"
            )


class CaptionColumns:
    """Validated captions in file order, as columns: ids, texts, labels (-1: none), image counts,
    and each caption's rule extension (its paths follow the writers' rule) or None with its paths
    in ``paths`` (None for a rule caption)."""

    def __init__(self, ids, texts, labels, num_images, exts, paths):
        self.ids, self.texts, self.labels = ids, texts, labels
        self.num_images, self.exts, self.paths = num_images, exts, paths

    @classmethod
    def of_records(cls, checked: Sequence[tuple[CaptionRecord, str | None]]) -> CaptionColumns:
        """Of (record, rule extension or None) pairs, as :func:`_check_record` returns them."""
        columns = cls(*([None] * len(checked) for _ in range(6)))
        for i, (record, ext) in enumerate(checked):
            columns.set(i, record, ext)
        return columns

    def set(self, i: int, record: CaptionRecord, ext: str | None) -> None:
        self.ids[i], self.texts[i] = record.caption_id, record.caption
        self.labels[i] = -1 if record.label is None else record.label
        self.num_images[i], self.exts[i] = len(record.images), ext
        self.paths[i] = None if ext is not None else list(record.images)

    def __len__(self) -> int:
        return len(self.ids)

    def image_paths(self, i: int) -> list[str]:
        if self.paths[i] is not None:
            return self.paths[i]
        stem = image_stem(self.ids[i])
        return [stem + suffix for suffix in _rule_suffixes(self.exts[i], self.num_images[i])]

    def records(self) -> Iterator[CaptionRecord]:
        for i, label in enumerate(self.labels):
            yield CaptionRecord(
                self.ids[i], self.texts[i], None if label < 0 else label, self.image_paths(i)
            )


def _check_lines(
    text: str, count: int, line_no: int, terminated: bool, path: Path, num_classes: int | None
) -> CaptionColumns:
    """The captions of the ``count`` lines of ``text`` (from line ``line_no`` on, joined by
    ``\\n``; ``terminated``: the last one had a line end). Lines as write_manifest writes them are
    checked by one pattern (id, caption, the paths' rule) over them all, and their labels as a few
    distinct values; any other line (another layout, escapes, stored paths, an error) is checked
    alone as before: the same checks, the same one-line errors, in file order."""
    pieces = _WRITTEN_LINES.split(text)  # gap, 7 groups, gap, ...: the gaps "\n" if all match
    gaps = pieces[0::8]
    if len(gaps) == count + 1 and gaps[0] == gaps[-1] == "" and gaps.count("\n") == count - 1:
        lines, fields = None, [pieces[k::8] for k in range(1, 8)]
    else:
        lines = text.split("\n")
        matches = map(_WRITTEN_LINE.fullmatch, lines)
        fields = zip(*[m.groups() if m else _UNMATCHED for m in matches], strict=True)
    ids, _, _, texts, labels, images, exts = map(list, fields)
    counts = [n + 1 for n in map(str.count, images, repeat('", "'))]  # paths hold no quote
    values = {text: _label_value(text, num_classes) for text in set(labels)}
    labels = list(map(values.__getitem__, labels))
    columns = CaptionColumns(ids, texts, labels, counts, exts, [None] * count)
    if None in labels:  # a line that does not match or a label out of range: checked alone
        lines = lines or text.split("\n")
        for i in [i for i, label in enumerate(labels) if label is None]:
            where = f"{path}:{line_no + i}"
            line = lines[i] + "\n" if terminated or i + 1 < count else lines[i]
            columns.set(i, *_check_record(_parse_line(line, where), where, num_classes))
    return columns


def _read_lines(path: Path) -> Iterator[tuple[str, int, bool]]:
    """The lines of a UTF-8 text file, a block at a time, split as a text-mode read splits them
    (at ``\\n``, ``\\r\\n`` or ``\\r``): (the lines joined by ``\\n``, their count, whether the
    last one had a line end). Bytes that are not UTF-8 end the lines: a one-line error names their
    line."""
    line_no, tail = 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK_BYTES)
            data = tail + block
            # lines end after the last \n, or a \r that is not the data's last byte (\r\n?)
            end = len(data) - 1 if block else len(data)
            cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, end)) + 1 if block else end
            data, tail = data[:cut], data[cut:]
            try:
                text = data.decode()
            except UnicodeDecodeError as error:
                good = max(data.rfind(b"\n", 0, error.start), data.rfind(b"\r", 0, error.start))
                lines = _joined_lines(data[: good + 1].decode())
                if lines[1]:
                    yield lines
                raise ManifestError(
                    f"{path}:{line_no + lines[1]}: not valid UTF-8 ({error.reason}); save the "
                    "manifest as UTF-8"
                ) from None
            lines = _joined_lines(text)
            if lines[1]:
                yield lines
            line_no += lines[1]
            if not block:
                return


def _joined_lines(text: str) -> tuple[str, int, bool]:
    """``text``'s lines joined by ``\\n``, their count, whether the last one had a line end."""
    if "\r" in text:  # universal newlines, as a text-mode read translates them
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        return text, 0, False
    if text.endswith("\n"):
        return text[:-1], text.count("\n"), True
    return text, text.count("\n") + 1, False


def scan_manifest(root: str | Path) -> tuple[Path, dict, Iterator[CaptionColumns]]:
    """Streams ``root/manifest.jsonl``: (path, validated header, iterator of the captions in
    blocks). The iterator validates each line as it goes and, at the end, that ``num_captions``
    lines were read; repeated ids are left to the caller (:class:`CaptionIds`)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    blocks = _read_lines(path)
    text, count, terminated = next(blocks, ("", 0, False))
    if not count:
        raise ManifestError(f"{path}: manifest is empty (no header line)")
    first, _, rest = text.partition("\n")
    header_line = first + "\n" if terminated or count > 1 else first
    header = _check_header(_parse_line(header_line, f"{path}:1"), f"{path}:1")
    num_classes = None if header["class_names"] is None else len(header["class_names"])

    def captions():
        line_no = 2
        for lines, n, ends in chain([(rest, count - 1, terminated)], blocks):
            if n:
                yield _check_lines(lines, n, line_no, ends, path, num_classes)
                line_no += n
        if header["num_captions"] != line_no - 2:
            raise ManifestError(
                f"{path}: header says num_captions={header['num_captions']} "
                f"but {line_no - 2} caption lines follow"
            )

    return path, header, captions()


def _parse_line(line: str, where: str) -> Any:
    if not line.strip():
        raise ManifestError(f"{where}: empty line")
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None


def read_manifest(root: str | Path) -> tuple[dict, list[CaptionRecord]]:
    """The validated (header, caption records in file order) of ``root/manifest.jsonl``: one
    Python object per caption (large data sets are read through their caption index)."""
    path, header, blocks = scan_manifest(root)
    ids, records = CaptionIds(), []
    for columns in blocks:
        ids.extend(columns.ids)
        records.extend(columns.records())
    ids.check_unique(path)
    return header, records


def write_manifest(
    root: str | Path,
    records: Iterable[CaptionRecord],
    *,
    class_names: Sequence[str] | None = None,
    generator: dict | None = None,
    num_captions: int | None = None,
    on_record: Callable[[CaptionRecord, str | None], None] | None = None,
) -> Path:
    """Validates ``records`` and writes ``root/manifest.jsonl`` atomically; returns its path. With
    ``num_captions`` given, ``records`` is streamed (16 B per id kept) and must yield that many;
    ``on_record(record, rule extension)`` sees each validated record (the caption index
    builder)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if num_captions is None:
        records = list(records)
        num_captions = len(records)
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_captions": num_captions,
        "class_names": None if class_names is None else list(class_names),
        "generator": generator,
    }
    _check_header(header, f"{path}: header")
    num_classes = None if class_names is None else len(class_names)

    root.mkdir(parents=True, exist_ok=True)
    ids = CaptionIds()
    with atomic_output(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for i, record in enumerate(records):
            obj = asdict(record)
            _, ext = _check_record(obj, f"{path}: record {i}", num_classes)
            ids.add(record.caption_id)
            if on_record is not None:
                on_record(record, ext)
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        if (repeat := ids.first_repeat()) is not None:
            raise ManifestError(
                f"{path}: record {repeat[1]}: caption_id {ids[repeat[1]]!r} repeats"
            )
        if len(ids) != num_captions:
            raise ManifestError(
                f"{path}: {len(ids)} records given, num_captions={num_captions} announced"
            )
    return path
