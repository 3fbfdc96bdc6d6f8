"""Read a captions file: plain text (one caption a line) or CSV/TSV with a caption and an optional label column.

One line is one caption. TSV is split at tabs with no quote processing (captions may begin with `"`); CSV uses
standard quoting within a line, and a quote it cannot close on that line is an error naming the line. A file
without a header row (cc3m/cc12m's `url<TAB>caption`) is read by column number (`caption_column="2"`).

Captions are normalised (unicode NFC, whitespace collapsed), empty ones skipped, duplicates dropped (the
first occurrence wins), and each gets a stable id: the first 16 hex characters of the SHA-1 of its
normalised UTF-8 text.
"""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .settings import DataGenError

_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Caption:
    index: int  # position among the de-duplicated captions; orders the manifest
    caption_id: str
    text: str
    label: int | None


@dataclass
class CaptionSet:
    captions: list[Caption]
    class_names: list[str] | None
    lines: int = 0
    empty: int = 0
    bad_utf8_skipped: int = 0
    duplicates: int = 0
    label_conflicts: int = 0  # duplicates whose label differs from the kept one
    digest: str = field(default="")  # identifies the caption list, to tell runs apart

    def stats(self) -> dict:
        return {
            "lines": self.lines,
            "captions": len(self.captions),
            "empty_skipped": self.empty,
            "bad_utf8_skipped": self.bad_utf8_skipped,
            "duplicates_dropped": self.duplicates,
            "label_conflicts": self.label_conflicts,
        }


def normalize_caption(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def caption_id(normalized: str) -> str:
    return hashlib.sha1(normalized.encode("utf-8")).hexdigest()[:16]


def _decoded_lines(path: Path, skip_bad_lines: bool, result: CaptionSet):
    """Yield (line number, text) with line endings stripped; non-UTF-8 lines raise or are counted."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataGenError(f"captions file {path}: {e.strerror or e}") from None
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    if raw_lines and raw_lines[0].startswith(b"\xef\xbb\xbf"):
        raw_lines[0] = raw_lines[0][3:]  # a UTF-8 byte-order mark is not part of the caption
    result.lines = len(raw_lines)
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            if not skip_bad_lines:
                raise DataGenError(
                    f"{path}:{number}: not valid UTF-8 (fix the file or pass --skip-bad-lines)"
                ) from None
            result.bad_utf8_skipped += 1
            continue
        yield number, text


def _cells(path: Path, number: int, text: str, tsv: bool) -> list[str]:
    """One line's cells. TSV: split at tabs, quotes are plain characters (cc3m/cc12m captions begin with
    them). CSV: standard quoting within the line; a caption cannot span lines, so a quote left open or text
    after a closing quote is an error naming the line rather than rows silently merged."""
    if tsv:
        return text.split("\t")
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as e:
        raise DataGenError(
            f"{path}:{number}: bad CSV quoting ({e}): quote the whole caption and double the quotes inside it, "
            "or use a .tsv file (read without quote processing)"
        ) from None


def _column_number(column: str) -> int | None:
    """1-based column number given on the command line, or None for a column name."""
    return int(column) if column.isdigit() else None


def _rows(path: Path, skip_bad_lines: bool, caption_column: str, label_column: str | None, result: CaptionSet):
    """Yield (line number, caption text, raw label or None).

    A numeric `caption_column` (1-based) reads a file without a header row, like cc3m/cc12m's `url<TAB>caption`
    TSVs (`--caption-column 2`); a label column is then a number too.
    """
    lines = _decoded_lines(path, skip_bad_lines, result)
    suffix = path.suffix.lower()
    caption_at = _column_number(caption_column)
    if suffix not in (".csv", ".tsv"):
        if label_column or caption_at is not None:
            raise DataGenError(f"{path}: columns (--caption-column/--label-column) need a .csv or .tsv captions file")
        yield from ((number, text, None) for number, text in lines)
        return
    tsv = suffix == ".tsv"

    if caption_at is None:  # a header row names the columns
        first = next(lines, None)
        if first is None:
            return
        header = [name.strip() for name in _cells(path, first[0], first[1], tsv)]
        if caption_column not in header:
            raise DataGenError(
                f"{path}: no column {caption_column!r} (columns: {', '.join(header)}); see --caption-column "
                "(a number for a file without a header row)"
            )
        if label_column is None:
            label_column = "label" if "label" in header else None
        elif label_column not in header:
            raise DataGenError(f"{path}: no label column {label_column!r} (columns: {', '.join(header)})")
        text_at = header.index(caption_column)
        label_at = header.index(label_column) if label_column else None
        width = len(header)
    else:
        label_number = _column_number(label_column) if label_column else None
        if caption_at < 1 or (label_column and (label_number is None or label_number < 1)):
            given = f"--caption-column {caption_column}" + (f" --label-column {label_column}" if label_column else "")
            raise DataGenError(f"{given}: without a header row, columns are numbers from 1")
        text_at = caption_at - 1
        label_at = label_number - 1 if label_number else None
        width = None  # any number of columns, as long as the ones we read are there
    needed = max(text_at, label_at or 0) + 1

    for number, text in lines:
        row = _cells(path, number, text, tsv)
        if not any(cell.strip() for cell in row):
            yield number, "", None
            continue
        if width is not None and len(row) != width:
            raise DataGenError(f"{path}:{number}: {len(row)} columns, the header has {width}")
        if len(row) < needed:
            raise DataGenError(f"{path}:{number}: {len(row)} columns, column {needed} is read")
        label = None
        if label_at is not None:
            label = row[label_at].strip()
            if not label and row[text_at].strip():
                raise DataGenError(f"{path}:{number}: empty label (every caption needs one in a labelled file)")
        yield number, row[text_at], label


def load_captions(
    path: str | Path,
    *,
    skip_bad_lines: bool = False,
    caption_column: str = "caption",
    label_column: str | None = None,
) -> CaptionSet:
    """Read, normalise and de-duplicate the captions of `path`; labels become integer ids.

    Integer labels stay as they are (class names "0".."max"); other labels are class names, mapped to
    their index in the sorted list of names.
    """
    path = Path(path)
    result = CaptionSet(captions=[], class_names=None)
    kept: dict[str, tuple[str, str | None]] = {}
    for number, text, label in _rows(path, skip_bad_lines, caption_column, label_column, result):
        text = normalize_caption(text)
        if not text:
            result.empty += 1
            continue
        cid = caption_id(text)
        if cid in kept:
            if kept[cid][0] != text:
                raise DataGenError(f"{path}:{number}: caption id {cid} collides with a different caption")
            result.duplicates += 1
            result.label_conflicts += kept[cid][1] != label
            continue
        kept[cid] = (text, label)
    if not kept:
        raise DataGenError(
            f"{path}: no captions ({result.lines} lines: {result.empty} blank, "
            f"{result.bad_utf8_skipped} skipped as not UTF-8)"
        )

    raw_labels = [label for _, label in kept.values()]
    labelled = bool(raw_labels) and raw_labels[0] is not None
    if labelled and all(_INTEGER.match(label) for label in raw_labels):
        ids = [int(label) for label in raw_labels]
        if min(ids) < 0:
            raise DataGenError(f"{path}: label {min(ids)} is negative; integer labels must be >= 0")
        result.class_names = [str(i) for i in range(max(ids) + 1)]
    elif labelled:
        result.class_names = sorted(set(raw_labels))
        to_id = {name: i for i, name in enumerate(result.class_names)}
        ids = [to_id[label] for label in raw_labels]
    else:
        ids = [None] * len(raw_labels)

    digest = hashlib.sha256(repr(result.class_names).encode())
    for index, ((cid, (text, _)), label) in enumerate(zip(kept.items(), ids)):
        result.captions.append(Caption(index, cid, text, label))
        digest.update(f"{cid}\t{label}\n".encode())
    result.digest = digest.hexdigest()
    return result
