"""Caption index: a data set's captions in flat arrays, memory-mapped by every rank and worker.

For ``N`` captions it holds no Python object per caption: ids and caption texts as UTF-8 blobs with
offsets, labels (-1 = none) and image counts as int32, and image paths as an extension code per
caption when they follow the writers' rule (derived from the id) or as stored paths otherwise. It
is built once from ``manifest.jsonl`` (or the authors' CSV), validating every row with the
readers' one-line errors, and saved beside its source as ``<source>.index`` (or in the cache when
that folder is read-only, :func:`~solo_stablerep.storage.derived_file_paths`). Opening maps it
read-only: milliseconds, one copy in the page cache for all ranks and workers of a node.

Index file (version 1)::

    8 bytes  magic b"SRCAPIDX"
    8 bytes  header length H (little-endian)
    H bytes  JSON header: version, source signature, class_names, extensions, arrays (dtype, shape,
             offset), file_size
    arrays   each at a 64-byte aligned offset

The source signature (size, mtime_ns, SHA-1 of its first line, CSV header flag) says which source
the index describes: an index whose signature, version, magic or size differ, or whose arrays are
inconsistent (damage behind a valid header), is rebuilt, never trusted. Builds run under an
exclusive ``flock`` on the source, so the ranks of a node opening an unindexed manifest build it
once. Errors name the source where it is now (a data set copied with its index names its new place).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import mmap
import os
from array import array
from collections.abc import Iterable, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from solo_stablerep.data.manifest import (
    MANIFEST_NAME,
    CaptionColumns,
    CaptionIds,
    CaptionRecord,
    Strings,
    check_relative_path,
    image_component,
    image_stem,
    scan_manifest,
    write_manifest,
)
from solo_stablerep.errors import ManifestError, SyntheticDataError
from solo_stablerep.storage import (
    Progress,
    atomic_output,
    cache_dir,
    derived_file_paths,
    exclusive_lock,
    remove_stale_temps,
    unlimited_csv_fields,
    write_first_writable,
)

CAPTION_INDEX_VERSION = 1
CAPTION_INDEX_SUFFIX = ".index"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_MAGIC = b"SRCAPIDX"
_ALIGN = 64
_CUSTOM_PATHS = 255  # extension code of a caption whose image paths are stored

log = logging.getLogger(__name__)


class _IndexBuilder:
    """Accumulates captions into compact growable arrays (about 20 B + text per caption), a block of
    captions at a time."""

    def __init__(self):
        self.ids, self.texts, self.paths = CaptionIds(), Strings(), Strings()
        self.labels, self.num_images = array("i"), array("i")
        self.ext_codes = array("B")
        self.extensions: list[str] = []
        self._codes: dict[str, int] = {}  # extension -> its code
        self.path_counts = array("q")  # stored paths so far, after each caption
        self._pending: list[tuple[CaptionRecord, str | None]] = []  # added one by one

    def add(self, record: CaptionRecord, rule_ext: str | None) -> None:
        """Adds a caption (``rule_ext``: :func:`~.manifest.rule_extension`'s)."""
        self._pending.append((record, rule_ext))
        if len(self._pending) == 65536:
            self._add_pending()

    def _add_pending(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self.extend(CaptionColumns.of_records(pending))

    def extend(self, columns: CaptionColumns) -> None:
        """Adds a block of captions. A rule caption whose extension would be the 256th keeps its
        paths (no room for its code)."""
        self._add_pending()
        self.ids.extend(columns.ids)
        self.texts.extend(columns.texts)
        self.labels.extend(columns.labels)
        self.num_images.extend(columns.num_images)
        for ext in dict.fromkeys(columns.exts):  # in the order they first appear
            if ext is not None and ext not in self._codes and len(self._codes) < _CUSTOM_PATHS:
                self._codes[ext] = len(self.extensions)
                self.extensions.append(ext)
        codes = list(map(self._codes.get, columns.exts, repeat(_CUSTOM_PATHS)))
        self.ext_codes.extend(codes)
        if _CUSTOM_PATHS not in codes:
            self.path_counts.extend(repeat(len(self.paths), len(codes)))
            return
        for i, code in enumerate(codes):
            if code == _CUSTOM_PATHS:
                self.paths.extend(columns.image_paths(i))
            self.path_counts.append(len(self.paths))

    def arrays(self) -> dict:
        """The index arrays, sharing the builder's buffers where no leading 0 is needed."""
        self._add_pending()

        def view(buffer, dtype) -> np.ndarray:
            return np.frombuffer(buffer, dtype) if len(buffer) else np.empty(0, dtype)

        def offsets(ends: array) -> np.ndarray:
            return np.concatenate([np.zeros(1, np.int64), view(ends, np.int64)])

        return {
            "id_offsets": offsets(self.ids.ends),
            "id_blob": view(self.ids.blob, np.uint8),
            "text_offsets": offsets(self.texts.ends),
            "text_blob": view(self.texts.blob, np.uint8),
            "labels": view(self.labels, np.int32),
            "num_images": view(self.num_images, np.int32),
            "ext_codes": view(self.ext_codes, np.uint8),
            "path_starts": offsets(self.path_counts),
            "path_offsets": offsets(self.paths.ends),
            "path_blob": view(self.paths.blob, np.uint8),
        }


def _signature(source: Path, csv_header: bool | None) -> dict:
    """What an index must match to describe ``source`` as it is now."""
    stat = source.stat()
    with open(source, "rb") as f:
        first_line = f.readline(1 << 16)
    return {
        "name": source.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "first_line_sha1": hashlib.sha1(first_line).hexdigest(),
        "csv_header": csv_header,
    }


def _write_index(path: Path, arrays: dict, meta: dict) -> None:
    layout, offset = {}, 0
    for name, values in arrays.items():
        layout[name] = {"dtype": values.dtype.str, "shape": list(values.shape), "offset": offset}
        offset = -(-(offset + values.nbytes) // _ALIGN) * _ALIGN
    # array offsets are relative to the end of the (padded) header, so the header can state them
    header = dict(meta, version=CAPTION_INDEX_VERSION, arrays=layout)
    text = json.dumps(header, ensure_ascii=False).encode()
    start = -(-(16 + len(text) + 48) // _ALIGN) * _ALIGN  # room for the file_size field below
    header["file_size"] = start + offset
    text = json.dumps(header, ensure_ascii=False).encode()
    assert 16 + len(text) <= start
    text += b" " * (start - 16 - len(text))
    with atomic_output(path) as f:
        f.write(_MAGIC + len(text).to_bytes(8, "little") + text)
        for name, values in arrays.items():
            f.seek(start + layout[name]["offset"])
            f.write(memoryview(np.ascontiguousarray(values)).cast("B"))
        f.truncate(start + offset)


def _map_index(path: Path, signature: dict | None) -> tuple[dict, dict] | None:
    """(header, arrays) of a valid index file at ``path``, or None if absent, truncated, of another
    version or (``signature`` given) of another source."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _MAGIC:
                return None
            length = int.from_bytes(f.read(8), "little")
            size = os.fstat(f.fileno()).st_size
            if length > size:
                return None
            header = json.loads(f.read(length))
            if (
                not isinstance(header, dict)
                or header.get("version") != CAPTION_INDEX_VERSION
                or header.get("file_size") != size
                or (signature is not None and header.get("source") != signature)
                or not isinstance(header.get("extensions"), list)
            ):
                return None
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(buffer, "madvise"):  # captions are read at random: no read-ahead
            buffer.madvise(mmap.MADV_RANDOM)
        arrays = {}
        for name, spec in header["arrays"].items():
            count = int(np.prod(spec["shape"], dtype=np.int64))
            values = np.frombuffer(buffer, spec["dtype"], count, 16 + length + spec["offset"])
            arrays[name] = values.reshape(spec["shape"])
    except (OSError, AttributeError, KeyError, TypeError, ValueError):  # rebuilt, as stale
        return None
    return header, arrays


class _Column(Sequence):
    """Ids or caption texts of an index, decoded on access."""

    def __init__(self, index: CaptionIndex, field: str):
        self._index, self._field = index, field

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(f"caption {i} out of range for {len(self)} captions")
        return self._index._text(self._field, i % len(self))


class CaptionIndex:
    """Captions of a synthetic data set, their labels and image paths, memory-mapped.

    Open with :meth:`from_manifest` or :meth:`from_authors_csv`. Image ``k`` of caption ``i`` is
    ``roots[0] / <its k-th path>`` (manifest layout) or ``roots[k] / <its one path>`` (authors'
    layout, one root per generation seed). Pickling keeps only the file's path, so DataLoader
    workers and spawned processes map the same file.

    Attributes:
        source (str): the manifest or CSV the index describes, where it is now.
        class_names (Optional[List[str]]): None when unlabelled.
        labels (np.ndarray): int32 label of each caption, -1 when unlabelled.
        caption_ids, captions (Sequence[str]): decoded on access.
    """

    def __init__(self, index_path: Path, roots: Sequence, root_per_image: bool, source):
        mapped = _map_index(index_path, signature=None)
        if mapped is None:
            raise SyntheticDataError(
                f"{index_path}: caption index of {source} unreadable or "
                "truncated; delete it: it is rebuilt at the next open"
            )
        self._state = (Path(index_path), [Path(r) for r in roots], root_per_image, str(source))
        self.index_path, self.roots, self._root_per_image, self.source = self._state
        self._header, self._arrays = mapped
        self.class_names = self._header["class_names"]
        self._extensions = self._header["extensions"]
        self.labels = self._arrays["labels"]
        self.caption_ids, self.captions = _Column(self, "id"), _Column(self, "text")

    def __getstate__(self):
        return self._state

    def __setstate__(self, state):
        self.__init__(*state)

    @classmethod
    def from_manifest(cls, root: str | Path) -> CaptionIndex:
        source = Path(root) / MANIFEST_NAME
        if not source.is_file():
            raise ManifestError(f"{source}: manifest not found")
        return cls(_ensure_index(source, None), [Path(root)], False, source)

    @classmethod
    def from_authors_csv(cls, csv_path, roots: Sequence, header: bool = False) -> CaptionIndex:
        """The authors' CSV of ``relative image path,caption`` rows; caption id = the row's 1-based
        position in the CSV (a header row counted); errors give the file's line number."""
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise ManifestError(f"{csv_path}: caption CSV (data.synthetic.csv) not found")
        if not roots:
            raise ManifestError(
                f"{csv_path}: data.synthetic.roots is empty (need one root per seed)"
            )
        for root in roots:
            if not Path(root).is_dir():
                raise ManifestError(f"{root}: image root folder (data.synthetic.roots) not found")
        return cls(_ensure_index(csv_path, bool(header)), roots, True, csv_path)

    def __len__(self) -> int:
        return len(self.labels)

    def _text(self, field: str, j: int) -> str:
        """Entry ``j`` of a blob (``id``, ``text`` or ``path``), decoded."""
        offsets, blob = self._arrays[f"{field}_offsets"], self._arrays[f"{field}_blob"]
        try:
            return blob[offsets[j] : offsets[j + 1]].tobytes().decode()
        except UnicodeDecodeError:
            what = f"stored image path {j}" if field == "path" else f"{field} of caption {j}"
            raise SyntheticDataError(
                f"{self.index_path}: caption index of {self.source} is corrupt "
                f"({what} is not UTF-8); delete it: it is rebuilt at the next open"
            ) from None

    def num_images(self, i: int) -> int:
        return len(self.roots) if self._root_per_image else int(self._arrays["num_images"][i])

    def image_relpath(self, i: int, k: int) -> str:
        """Path of image ``k`` of caption ``i``, relative to its root."""
        code = int(self._arrays["ext_codes"][i])
        if code != _CUSTOM_PATHS:
            return f"{image_stem(self.caption_ids[i])}_{image_component(k, self._extensions[code])}"
        j = int(self._arrays["path_starts"][i]) + (0 if self._root_per_image else k)
        return self._text("path", j)

    def image_path(self, i: int, k: int) -> Path:
        root = self.roots[k] if self._root_per_image else self.roots[0]
        return root / self.image_relpath(i, k)

    def check(self, n_img: int) -> None:
        """Raises if the index is empty or a caption has fewer than ``n_img`` images."""
        if len(self) == 0:
            raise SyntheticDataError(f"{self.source}: the data set has no captions")
        if self._root_per_image:  # every caption has one image per root
            too_few = [0] if len(self.roots) < n_img else []
        else:
            too_few = np.flatnonzero(self._arrays["num_images"] < n_img)
        if len(too_few):
            i = int(too_few[0])  # the first, as a reader going through the file would report
            raise SyntheticDataError(
                f"{self.source}: caption {self.caption_ids[i]} has {self.num_images(i)} images, "
                f"fewer than data.synthetic.n_img={n_img}"
            )


def _consistency_problem(header: dict, arrays: dict) -> str | None:
    """What makes an index's arrays unusable, or None: damage behind a valid header would surface
    as an IndexError, or wrong captions, deep in training. Vectorised (about 0.2 s at 10M
    captions), in the process that opens the index."""
    try:
        n = len(arrays["labels"])
        for field in ("id", "text", "path"):
            offsets, blob = arrays[f"{field}_offsets"], arrays[f"{field}_blob"]
            if offsets[0] != 0 or offsets[-1] != len(blob) or np.any(offsets[1:] < offsets[:-1]):
                return f"{field} offsets"
        starts, counts, codes = arrays["path_starts"], arrays["num_images"], arrays["ext_codes"]
        lengths = {len(arrays["id_offsets"]), len(arrays["text_offsets"]), len(starts)}
        if lengths | {len(counts) + 1} != {n + 1}:
            return "array lengths"
        if n == 0:
            return None
        classes = len(header["class_names"] or ())
        low, high = int(arrays["labels"].min()), int(arrays["labels"].max())
        if (low, high) != (-1, -1) if not classes else (low < 0 or high >= classes):
            return "labels"
        if counts.min() < 1:
            return "image counts"
        custom = codes == _CUSTOM_PATHS
        if np.any(codes[~custom] >= len(header["extensions"])):
            return "extension codes"
        stored = np.diff(starts)  # paths stored per caption: its image count if custom, else none
        if (
            starts[0] != 0
            or starts[-1] != len(arrays["path_offsets"]) - 1
            or np.any(stored != np.where(custom, counts, 0))
        ):
            return "path starts"
    except (KeyError, IndexError, TypeError, ValueError):
        return "arrays missing or of the wrong shape"
    return None


def _ensure_index(source: Path, csv_header: bool | None) -> Path:
    """Path of a valid index of ``source`` (beside it or in the cache), else built now."""
    candidates = derived_file_paths(source, CAPTION_INDEX_SUFFIX)

    def valid() -> Path | None:
        signature = _signature(source, csv_header)
        for path in candidates:
            mapped = _map_index(path, signature)
            problem = None if mapped is None else _consistency_problem(*mapped)
            if problem is not None:
                log.warning("%s: caption index damaged (%s): rebuilding it", path, problem)
            elif mapped is not None:
                return path
        return None

    if found := valid():
        return found
    with exclusive_lock(source):  # one builder per source; the others wait, then find its index
        if found := valid():
            return found
        for path in candidates:  # left by a build killed (SIGKILL) before its rename
            if path.parent.is_dir():
                remove_stale_temps(path)
        signature = _signature(source, csv_header)
        builder = _IndexBuilder()
        if csv_header is None:
            class_names = _build_from_manifest(source, builder)
        else:
            class_names = _build_from_csv(source, csv_header, builder)
        if _signature(source, csv_header) != signature:
            raise ManifestError(f"{source}: changed while it was being indexed; open it again")
        meta = {"source": signature, "class_names": class_names, "extensions": builder.extensions}
        arrays = builder.arrays()
        del builder
        try:
            return write_first_writable(candidates, lambda path: _write_index(path, arrays, meta))
        except OSError as error:
            raise SyntheticDataError(
                f"{source}: cannot write its caption index beside it or in {cache_dir()} ({error})"
            ) from None


def _build_from_manifest(source: Path, builder: _IndexBuilder) -> list[str] | None:
    path, header, blocks = scan_manifest(source.parent)
    progress = Progress(source, header["num_captions"])
    for columns in blocks:
        builder.extend(columns)
        progress(len(builder.labels))
    builder.ids.check_unique(path)
    return header["class_names"]


def _build_from_csv(source: Path, csv_header: bool, builder: _IndexBuilder) -> None:
    progress = Progress(source, None)
    try:
        with open(source, newline="", encoding="utf-8") as f, unlimited_csv_fields():
            reader = csv.reader(f)
            for row_no, row in enumerate(reader):
                if csv_header and row_no == 0:
                    continue
                where = f"{source}:{reader.line_num}"  # captions may hold quoted newlines
                if len(row) != 2:
                    raise ManifestError(
                        f"{where}: expected 2 columns (path,caption), got {len(row)}"
                    )
                path = check_relative_path(row[0], where)
                if not path.lower().endswith(IMAGE_EXTENSIONS):
                    raise ManifestError(
                        f"{where}: {path!r} is not an image path ({', '.join(IMAGE_EXTENSIONS)})"
                    )
                builder.add(CaptionRecord(str(row_no + 1), row[1], None, [path]), None)
                if row_no % 65536 == 0:
                    progress(row_no)
    except UnicodeDecodeError:  # raised by a read of the rows: reader is set
        line = reader.line_num + 1
        raise ManifestError(
            f"{source}:{line}: not valid UTF-8 (near this line); save the CSV as UTF-8"
        ) from None
    except csv.Error as e:
        raise ManifestError(f"{source}:{reader.line_num}: unreadable CSV ({e})") from None
    return None


def write_indexed_manifest(
    root: str | Path,
    records: Iterable[CaptionRecord],
    *,
    class_names: Sequence[str] | None = None,
    **options,
) -> Path:
    """:func:`~solo_stablerep.data.manifest.write_manifest` (``class_names`` and ``options``: its
    keywords), then its index beside it, built from the records as they are written (no second
    parse); the index stores ``class_names`` too."""
    builder = _IndexBuilder()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    index_path = derived_file_paths(root / MANIFEST_NAME, CAPTION_INDEX_SUFFIX)[0]
    with exclusive_lock(root):  # writers of a root take turns: leftovers of a killed one are stale
        remove_stale_temps(root / MANIFEST_NAME)
        remove_stale_temps(index_path)
        path = write_manifest(
            root, records, class_names=class_names, on_record=builder.add, **options
        )
        meta = {
            "source": _signature(path, None),
            "class_names": None if class_names is None else list(class_names),
            "extensions": builder.extensions,
        }
        arrays = builder.arrays()
        del builder
        _write_index(index_path, arrays, meta)
    return path
