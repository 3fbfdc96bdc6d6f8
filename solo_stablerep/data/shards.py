"""On-disk format of WebDataset tar shards (``stablerep-webdataset`` v1): what training reads.

Layout of a shard folder::

    OUT/webdataset.json            header: format, version, run_id, num_captions, images_per_caption,
                                   image_ext, class_names, generator (free-form settings)
    OUT/<prefix>-000000.tar        samples (POSIX ustar), about 1 GB each
    OUT/<prefix>-000000.idx        index for DALI's ``fn.readers.webdataset`` (wds2idx format v1.2)

A sample is one caption; its members, in this order, are::

    <caption_id>.json              {"caption_id", "caption", "label", "index", "run_id", "num_images"}
    <caption_id>.00.<ext> ... <caption_id>.<m-1:02d>.<ext>     image k of the caption (k = 0..m-1)

The WebDataset key is the caption id (ids hold no ``.``), so readers see the components ``json``,
``00.jpg``, ``01.jpg``, ... (everything after the first dot, the WebDataset and DALI rule). ``index``
is the caption's position in the source caption list; ``run_id`` identifies the generation run (its
settings and caption list), so that shards of two runs mixed in one folder are detected.

The index file is DALI's ``wds2idx`` format: a line ``v1.2 <num_samples>``, then one line per
sample listing each member as ``<ext> <data offset> <size> <member name>`` (offsets in bytes from
the start of the tar, past the member's 512-byte header).

The writer (crash safety, resuming) is :mod:`data_gen.shards`; the loaders are
:mod:`solo_stablerep.data.webdataset`. Only the standard library is used.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from solo_stablerep.errors import InputError

FORMAT_NAME = "stablerep-webdataset"
FORMAT_VERSION = 1
HEADER_NAME = "webdataset.json"
INDEX_VERSION = "v1.2"

# one member of a sample in an index file: (component, data offset, size, member name)
IndexMember = Tuple[str, int, int, str]


class ShardFormatError(InputError):
    """A shard folder, tar or sample is invalid; the message is one line naming the shard and sample."""


def image_member(caption_id: str, k: int, ext: str) -> str:
    """Member name of image ``k`` of a caption: ``<caption_id>.<k:02d>.<ext>``."""
    return f"{caption_id}.{k:02d}.{ext.lstrip('.')}"


def image_component(k: int, ext: str) -> str:
    """WebDataset component (text after the key's dot) of image ``k``: ``00.jpg``, ``01.jpg``, ..."""
    return f"{k:02d}.{ext.lstrip('.')}"


def index_path(tar_path: Path) -> Path:
    """The DALI index beside a tar: ``name.tar`` -> ``name.idx``."""
    return Path(tar_path).with_suffix(".idx")


def make_header(run_id: str, num_captions: int, images_per_caption: int, image_ext: str,
                class_names: Optional[Sequence[str]], generator: Optional[dict]) -> dict:
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
        raise ShardFormatError(f"{path}: shard folder header not found (not written by stablerep-generate?)")
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


def _index_lines(path: Path) -> List[str]:
    """The sample lines of a DALI index file, after checking its header line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: index file missing (write it with the shard writer or wds2idx)") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ShardFormatError(f"{path}:1: not a {INDEX_VERSION} webdataset index header")
    if len(lines) - 1 != int(head[1]):
        raise ShardFormatError(f"{path}: header says {head[1]} samples, {len(lines) - 1} lines follow")
    return lines[1:]


def read_index(path: Path) -> List[List[IndexMember]]:
    """Samples of a DALI index file: per sample, its members as (component, offset, size, name)."""
    return [index_members(line, f"{path}:{number}") for number, line in enumerate(_index_lines(path), start=2)]


def index_members(line: str, where: str) -> List[IndexMember]:
    """The members of the sample of one index line; ``where`` (file:line) names it in the error."""
    fields = line.split()
    if not fields or len(fields) % 4:
        raise ShardFormatError(f"{where}: expected groups of 4 fields (ext offset size name)")
    return [(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]) for i in range(0, len(fields), 4)]


def index_text(samples: Sequence[Sequence[IndexMember]]) -> str:
    """The index file of a tar holding ``samples`` (the inverse of :func:`read_index`)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in s) for s in samples]
    return "\n".join(lines) + "\n"


class IndexedSample(Mapping):
    """One sample of a tar, read through its index line as DALI's reader reads it: a mapping of the
    WebDataset package's shape (``__key__``, ``__url__``, then component -> bytes) whose members are
    copied out of the tar's memory map only when asked for, so a loader that uses n of m images reads
    n of them, and a shuffle buffer holds index lines rather than images.

    Raises ShardFormatError (naming tar and sample) for a member that lies past the tar's end.
    """

    def __init__(self, tar: mmap.mmap, url: str, line: str, where: str):
        self._tar, self._url, self._line, self._where = tar, url, line, where
        self._members: Optional[dict] = None

    def _parsed(self) -> dict:
        if self._members is None:  # parsed on first use: most of a buffer's lines wait a while
            self._members = {ext: (offset, size) for ext, offset, size, _ in index_members(self._line, self._where)}
            self._key = self._line.split(None, 4)[3].split(".", 1)[0]
        return self._members

    def __getitem__(self, component: str):
        members = self._parsed()
        if component == "__key__":
            return self._key
        if component == "__url__":
            return self._url
        offset, size = members[component]
        if offset + size > len(self._tar):
            raise ShardFormatError(f"{self._url}: sample {self._key}: member {component} lies past the tar's "
                                   f"end ({len(self._tar)} bytes; truncated after its index was written?)")
        return self._tar[offset : offset + size]

    def __iter__(self):
        return iter(["__key__", "__url__", *self._parsed()])

    def __len__(self) -> int:
        return 2 + len(self._parsed())


def iter_indexed_samples(tar_path: Path) -> Iterator[IndexedSample]:
    """The samples of a tar in index order, each an :class:`IndexedSample`."""
    path = index_path(tar_path)
    lines = _index_lines(path)
    with open(tar_path, "rb") as f:
        tar = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own handle once f is closed
    for number, line in enumerate(lines, start=2):
        yield IndexedSample(tar, str(tar_path), line, f"{path}:{number}")
