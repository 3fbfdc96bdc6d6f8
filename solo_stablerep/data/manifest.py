"""On-disk format of a StableRep synthetic data set (format ``stablerep-synthetic``, version 1).

A data set is one root folder::

    ROOT/
      manifest.jsonl
      images/<id[0:2]>/<id[2:4]>/<caption_id>_<k:02d>.<ext>

``manifest.jsonl`` is UTF-8 JSON Lines.

Line 1 is a header object::

    {"format": "stablerep-synthetic", "version": 1, "num_captions": 2,
     "class_names": ["cat", "dog"] or null, "generator": {...free-form settings...}}

- ``format`` must be ``"stablerep-synthetic"`` and ``version`` must be ``1``.
- ``num_captions`` is the number of caption lines that follow.
- ``class_names`` is null for unlabelled data, else the list of class names; caption labels then
  index this list.
- ``generator`` records how the images were made (model, guidance scale, seeds, ...); not read here.

Each following line is one caption::

    {"caption_id": "a1b2c3", "caption": "a photo of a cat", "label": 0 or null,
     "images": ["images/a1/b2/a1b2c3_00.jpg", "images/a1/b2/a1b2c3_01.jpg", ...]}

- ``caption_id`` is a non-empty string of letters, digits, ``_`` or ``-``, unique in the file (it names
  the images' shard folders, so ids of at least 4 characters spread the files best).
- ``label`` is null when ``class_names`` is null, else an integer in ``[0, len(class_names))``.
- ``images`` is a non-empty list of distinct relative POSIX paths that stay inside ROOT (no absolute
  paths, no ``..`` escaping the root). Writers place image ``k`` at ``image_relpath(caption_id, k, ext)``;
  readers accept any relative path inside the root.

:func:`read_manifest` validates all of this without opening images (the dataset checks that the files
exist and decode, naming the file and the caption when they do not). Every error is a
:class:`ManifestError` with a one-line message naming the file, line and caption at fault.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

FORMAT_NAME = "stablerep-synthetic"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.jsonl"

_HEADER_KEYS = {"format", "version", "num_captions", "class_names", "generator"}
_RECORD_KEYS = {"caption_id", "caption", "label", "images"}
_CAPTION_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class ManifestError(ValueError):
    """A synthetic data set's manifest (or a file it names) is invalid; the message is one line."""


@dataclass
class CaptionRecord:
    """One caption and the relative paths of the images generated from it."""

    caption_id: str
    caption: str
    label: Optional[int]
    images: List[str]


def image_relpath(caption_id: str, k: int, ext: str) -> str:
    """Relative path of image ``k`` of a caption: ``images/<id[0:2]>/<id[2:4]>/<id>_<k:02d>.<ext>``.

    Ids shorter than 4 characters are padded with ``_`` for the shard folder names.
    """
    if not _CAPTION_ID.match(caption_id):
        raise ManifestError(f"caption_id {caption_id!r}: use only letters, digits, '_' or '-'")
    padded = caption_id.ljust(4, "_")
    return f"images/{padded[0:2]}/{padded[2:4]}/{caption_id}_{k:02d}.{ext.lstrip('.')}"


def check_relative_path(path: str, where: str) -> str:
    """Return ``path`` if it is a relative POSIX path staying inside the root, else raise.

    ``where`` names the culprit in the error (file, line, caption).
    """
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{where}: image path {path!r} is not a non-empty string")
    if "\\" in path or PurePosixPath(path).is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise ManifestError(f"{where}: image path {path!r} is absolute (must be relative to the root)")
    depth = 0
    for part in PurePosixPath(path).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise ManifestError(f"{where}: image path {path!r} escapes the root")
    if depth == 0:
        raise ManifestError(f"{where}: image path {path!r} names the root, not a file")
    return path


def _check_header(header: Any, where: str) -> dict:
    if not isinstance(header, dict):
        raise ManifestError(f"{where}: header must be a JSON object")
    if header.get("format") != FORMAT_NAME:
        raise ManifestError(f"{where}: format is {header.get('format')!r}, expected {FORMAT_NAME!r}")
    if header.get("version") != FORMAT_VERSION:
        raise ManifestError(
            f"{where}: unknown version {header.get('version')!r} (this reader knows {FORMAT_VERSION})"
        )
    missing = _HEADER_KEYS - header.keys()
    if missing:
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


def _check_record(obj: Any, where: str, num_classes: Optional[int]) -> CaptionRecord:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: caption line must be a JSON object")
    if obj.keys() != _RECORD_KEYS:
        raise ManifestError(
            f"{where}: columns {sorted(obj.keys())} differ from {sorted(_RECORD_KEYS)}"
        )
    cid = obj["caption_id"]
    if not isinstance(cid, str) or not _CAPTION_ID.match(cid):
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
    for path in images:
        check_relative_path(path, where)
    if len(set(images)) != len(images):
        raise ManifestError(f"{where}: images lists a path twice")
    return CaptionRecord(cid, obj["caption"], label, list(images))


def read_manifest(root: Union[str, Path]) -> Tuple[dict, List[CaptionRecord]]:
    """Read and validate ``root/manifest.jsonl``; returns (header, caption records in file order)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    header: Optional[dict] = None
    records: List[CaptionRecord] = []
    seen_ids: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            if not line.strip():
                raise ManifestError(f"{where}: empty line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None
            if header is None:
                header = _check_header(obj, where)
                names = header["class_names"]
                num_classes = None if names is None else len(names)
                continue
            record = _check_record(obj, where, num_classes)
            if record.caption_id in seen_ids:
                raise ManifestError(
                    f"{where}: caption_id {record.caption_id!r} "
                    f"repeats line {seen_ids[record.caption_id]}"
                )
            seen_ids[record.caption_id] = line_no
            records.append(record)
    if header is None:
        raise ManifestError(f"{path}: manifest is empty (no header line)")
    if header["num_captions"] != len(records):
        raise ManifestError(
            f"{path}: header says num_captions={header['num_captions']} "
            f"but {len(records)} caption lines follow"
        )
    return header, records


def write_manifest(
    root: Union[str, Path],
    records: Iterable[CaptionRecord],
    *,
    class_names: Optional[Sequence[str]] = None,
    generator: Optional[dict] = None,
) -> Path:
    """Validate ``records`` and write ``root/manifest.jsonl`` atomically; returns its path.

    The file is written to a temporary file in ``root``, fsync'ed, then renamed over the manifest, so a
    reader never sees a half-written manifest.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_captions": 0,
        "class_names": None if class_names is None else list(class_names),
        "generator": generator,
    }
    num_classes = None if class_names is None else len(class_names)
    lines = []
    seen = set()
    for i, record in enumerate(records):
        where = f"{path}: record {i}"
        obj = asdict(record)
        _check_record(obj, where, num_classes)
        if record.caption_id in seen:
            raise ManifestError(f"{where}: caption_id {record.caption_id!r} repeats")
        seen.add(record.caption_id)
        lines.append(json.dumps(obj, ensure_ascii=False))
    header["num_captions"] = len(lines)
    _check_header(header, f"{path}: header")

    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, ensure_ascii=False) + "\n")
            for line in lines:
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
