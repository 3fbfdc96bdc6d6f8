"""Read a captions file: plain text (one caption a line) or CSV/TSV with a caption and an optional
label column.

One line is one caption. TSV is split at tabs with no quote processing (captions may begin with
`"`); CSV uses standard quoting within a line, and a quote it cannot close on that line is an error
naming the line. A file without a header row (cc3m/cc12m's `url<TAB>caption`) is read by column
number (`caption_column="2"`).

Captions are normalised (unicode NFC, whitespace collapsed), empty ones skipped, duplicates dropped
(the first occurrence wins), and each gets a stable id: the first 16 hex characters of the SHA-1 of
its normalised UTF-8 text.
"""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from solo_stablerep.errors import DataGenError
from solo_stablerep.storage import unlimited_csv_fields

_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Caption:
    index: int  # position among the de-duplicated captions; orders the manifest
    caption_id: str
    text: str
    label: int | None


@dataclass
class CaptionSet:
    captions: list[Caption]  # this process's share (all of them unless a part was asked for)
    class_names: list[str] | None
    num_captions: int = 0  # after de-duplication, in all parts
    lines: int = 0
    empty: int = 0
    bad_utf8_skipped: int = 0
    duplicates: int = 0
    label_conflicts: int = 0  # duplicates whose label differs from the kept one
    digest: str = field(default="")  # identifies the caption list, to tell runs apart

    def stats(self) -> dict:
        return {
            "lines": self.lines,
            "captions": self.num_captions,
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
    """Yield (line number, text) with line endings stripped, streamed. Lines that are not UTF-8 text
    (invalid bytes, NUL bytes) raise or are counted; a UTF-16 file, or one with CR-only line endings
    (every caption would run into one), is refused whole."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataGenError(f"captions file {path}: {e.strerror or e}") from None
    with f:
        for number, raw in enumerate(f, start=1):
            result.lines = number
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark is not part of the caption
            elif number == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                raise DataGenError(f"{path}: UTF-16 text (byte-order mark); save it as UTF-8")
            line = raw.rstrip(b"\n").rstrip(b"\r")
            if b"\r" in line:
                raise DataGenError(
                    f"{path}:{number}: a carriage return inside the line (CR-only "
                    "line endings?); save the file with LF (or CRLF) line endings"
                )
            problem = None
            if b"\0" in line:
                problem = "a NUL byte (UTF-16 without a byte-order mark, or a binary file?)"
            else:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    problem = "not valid UTF-8"
            if problem is not None:
                if not skip_bad_lines:
                    raise DataGenError(
                        f"{path}:{number}: {problem}; save the captions as UTF-8 "
                        "text or pass --skip-bad-lines"
                    )
                result.bad_utf8_skipped += 1
                continue
            yield number, text


def _cells(path: Path, number: int, text: str, tsv: bool) -> list[str]:
    """One line's cells. TSV: split at tabs, quotes are plain characters (cc3m/cc12m captions
    begin with them). CSV: standard quoting within the line; a caption cannot span lines, so a
    quote left open or text after a closing quote is an error naming the line rather than rows
    silently merged."""
    if tsv:
        return text.split("\t")
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as e:
        if "field limit" in str(e):  # a long caption (more than 128 KiB), not a quoting error
            with unlimited_csv_fields():
                return _cells(path, number, text, tsv)
        raise DataGenError(
            f"{path}:{number}: bad CSV quoting ({e}): quote the whole caption and double the "
            "quotes inside it, or use a .tsv file (read without quote processing)"
        ) from None


def _column_number(column: str) -> int | None:
    """1-based column number given on the command line, or None for a column name."""
    return int(column) if column.isdigit() else None


def _rows(
    path: Path,
    skip_bad_lines: bool,
    caption_column: str,
    label_column: str | None,
    result: CaptionSet,
):
    """Yield (line number, caption text, raw label or None).

    A numeric `caption_column` (1-based) reads a file without a header row, like cc3m/cc12m's
    `url<TAB>caption` TSVs (`--caption-column 2`); a label column is then a number too.
    """
    lines = _decoded_lines(path, skip_bad_lines, result)
    suffix = path.suffix.lower()
    caption_at = _column_number(caption_column)
    if suffix not in (".csv", ".tsv"):
        if label_column or caption_at is not None:
            raise DataGenError(
                f"{path}: columns (--caption-column/--label-column) need a .csv or .tsv captions "
                "file"
            )
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
                f"{path}: no column {caption_column!r} (columns: {', '.join(header)}); see "
                "--caption-column (a number for a file without a header row)"
            )
        if label_column is None:
            label_column = "label" if "label" in header else None
        elif label_column not in header:
            raise DataGenError(
                f"{path}: no label column {label_column!r} (columns: {', '.join(header)})"
            )
        text_at = header.index(caption_column)
        label_at = header.index(label_column) if label_column else None
        width = len(header)
    else:
        label_number = _column_number(label_column) if label_column else None
        if caption_at < 1 or (label_column and (label_number is None or label_number < 1)):
            given = f"--caption-column {caption_column}" + (
                f" --label-column {label_column}" if label_column else ""
            )
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
                raise DataGenError(
                    f"{path}:{number}: empty label (every caption needs one in a labelled file)"
                )
        yield number, row[text_at], label


def load_captions(
    path: str | Path,
    *,
    skip_bad_lines: bool = False,
    caption_column: str = "caption",
    label_column: str | None = None,
    part: tuple[int, int] = (0, 1),
) -> CaptionSet:
    """Read, normalise and de-duplicate the captions of `path`; labels become integer ids.

    Integer labels stay as they are (class names "0".."max"); other labels are class names, mapped
    to their index in the sorted list of names. With ``part=(i, n)`` only the captions of process i
    of n (index % n == i) become :class:`Caption` objects; counts, class names and digest cover them
    all.

    Memory: the file is streamed twice. The first pass keeps 20 bytes per caption (its id, label
    code and row ordinal, in arrays) to find duplicates and labels; the second builds the part's
    captions and compares the texts of duplicates (a caption id shared by two texts is an error).
    """
    path = Path(path)
    part_index, num_parts = part
    result = CaptionSet(captions=[], class_names=None)

    def rows(counts: CaptionSet):
        return _rows(path, skip_bad_lines, caption_column, label_column, counts)

    ids, label_codes, ordinals = array("Q"), array("i"), array("q")
    label_code: dict[str, int] = {}  # label text -> code, in order of first appearance
    for ordinal, (_, text, label) in enumerate(rows(result)):
        text = normalize_caption(text)
        if not text:
            result.empty += 1
            continue
        ids.append(int(caption_id(text), 16))
        label_codes.append(-1 if label is None else label_code.setdefault(label, len(label_code)))
        ordinals.append(ordinal)
    if not ids:
        raise DataGenError(
            f"{path}: no captions ({result.lines} lines: {result.empty} blank, "
            f"{result.bad_utf8_skipped} skipped as not UTF-8)"
        )

    ids_array, codes = (
        np.frombuffer(ids, dtype=np.uint64),
        np.frombuffer(label_codes, dtype=np.int32),
    )
    _, first, inverse = np.unique(ids_array, return_index=True, return_inverse=True)
    first_of = first[inverse.ravel()]  # each row's first occurrence: the one kept
    kept = np.zeros(len(ids_array), dtype=bool)
    kept[first] = True
    result.num_captions = len(first)
    result.duplicates = len(ids_array) - len(first)
    result.label_conflicts = int(np.count_nonzero(codes != codes[first_of]))
    labels = _class_ids(path, result, codes[kept], list(label_code))  # -1: unlabelled

    digest = hashlib.sha256(repr(result.class_names).encode())
    kept_ids, step = ids_array[kept], 1 << 16
    for start in range(0, len(kept_ids), step):
        ids, codes_of = kept_ids[start : start + step], labels[start : start + step]
        chunk = zip(ids.tolist(), codes_of.tolist(), strict=True)
        digest.update("".join(f"{cid:016x}\t{_label(label)}\n" for cid, label in chunk).encode())
    result.digest = digest.hexdigest()

    index = np.cumsum(kept) - 1  # a kept row's position among the kept ones
    mine = kept & (index % num_parts == part_index)
    with_duplicates = np.zeros(len(ids_array), dtype=bool)
    with_duplicates[first_of[~kept]] = True
    needed = mine | ~kept | with_duplicates
    texts_of_first: dict[int, str] = {}  # row -> text, for rows whose caption repeats later
    row_at = dict(
        zip(
            np.frombuffer(ordinals, dtype=np.int64)[needed].tolist(),
            np.flatnonzero(needed).tolist(),
            strict=True,
        )
    )
    for ordinal, (number, text, _) in enumerate(rows(CaptionSet(captions=[], class_names=None))):
        row = row_at.get(ordinal)
        if row is None:
            continue
        text = normalize_caption(text)
        if with_duplicates[row]:
            texts_of_first[row] = text
        if not kept[row]:
            if texts_of_first[first_of[row]] != text:
                raise DataGenError(
                    f"{path}:{number}: caption id {int(ids_array[row]):016x} collides with a "
                    "different caption"
                )
        elif mine[row]:
            position = int(index[row])
            cid = f"{int(ids_array[row]):016x}"
            result.captions.append(Caption(position, cid, text, _label(int(labels[position]))))
    return result


def _label(class_id: int) -> int | None:
    return None if class_id < 0 else class_id


def _class_ids(
    path: Path, result: CaptionSet, kept_codes: np.ndarray, label_texts: list[str]
) -> np.ndarray:
    """The class id of each kept caption (-1 when unlabelled); sets ``result.class_names``."""
    if kept_codes[0] < 0:
        return np.full(len(kept_codes), -1, dtype=np.int64)
    used = [label_texts[code] for code in np.unique(kept_codes).tolist()]
    if all(_INTEGER.match(label) for label in used):
        values = {label: int(label) for label in used}
        if min(values.values()) < 0:
            raise DataGenError(
                f"{path}: label {min(values.values())} is negative; integer labels must be >= 0"
            )
        result.class_names = [str(i) for i in range(max(values.values()) + 1)]
    else:
        result.class_names = sorted(used)
        values = {name: i for i, name in enumerate(result.class_names)}
    to_class = np.array([values.get(label, -1) for label in label_texts], dtype=np.int64)
    return to_class[kept_codes]
