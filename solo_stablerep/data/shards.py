"""On-disk format of WebDataset tar shards (``stablerep-webdataset`` v1): what training reads.

A shard folder::

    OUT/webdataset.json            header: format, version, run_id, num_captions,
                                   images_per_caption, image_ext, class_names, generator
    OUT/<prefix>-000000.tar        samples (POSIX ustar), about 1 GB each
    OUT/<prefix>-000000.idx        its tar index (DALI's wds2idx format v1.2)

A sample is one caption; its members, in this order: ``<caption_id>.json`` (``caption_id``,
``caption``, ``label``, ``index``: the caption's position in the caption list, ``run_id``: the
generation run, so that shards of two runs mixed in one folder are detected, ``num_images``), then
``<caption_id>.<k:02d>.<ext>`` for k = 0..m-1. The WebDataset key is the caption id (it holds no
``.``), the components ``json``, ``00.jpg``, ... The tar index is a line ``v1.2 <num_samples>``,
then a line per sample listing each member as ``<ext> <data offset> <size> <member name>``.

Shard summary: per tar, what opening a shard set needs (sample count, fewest and most images, where
its index ends, its first sample's ``run_id``), kept in ``OUT/webdataset.json.summary`` (or the
cache, :func:`~solo_stablerep.storage.derived_file_paths`) under the key ``[tar size, tar
mtime_ns, idx size, idx mtime_ns]``: an entry whose key differs from the files is summarised again.

Samples are read through their index line (:func:`iter_indexed_samples`), each member with one
``pread`` when asked for, as DALI reads them. The writer is :mod:`data_gen.shards`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import weakref
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from pathlib import Path

from solo_stablerep.data.manifest import image_component
from solo_stablerep.errors import ShardFormatError, first_line
from solo_stablerep.storage import (
    Progress,
    atomic_write_bytes,
    derived_file_paths,
    exclusive_lock,
    remove_stale_temps,
    write_first_writable,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "stablerep-webdataset"
FORMAT_VERSION = 1
HEADER_NAME = "webdataset.json"
_HEADER_KEYS = {"run_id", "num_captions", "image_ext", "class_names"}  # what readers read
TAR_INDEX_VERSION = "v1.2"
SUMMARY_SUFFIX = ".summary"
SUMMARY_FORMAT = {"format": "stablerep-webdataset-summary", "version": 1}
_REWRITE = "rewrite it (reconvert the shard, or wds2idx)"

IndexMember = tuple[str, int, int, str]  # (component, data offset, size, member name)
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # a byte of invalid UTF-8, decoded with surrogateescape


def image_member(caption_id: str, k: int, ext: str) -> str:
    """Tar member name of image ``k`` of a caption: ``<caption_id>.<k:02d>.<ext>``."""
    return f"{caption_id}.{image_component(k, ext)}"


def tar_index_path(tar_path: Path) -> Path:
    return Path(tar_path).with_suffix(".idx")


def make_header(run_id, num_captions, images_per_caption, image_ext, class_names, generator):
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
    if not isinstance(header, dict):
        raise ShardFormatError(f"{path}: a JSON {type(header).__name__}, not the header's object")
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise ShardFormatError(
            f"{path}: format {header.get('format')!r} version {header.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )
    if missing := _HEADER_KEYS - header.keys():
        raise ShardFormatError(f"{path}: header lacks {sorted(missing)}")
    return header


def tar_index_lines(path: Path) -> list[str]:
    """The sample lines of a tar index, checked against the count its first line announces."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ShardFormatError(
            f"{path}: tar index missing (write it with the shard writer or wds2idx)"
        ) from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:  # each damaged line is named when it is parsed (_members)
        lines = data.decode("utf-8", "surrogateescape").splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != TAR_INDEX_VERSION or not head[1].isdigit():
        raise ShardFormatError(
            f"{path}:1: not a {TAR_INDEX_VERSION} tar index header (DALI's wds2idx format)"
        )
    if len(lines) - 1 != int(head[1]):
        raise ShardFormatError(
            f"{path}: header says {head[1]} samples, {len(lines) - 1} lines follow"
        )
    return lines[1:]


def _members(path: Path, number: int, line: str, signed_ok: bool = True) -> list[IndexMember]:
    """The members of the sample on line ``number`` of tar index ``path``; a negative offset or
    size is refused here unless ``signed_ok`` (then when the member is read: the hot path)."""
    if not line.isascii() and _NOT_UTF8.search(line):  # bytes tar_index_lines kept as escapes
        raise ShardFormatError(f"{path}:{number}: not UTF-8 text (a damaged index?); {_REWRITE}")
    fields = line.split()
    if not fields or len(fields) % 4:
        raise ShardFormatError(
            f"{path}:{number}: expected groups of 4 fields (ext offset size name); {_REWRITE}"
        )
    try:
        members = [
            (fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
            for i in range(0, len(fields), 4)
        ]
        if signed_ok or min(min(m[1], m[2]) for m in members) >= 0:
            return members
    except ValueError:
        pass
    bad = next(f for f in fields[1::4] + fields[2::4] if not f.isdigit())
    raise ShardFormatError(
        f"{path}:{number}: offset or size {bad!r} is not a non-negative integer; {_REWRITE}"
    )


def read_tar_index(path: Path) -> list[list[IndexMember]]:
    return [_members(path, n, line) for n, line in enumerate(tar_index_lines(path), start=2)]


def tar_index_text(samples: Sequence[Sequence[IndexMember]]) -> str:
    """The tar index of a tar holding ``samples`` (the inverse of :func:`read_tar_index`)."""
    lines = [f"{TAR_INDEX_VERSION} {len(samples)}"]
    lines += [
        " ".join(f"{e} {offset} {size} {name}" for e, offset, size, name in s) for s in samples
    ]
    return "\n".join(lines) + "\n"


def _summary_key(tar: Path) -> list | None:
    try:
        tar_stat, idx_stat = tar.stat(), tar_index_path(tar).stat()
    except FileNotFoundError:
        return None
    return [tar_stat.st_size, tar_stat.st_mtime_ns, idx_stat.st_size, idx_stat.st_mtime_ns]


def _sample_members(
    tar: Path, path: Path, number: int, line: str, components: dict[int, list[str]], image_ext: str
) -> list[IndexMember]:
    """The members of the sample on line ``number`` of ``tar``'s index ``path``, checked as opening
    the set checks them (``components``: each image count's image components, filled on the way);
    raises :class:`ShardFormatError` naming the line, or the tar and sample."""
    members = _members(path, number, line, signed_ok=False)
    caption_id, count = members[0][3].split(".", 1)[0], len(members) - 1
    if count not in components:
        components[count] = [image_component(k, image_ext) for k in range(count)]
    if members[0][0] != "json":
        raise ShardFormatError(f"{tar}: sample {caption_id} has no .json metadata first")
    found = [m[0] for m in members[1:]]
    if found != components[count]:
        raise ShardFormatError(f"{tar}: sample {caption_id} lacks some of its images (has {found})")
    return members


def summarise_tar(tar: Path, image_ext: str) -> dict:
    """The summary entry of one tar, from its index and its first usable sample's JSON. A damaged
    sample line is noted (``bad_lines``, the line numbers: :func:`bad_line_errors` names them)
    and the tar kept; raises :class:`ShardFormatError` naming the tar (and sample, or index line)
    when the index as a whole (its header, its line count), every sample line, the tar's length
    or the first usable sample's JSON is unusable."""
    key = _summary_key(tar)  # taken before reading: a tar changed meanwhile is stale next time
    path = tar_index_path(tar)
    components: dict[int, list[str]] = {}  # image count -> its components
    end, most, fewest, first, bad, problem = 0, 0, None, None, [], None
    lines = tar_index_lines(path)
    for number, line in enumerate(lines, start=2):
        try:
            members = _sample_members(tar, path, number, line, components, image_ext)
        except ShardFormatError as e:
            bad.append(number)
            problem = problem or str(e)
            continue
        end = max(end, members[-1][1] + members[-1][2])  # a sample's last member ends it
        caption_id, count = members[0][3].split(".", 1)[0], len(members) - 1
        first = first or members[0]
        most = max(most, count)
        if fewest is None or count < fewest[0]:
            fewest = [count, caption_id]
    if not lines:
        raise ShardFormatError(f"{tar}: shard holds no sample")
    if first is None:
        raise ShardFormatError(f"{problem}; no sample line of {path.name} is usable")
    size = tar.stat().st_size
    if size < end:
        raise ShardFormatError(f"{tar}: truncated ({size} bytes, its tar index reaches {end})")
    _, offset, length, name = first
    first_key = name.split(".", 1)[0]
    with open(tar, "rb") as f:
        meta = sample_meta(os.pread(f.fileno(), length, offset), tar, first_key)
    return {
        "key": key,
        "samples": len(lines),
        "fewest": fewest,
        "most": most,
        "end": end,
        "first": first_key,
        "run_id": meta["run_id"],
        "bad_lines": bad,
    }


def bad_line_errors(tar: Path, image_ext: str, numbers: Sequence[int]) -> list[str]:
    """The one-line error of each damaged sample line ``numbers`` of ``tar``'s index (a summary's
    ``bad_lines``), read again so that it names the tar where it is now."""
    path = tar_index_path(tar)
    lines, components, errors = tar_index_lines(path), {}, []
    for number in numbers:
        try:
            _sample_members(tar, path, number, lines[number - 2], components, image_ext)
        except ShardFormatError as e:
            errors.append(str(e))
    return errors


_META_TYPES = {"caption_id": str, "caption": str, "index": int, "run_id": str, "num_images": int}


def sample_meta(data: bytes, tar, key: str) -> dict:
    """A sample's ``.json`` metadata, checked (the writer's fields, of their types); else a
    ShardFormatError naming tar and sample."""
    try:
        meta = json.loads(data)
    except ValueError as e:  # UnicodeDecodeError included
        raise ShardFormatError(
            f"{tar}: sample {key}: its .json metadata is not valid JSON ({first_line(e)})"
        ) from None
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{tar}: sample {key}: its .json metadata is not a JSON object")
    for field, kind in _META_TYPES.items():
        if not isinstance(meta.get(field), kind):
            raise ShardFormatError(
                f"{tar}: sample {key}: its .json metadata lacks {field} "
                f"(or it is not a {kind.__name__})"
            )
    if "label" not in meta or not isinstance(meta["label"], int | None):
        raise ShardFormatError(
            f"{tar}: sample {key}: its .json metadata lacks label (null or an integer)"
        )
    return meta


def _folder_summaries(
    folder: Path, tars: Sequence[Path], image_ext: str, on_bad: Callable | None
) -> dict[str, dict]:
    """Entries of ``tars`` (all in ``folder``) by tar name, cached or summarised now and saved."""
    candidates = derived_file_paths(folder / HEADER_NAME, SUMMARY_SUFFIX)
    keys = {tar.name: _summary_key(tar) for tar in tars}

    def load() -> tuple[dict, dict]:  # (every cached entry, the current ones of ``tars``)
        loaded = []
        for path in candidates:
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
                header = {k: summary[k] for k in SUMMARY_FORMAT}
                ok = header == SUMMARY_FORMAT and summary["image_ext"] == image_ext
                loaded.append(summary["tars"] if ok and isinstance(summary["tars"], dict) else {})
            except (OSError, ValueError, KeyError, TypeError):
                loaded.append({})
        known = {name: e for entries in reversed(loaded) for name, e in entries.items()}
        current = {}
        for name, key in keys.items():  # beside the folder first, then in the cache
            for entries in loaded:
                entry = entries.get(name)
                if key is not None and isinstance(entry, dict) and entry.get("key") == key:
                    current[name] = entry
                    break
        return known, current

    current = load()[1]
    if len(current) == len(tars):
        return current
    with exclusive_lock(folder):  # one summariser per folder; the others then find its entries
        for path in candidates:  # left by a summariser killed (SIGKILL) before its rename
            if path.parent.is_dir():
                remove_stale_temps(path)
        known, current = load()
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
                present = set(os.listdir(folder))
                entries = {n: e for n, e in sorted({**known, **current}.items()) if n in present}
                summary = dict(SUMMARY_FORMAT, image_ext=image_ext, tars=entries)
                data = json.dumps(summary, separators=(",", ":")).encode()
                try:
                    write_first_writable(candidates, lambda path: atomic_write_bytes(path, data))
                except OSError as error:  # the summary saves time only: the tars were checked
                    log.warning(
                        "%s: cannot save its shard summary beside it or in the cache (%s); the "
                        "next open checks its tars again",
                        folder,
                        error,
                    )
    return current


def tar_summaries(
    tars: Sequence[Path], image_ext: str, on_bad: Callable[[Path, str], None] | None = None
) -> list[dict | None]:
    """The summary entry of each tar, in order; a tar that cannot be used raises
    :class:`ShardFormatError`, or with ``on_bad(tar, error line)`` is passed to it (entry None)."""
    by_folder: dict[Path, list[Path]] = {}
    for tar in tars:
        by_folder.setdefault(tar.parent, []).append(tar)
    entries = {f: _folder_summaries(f, group, image_ext, on_bad) for f, group in by_folder.items()}
    return [entries[tar.parent].get(tar.name) for tar in tars]


class _TarReader:
    """``pread`` of one tar's byte ranges on a descriptor held while any of its samples is
    (memory-mapping the tars cost DALI's threads page-table work and slowed the loader)."""

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
    """One sample of a tar as the WebDataset package gives it (``__key__``, ``__url__``, component
    -> bytes), its index line parsed and each member read only when asked for; raises
    ShardFormatError for a malformed line or a member past the tar's end."""

    def __init__(self, tar: _TarReader, index: Path, number: int, line: str):
        self._tar, self._index, self._number, self._line = tar, index, number, line
        self._members: dict | None = None

    def _parsed(self) -> dict:
        if self._members is None:  # on first use: most of a shuffle buffer's lines wait a while
            members = _members(self._index, self._number, self._line)
            self._members = {component: (offset, size) for component, offset, size, _ in members}
            self._key = members[0][3].split(".", 1)[0]
        return self._members

    def __getitem__(self, component: str):
        if component == "__url__":  # names the tar also when the line is bad
            return self._tar.path
        members = self._parsed()
        if component == "__key__":
            return self._key
        return self._tar.read(*members[component], self._key, component)

    def __iter__(self):
        return iter(["__key__", "__url__", *self._parsed()])

    def __len__(self) -> int:
        return 2 + len(self._parsed())


def iter_indexed_samples(tar_path: Path, left_out: Container[int] = ()) -> Iterator[IndexedSample]:
    """A tar's samples, but those on the index lines ``left_out`` (a summary's ``bad_lines``)."""
    path = tar_index_path(tar_path)
    lines = tar_index_lines(path)
    tar = _TarReader(tar_path)
    for number, line in enumerate(lines, start=2):
        if number not in left_out:
            yield IndexedSample(tar, path, number, line)
