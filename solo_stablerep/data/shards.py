"""On-disk format of WebDataset tar shards (``stablerep-webdataset`` v1): what training reads.

Layout of a shard folder::

    OUT/webdataset.json            header: format, version, run_id, num_captions,
                                   images_per_caption, image_ext, class_names, generator
    OUT/<prefix>-000000.tar        samples (POSIX ustar), about 1 GB each
    OUT/<prefix>-000000.idx        index for DALI's ``fn.readers.webdataset`` (wds2idx format v1.2)

A sample is one caption; its members, in this order, are::

    <caption_id>.json              {"caption_id", "caption", "label", "index", "run_id",
                                    "num_images"}
    <caption_id>.00.<ext> ... <caption_id>.<m-1:02d>.<ext>     image k of the caption (k = 0..m-1)

The WebDataset key is the caption id (ids hold no ``.``), so readers see the components ``json``,
``00.jpg``, ``01.jpg``, ... (everything after the first dot, the WebDataset and DALI rule).
``index`` is the caption's position in the source caption list; ``run_id`` identifies the generation
run (its settings and caption list), so that shards of two runs mixed in one folder are detected.

The tar index (``.idx``) is DALI's ``wds2idx`` format: a line ``v1.2 <num_samples>``, then one line
per sample listing each member as ``<ext> <data offset> <size> <member name>`` (offsets in bytes
from the start of the tar, past the member's 512-byte header).

Shard summary: what opening a shard set needs of each tar (sample count, fewest and most images,
where its index ends, its first sample's ``run_id``), checked once from its index and kept in one
JSON file per shard folder, beside the header or, when the folder is read-only, in
``$XDG_CACHE_HOME/solo-stablerep`` (the caption index's rules, :mod:`solo_stablerep.data.index`)::

    OUT/webdataset.json.summary    {"format", "version", "image_ext", "tars": {<tar name>: entry}}
    entry                          {"key": [tar size, tar mtime_ns, idx size, idx mtime_ns],
                                    "samples", "fewest": [images, caption id], "most", "end",
                                    "first": caption id, "run_id"}

An entry whose key differs from the tar and index on disk (one ``stat`` each) is stale: that tar is
summarised again, so a tar truncated or rewritten after its summary was cached is checked again. A
folder's summary is updated under an exclusive ``flock`` on the folder, so the ranks of a node
opening it at once summarise each tar once; it is written atomically, also when a tar turns out to
be bad (the tars checked before it are kept).

Reading: :func:`iter_indexed_samples` gives a tar's samples through its index lines, each member
read with one ``pread`` at its offset when asked for, as DALI's reader reads them; both training
loaders and the generator's contact sheets read tars this way.

The writer (crash safety, resuming) is :mod:`data_gen.shards`; the loaders are
:mod:`solo_stablerep.data.readers`. Only the standard library is used, and the storage helpers
(:mod:`solo_stablerep.data.storage`).
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from solo_stablerep.data.storage import (
    Progress,
    atomic_output,
    derived_file_paths,
    exclusive_lock,
    image_component,
    image_member,  # noqa: F401 (the members' naming rule of this format)
    remove_stale_temps,
    write_first_writable,
)
from solo_stablerep.errors import ShardFormatError

log = logging.getLogger(__name__)

FORMAT_NAME = "stablerep-webdataset"
FORMAT_VERSION = 1
HEADER_NAME = "webdataset.json"
TAR_INDEX_VERSION = "v1.2"
SUMMARY_SUFFIX = ".summary"
SUMMARY_FORMAT = "stablerep-webdataset-summary"
SUMMARY_VERSION = 1

# one member of a sample in a tar index: (component, data offset, size, member name)
IndexMember = tuple[str, int, int, str]


def tar_index_path(tar_path: Path) -> Path:
    """The tar index beside a tar: ``name.tar`` -> ``name.idx``."""
    return Path(tar_path).with_suffix(".idx")


def make_header(
    run_id: str,
    num_captions: int,
    images_per_caption: int,
    image_ext: str,
    class_names: Sequence[str] | None,
    generator: dict | None,
) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "run_id": run_id,
        "num_captions": num_captions,
        "images_per_caption": images_per_caption,
        "image_ext": image_ext.lstrip("."),
        "class_names": None if class_names is None else list(class_names),
        "generator": generator,
    }


def read_header(folder: Path) -> dict:
    path = Path(folder) / HEADER_NAME
    if not path.is_file():
        raise ShardFormatError(
            f"{path}: shard folder header not found (not written by stablerep-generate?)"
        )
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ShardFormatError(f"{path}: not valid JSON ({e})") from None
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise ShardFormatError(
            f"{path}: format {header.get('format')!r} version {header.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )
    return header


_REWRITE = "rewrite it (reconvert the shard, or wds2idx)"


def tar_index_lines(path: Path) -> tuple[int, list[str]]:
    """(samples its header line announces, the sample lines) of a tar index."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ShardFormatError(
            f"{path}: tar index missing (write it with the shard writer or wds2idx)"
        ) from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ShardFormatError(
            f"{path}:{line}: not UTF-8 text (a damaged index?); {_REWRITE}"
        ) from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != TAR_INDEX_VERSION or not head[1].isdigit():
        raise ShardFormatError(
            f"{path}:1: not a {TAR_INDEX_VERSION} tar index header (DALI's wds2idx format)"
        )
    return int(head[1]), lines[1:]


def _member_fields(path: Path, number: int, line: str) -> list[str]:
    fields = line.split()
    if not fields or len(fields) % 4:
        raise ShardFormatError(
            f"{path}:{number}: expected groups of 4 fields (ext offset size name); {_REWRITE}"
        )
    return fields


def _bad_number(path: Path, number: int, fields: Sequence[str]) -> ShardFormatError:
    bad = next(f for f in fields[1::4] + fields[2::4] if not f.isdigit())
    return ShardFormatError(
        f"{path}:{number}: offset or size {bad!r} is not a non-negative integer; {_REWRITE}"
    )


def _members(path: Path, number: int, line: str) -> list[IndexMember]:
    """The members (component, offset, size, name) of the sample on line ``number`` of index
    ``path``."""
    fields = _member_fields(path, number, line)
    try:
        members = [
            (fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
            for i in range(0, len(fields), 4)
        ]
    except ValueError:  # (a negative offset or size is named when read)
        raise _bad_number(path, number, fields) from None
    return members


def _check_count(path: Path, announced: int, lines: Sequence[str]) -> None:
    if len(lines) != announced:
        raise ShardFormatError(
            f"{path}: header says {announced} samples, {len(lines)} lines follow"
        )


def read_tar_index(path: Path) -> list[list[IndexMember]]:
    """Samples of a tar index: per sample, its members as (component, offset, size, name)."""
    announced, lines = tar_index_lines(path)
    samples = [_members(path, number, line) for number, line in enumerate(lines, start=2)]
    _check_count(path, announced, samples)
    return samples


def tar_index_text(samples: Sequence[Sequence[IndexMember]]) -> str:
    """The tar index of a tar holding ``samples`` (the inverse of :func:`read_tar_index`)."""
    lines = [f"{TAR_INDEX_VERSION} {len(samples)}"]
    lines += [
        " ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in s) for s in samples
    ]
    return "\n".join(lines) + "\n"


def _summary_key(tar: Path) -> list | None:
    """[tar size, tar mtime_ns, idx size, idx mtime_ns]; None when the index is missing."""
    try:
        tar_stat, idx_stat = tar.stat(), tar_index_path(tar).stat()
    except FileNotFoundError:
        return None
    return [tar_stat.st_size, tar_stat.st_mtime_ns, idx_stat.st_size, idx_stat.st_mtime_ns]


def summarise_tar(tar: Path, image_ext: str) -> dict:
    """The summary entry of one tar, from its index and its first sample's JSON; raises
    :class:`ShardFormatError` naming the tar (and sample, or index line) if either is unusable:
    index missing or malformed, no sample, tar shorter than its index says, a sample without its
    JSON first or lacking images (components ``00.<ext>``, ``01.<ext>``, ... in order)."""
    key = _summary_key(
        tar
    )  # taken before reading: a tar changed meanwhile is stale at the next open
    path = tar_index_path(tar)
    announced, lines = tar_index_lines(path)
    expected: dict[int, list[str]] = {}  # image count -> its components
    end, most, fewest, problem = 0, 0, None, None
    for number, line in enumerate(lines, start=2):
        fields = _member_fields(path, number, line)
        if not all(f.isdigit() for f in fields[1::4] + fields[2::4]):
            raise _bad_number(path, number, fields)
        # a sample's members are stored in order (WebDataset groups them): its last one ends it
        end = max(end, int(fields[-3]) + int(fields[-2]))
        if problem is not None:
            continue
        caption_id = fields[3].split(".", 1)[0]
        count = len(fields) // 4 - 1
        if count not in expected:
            expected[count] = [image_component(k, image_ext) for k in range(count)]
        if fields[0] != "json":
            problem = f"{tar}: sample {caption_id} has no .json metadata first"
        elif fields[4::4] != expected[count]:
            problem = f"{tar}: sample {caption_id} lacks some of its images (has {fields[4::4]})"
        most = max(most, count)
        if fewest is None or count < fewest[0]:
            fewest = [count, caption_id]
    _check_count(path, announced, lines)
    if not lines:
        raise ShardFormatError(f"{tar}: shard holds no sample")
    size = tar.stat().st_size
    if size < end:
        raise ShardFormatError(f"{tar}: truncated ({size} bytes, its tar index reaches {end})")
    if problem is not None:
        raise ShardFormatError(problem)
    _, offset, length, name = lines[0].split()[:4]
    first = name.split(".", 1)[0]
    with open(tar, "rb") as f:
        f.seek(int(offset))
        meta = sample_meta(f.read(int(length)), tar, first)
    return {
        "key": key,
        "samples": len(lines),
        "fewest": fewest,
        "most": most,
        "end": end,
        "first": first,
        "run_id": meta["run_id"],
    }


_META_TYPES = {"caption_id": str, "caption": str, "index": int, "run_id": str, "num_images": int}


def sample_meta(data: bytes, tar, key: str) -> dict:
    """A sample's ``.json`` metadata, checked: an object with the writer's fields of the right
    types; else ShardFormatError naming tar and sample (not valid JSON or UTF-8, not an object, a
    field missing or of another type). Read at every visit of a sample: the check is one
    expression (a loop over the fields cost the DALI source 2 us a sample)."""
    try:
        meta = json.loads(data)
        label = meta["label"]
        if (
            isinstance(meta["caption_id"], str)
            and isinstance(meta["caption"], str)
            and isinstance(meta["index"], int)
            and isinstance(meta["run_id"], str)
            and isinstance(meta["num_images"], int)
            and (label is None or isinstance(label, int))
        ):
            return meta
    except ValueError as e:  # UnicodeDecodeError included
        raise ShardFormatError(
            f"{tar}: sample {key}: its .json metadata is not valid JSON ({str(e).splitlines()[0]})"
        ) from None
    except (KeyError, TypeError):  # a field missing, or not an object: named below
        pass
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{tar}: sample {key}: its .json metadata is not a JSON object")
    for field, kind in _META_TYPES.items():
        if not isinstance(meta.get(field), kind):
            raise ShardFormatError(
                f"{tar}: sample {key}: its .json metadata lacks {field} "
                f"(or it is not a {kind.__name__})"
            )
    raise ShardFormatError(
        f"{tar}: sample {key}: its .json metadata lacks label (null or an integer)"
    )


def _load_summary(path: Path, image_ext: str) -> dict[str, dict]:
    """Entries of a summary file; none if it is missing, unreadable, of another version or image
    extension (a valid summary's entries are still checked against their tars)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(summary, dict)
        or summary.get("format") != SUMMARY_FORMAT
        or summary.get("version") != SUMMARY_VERSION
        or summary.get("image_ext") != image_ext
        or not isinstance(summary.get("tars"), dict)
    ):
        return {}
    return summary["tars"]


def _matching_entries(
    candidates: Sequence[Path], tars: Sequence[Path], keys: Sequence[list | None], image_ext: str
) -> tuple[dict[str, dict], dict[str, dict]]:
    """(all entries of a folder's summary files, those of ``tars`` whose key is the tar's
    ``keys``)."""
    loaded = [_load_summary(path, image_ext) for path in candidates]
    known: dict[str, dict] = {}
    for entries in reversed(loaded):
        known.update(entries)
    current = {}
    for tar, key in zip(tars, keys, strict=True):
        for entries in loaded:  # beside the folder, else (read-only folder) in the cache
            entry = entries.get(tar.name)
            if key is not None and isinstance(entry, dict) and entry.get("key") == key:
                current[tar.name] = entry
                break
    return known, current


def _save_summary(
    candidates: Sequence[Path], folder: Path, entries: dict[str, dict], image_ext: str
) -> None:
    """Writes the entries of the folder's tars still there; only warns if no place is writable (the
    summary saves time, the tars were checked)."""
    present = set(os.listdir(folder))
    summary = {
        "format": SUMMARY_FORMAT,
        "version": SUMMARY_VERSION,
        "image_ext": image_ext,
        "tars": {name: entry for name, entry in sorted(entries.items()) if name in present},
    }

    def write(path: Path) -> None:
        with atomic_output(path, "w", encoding="utf-8") as f:
            json.dump(summary, f, separators=(",", ":"))

    try:
        write_first_writable(candidates, write)
    except OSError as error:
        log.warning(
            "%s: cannot save its shard summary beside it or in the cache (%s); the next open "
            "checks its tars again",
            folder,
            error,
        )


def _folder_summaries(
    folder: Path,
    tars: Sequence[Path],
    image_ext: str,
    on_bad: Callable[[Path, str], None] | None,
) -> dict[str, dict]:
    """Entries of ``tars`` (all in ``folder``) by tar name, cached or summarised now (and saved); a
    bad tar raises, or with ``on_bad`` is passed to it with the error and left out."""
    candidates = derived_file_paths(folder / HEADER_NAME, SUMMARY_SUFFIX)
    keys = [_summary_key(tar) for tar in tars]
    _, current = _matching_entries(candidates, tars, keys, image_ext)
    if len(current) == len(tars):
        return current
    with exclusive_lock(
        folder
    ):  # one summariser per folder; the others wait, then find its entries
        for path in candidates:  # left by a summariser killed (SIGKILL) before its rename
            if path.parent.is_dir():
                remove_stale_temps(path)
        known, current = _matching_entries(candidates, tars, keys, image_ext)
        stale = [tar for tar in tars if tar.name not in current]
        progress = Progress(folder, len(stale), doing="checking the shard indexes of", unit="tars")
        try:
            for done, tar in enumerate(stale, start=1):
                try:
                    current[tar.name] = summarise_tar(tar, image_ext)
                except ShardFormatError as e:
                    if on_bad is None:
                        raise
                    on_bad(tar, str(e))
                progress(done)
        finally:  # also when a tar is bad: the ones checked before it are kept
            if len(current) > len(tars) - len(stale):
                _save_summary(candidates, folder, {**known, **current}, image_ext)
    return current


def tar_summaries(
    tars: Sequence[Path], image_ext: str, on_bad: Callable[[Path, str], None] | None = None
) -> list[dict | None]:
    """The summary entry of each tar, in order (see the module docstring): one ``stat`` of each tar
    and index when the cached summaries are current, else the stale tars' indexes are read. A tar
    that cannot be used raises :class:`ShardFormatError`, or, with ``on_bad(tar, error line)``, is
    passed to it and its entry is None."""
    by_folder: dict[Path, list[Path]] = {}
    for tar in tars:
        by_folder.setdefault(tar.parent, []).append(tar)
    entries = {
        folder: _folder_summaries(folder, group, image_ext, on_bad)
        for folder, group in by_folder.items()
    }
    return [entries[tar.parent].get(tar.name) for tar in tars]


class _TarReader:
    """Reads byte ranges of one tar with ``pread`` on a descriptor held while any sample of the tar
    is (plain reads from the page cache: memory-mapping the tars cost DALI's threads page-table
    work and measurably slowed the loader)."""

    def __init__(self, path: Path):
        self.path = str(path)
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, size: int, key: str, component: str) -> bytes:
        if offset + size > self.size:
            raise ShardFormatError(
                f"{self.path}: sample {key}: member {component} lies past the tar's "
                f"end ({self.size} bytes; truncated after its tar index was written?)"
            )
        if offset < 0 or size < 0:  # a damaged index line
            raise ShardFormatError(
                f"{self.path}: sample {key}: member {component} at offset {offset}, "
                f"size {size} in its tar index; {_REWRITE}"
            )
        return os.pread(self._fd, size, offset)


class IndexedSample(Mapping):
    """One sample of a tar, read through its index line as DALI's reader reads it: a mapping of the
    WebDataset package's shape (``__key__``, ``__url__``, then component -> bytes) whose members are
    read only when asked for, so a loader that uses n of m images reads n of them, and a shuffle
    buffer holds index lines rather than images.

    Raises ShardFormatError (naming tar and sample, or index line) for a malformed index line or a
    member that lies past the tar's end.
    """

    def __init__(self, tar: _TarReader, index: Path, number: int, line: str):
        self._tar, self._index, self._number, self._line = tar, index, number, line
        self._members: dict | None = None

    def _parsed(self) -> dict:
        if self._members is None:  # parsed on first use: most of a buffer's lines wait a while
            members = _members(self._index, self._number, self._line)
            self._members = {component: (offset, size) for component, offset, size, _ in members}
            self._key = members[0][3].split(".", 1)[0]
        return self._members

    def __getitem__(self, component: str):
        if component == "__url__":  # no parsing needed: names the tar also when the line is bad
            return self._tar.path
        members = self._parsed()
        if component == "__key__":
            return self._key
        return self._tar.read(*members[component], self._key, component)

    def __iter__(self):
        return iter(["__key__", "__url__", *self._parsed()])

    def __len__(self) -> int:
        return 2 + len(self._parsed())


def iter_indexed_samples(tar_path: Path) -> Iterator[IndexedSample]:
    """The samples of a tar in index order, each an :class:`IndexedSample`."""
    path = tar_index_path(tar_path)
    announced, lines = tar_index_lines(path)
    _check_count(path, announced, lines)
    tar = _TarReader(tar_path)
    for number, line in enumerate(lines, start=2):
        yield IndexedSample(tar, path, number, line)
