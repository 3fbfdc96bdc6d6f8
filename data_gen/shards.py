"""WebDataset tar shards of a StableRep data set: one sample per caption, crash-safe and resumable.

Layout of a shard folder (format ``stablerep-webdataset``, version 1)::

    OUT/webdataset.json            header: format, version, run_id, num_captions, images_per_caption,
                                   image_ext, class_names, generator (free-form settings)
    OUT/<prefix>-000000.tar        samples (POSIX ustar), about ``max_bytes`` each
    OUT/<prefix>-000000.idx        index for DALI's ``fn.readers.webdataset`` (wds2idx format v1.2)
    OUT/records/<prefix>.jsonl     finished tars of writer ``<prefix>``, one JSON line per tar

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

Crash safety: a tar is written as ``.<name>.tar.tmp`` and renamed when complete (after its index),
then recorded in ``records/<prefix>.jsonl`` (one fsynced line). A writer that starts again deletes
its temporary tar and any of its tars that are not recorded, and skips the captions recorded as
done, so a SIGKILL loses at most the tar in progress and a rerun finishes the set with no caption
missing or duplicated. Several writers (processes) share a folder by using different prefixes.

Only the standard library is used (no torch, no image decoding).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Optional, Sequence

FORMAT_NAME = "stablerep-webdataset"
FORMAT_VERSION = 1
HEADER_NAME = "webdataset.json"
RECORDS_DIR = "records"
INDEX_VERSION = "v1.2"
DEFAULT_SHARD_BYTES = 1 << 30  # ~1 GB: large sequential reads, yet many shards per rank at 100M images
_BLOCK = tarfile.BLOCKSIZE
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")


class ShardFormatError(ValueError):
    """A shard folder, tar or sample is invalid; the message is one line naming the shard and sample."""


def image_member(caption_id: str, k: int, ext: str) -> str:
    """Member name of image ``k`` of a caption: ``<caption_id>.<k:02d>.<ext>``."""
    return f"{caption_id}.{k:02d}.{ext.lstrip('.')}"


def image_component(k: int, ext: str) -> str:
    """WebDataset component (text after the key's dot) of image ``k``: ``00.jpg``, ``01.jpg``, ..."""
    return f"{k:02d}.{ext.lstrip('.')}"


def tar_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def index_path(tar_path: Path) -> Path:
    """The DALI index beside a tar: ``name.tar`` -> ``name.idx``."""
    return Path(tar_path).with_suffix(".idx")


def _fsync_write(path: Path, data: bytes) -> None:
    """Write ``path`` under a temporary name, fsync, then rename: readers see all of it or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def read_records(folder: Path) -> list[dict]:
    """Every writer's finished-tar records. A last line without its newline is a write cut short."""
    entries = []
    for log in sorted((Path(folder) / RECORDS_DIR).glob("*.jsonl")):
        lines = log.read_bytes().split(b"\n")
        lines.pop()  # empty, or a line cut short by a crash
        for number, line in enumerate(lines, start=1):
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise ShardFormatError(f"{log}:{number}: corrupt record line (not JSON)") from None
    return entries


def read_index(path: Path) -> list[list[tuple[str, int, int, str]]]:
    """Samples of a DALI index file: per sample, its members as (component, offset, size, name)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: index file missing (write it with the shard writer or wds2idx)") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ShardFormatError(f"{path}:1: not a {INDEX_VERSION} webdataset index header")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ShardFormatError(f"{path}:{number}: expected groups of 4 fields (ext offset size name)")
        samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                        for i in range(0, len(fields), 4)])
    if len(samples) != int(head[1]):
        raise ShardFormatError(f"{path}: header says {head[1]} samples, {len(samples)} lines follow")
    return samples


def _index_text(samples: list[list[tuple[str, int, int, str]]]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in s) for s in samples]
    return "\n".join(lines) + "\n"


class _OpenTar:
    """The tar being written: its temporary file, members' offsets (for the index) and captions."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.file = open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples: list[list[tuple[str, int, int, str]]] = []
        self.captions: list[int] = []

    def add_member(self, name: str, data: bytes) -> tuple[str, int, int, str]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))
        # the data ends at the (512-padded) current offset; it starts right after the header
        offset = self.tar.offset - -(-len(data) // _BLOCK) * _BLOCK
        return name.split(".", 1)[1], offset, len(data), name

    @property
    def size(self) -> int:
        return self.tar.offset

    def finish(self) -> None:
        """Closes the tar (end-of-archive blocks), fsyncs it, writes its index, renames it."""
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        _fsync_write(index_path(self.path), _index_text(self.samples).encode())
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Writes samples (one caption + its encoded images) into tars of about ``max_bytes``.

    Args:
        out (Path): shard folder; created if needed.
        header (dict): from :func:`make_header`. A folder holding another run (other ``run_id``) is
            refused unless ``overwrite``, which deletes that run's shards first; the same run resumes.
        prefix (str): tar name prefix of this writer; concurrent writers need different prefixes.
        max_bytes (int): a tar is closed once it reaches this size (a sample is never split).

    ``done`` holds the caption indices already in finished tars (of every writer of the folder):
    skip them. Use as a context manager; leaving it normally finishes the last, partial tar, while
    an exception leaves that tar unfinished (deleted by the next writer with this prefix).

    Examples:
        >>> header = make_header("run1", 1, 2, "jpg", None, None)
        >>> with ShardWriter(out, header) as writer:  # doctest: +SKIP
        ...     if 0 not in writer.done:
        ...         writer.write(0, "abcd", "a photo of a cat", None, [jpeg0, jpeg1])
    """

    def __init__(self, out, header: dict, prefix: str = "shard", max_bytes: int = DEFAULT_SHARD_BYTES,
                 overwrite: bool = False):
        if not _PREFIX.match(prefix):
            raise ShardFormatError(f"shard prefix {prefix!r}: use only letters, digits, '_' or '-'")
        if max_bytes < 1:
            raise ShardFormatError(f"shard size {max_bytes}: must be >= 1 byte")
        self.out = Path(out)
        self.header = header
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.ext = header["image_ext"]
        self._prepare(overwrite)
        records = read_records(self.out)
        self.done = {i for r in records for i in r["captions"]}
        recorded = {r["tar"] for r in records}
        mine = [r for r in records if r["tar"].startswith(f"{prefix}-")]
        self._next_number = 1 + max((int(r["tar"][-10:-4]) for r in mine), default=-1)
        # leftovers of a crash: the temporary tar, and a tar renamed but never recorded
        for stale in self.out.glob(f".{prefix}-*.tar.tmp"):
            stale.unlink()
        for tar in self.out.glob(f"{prefix}-*.tar"):
            if tar.name not in recorded:
                tar.unlink()
                index_path(tar).unlink(missing_ok=True)
        (self.out / RECORDS_DIR).mkdir(exist_ok=True)
        self._log = open(self.out / RECORDS_DIR / f"{prefix}.jsonl", "ab")
        self._tar: Optional[_OpenTar] = None

    def _prepare(self, overwrite: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / HEADER_NAME
        if path.exists():
            previous = read_header(self.out)
            if previous["run_id"] == self.header["run_id"]:
                return
            if not overwrite:
                raise ShardFormatError(
                    f"{self.out} holds shards of run {previous['run_id']}, not {self.header['run_id']}; "
                    "pass --overwrite to replace them"
                )
            for tar in self.out.glob("*.tar"):
                tar.unlink()
                index_path(tar).unlink(missing_ok=True)
            for log in (self.out / RECORDS_DIR).glob("*.jsonl"):
                log.unlink()
        elif any(self.out.glob("*.tar")) and not overwrite:
            raise ShardFormatError(f"{self.out} holds tars not written by this tool; pass --overwrite")
        _fsync_write(path, (json.dumps(self.header, indent=2, ensure_ascii=False) + "\n").encode())

    def write(self, index: int, caption_id: str, caption: str, label: Optional[int],
              images: Sequence[bytes]) -> None:
        """Adds one caption's sample: its metadata and its encoded images in order k = 0, 1, ..."""
        if index in self.done:
            raise ShardFormatError(f"caption {caption_id} (index {index}) is already in a finished shard")
        if "." in caption_id or "/" in caption_id or not caption_id:
            raise ShardFormatError(f"caption {caption_id!r}: a sample key may not be empty or hold '.' or '/'")
        if self._tar is None:
            self._tar = _OpenTar(self.out / tar_name(self.prefix, self._next_number))
            self._next_number += 1
        meta = {"caption_id": caption_id, "caption": caption, "label": label, "index": index,
                "run_id": self.header["run_id"], "num_images": len(images)}
        members = [self._tar.add_member(f"{caption_id}.json", json.dumps(meta, ensure_ascii=False).encode())]
        members += [self._tar.add_member(image_member(caption_id, k, self.ext), data)
                    for k, data in enumerate(images)]
        self._tar.samples.append(members)
        self._tar.captions.append(index)
        if self._tar.size >= self.max_bytes:
            self.finish_tar()

    def finish_tar(self) -> None:
        """Finishes the tar in progress (if any) and records its captions as done."""
        if self._tar is None or not self._tar.captions:
            return
        tar, self._tar = self._tar, None
        tar.finish()
        record = {"tar": tar.path.name, "captions": tar.captions, "samples": len(tar.captions),
                  "bytes": tar.path.stat().st_size}
        self._log.write((json.dumps(record) + "\n").encode())
        self._log.flush()
        os.fsync(self._log.fileno())
        self.done.update(tar.captions)

    def close(self, finish: bool = True) -> None:
        if finish:
            self.finish_tar()
        elif self._tar is not None:
            self._tar.abandon()
            self._tar = None
        self._log.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(finish=exc_type is None)
