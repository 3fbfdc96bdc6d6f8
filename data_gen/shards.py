"""The writer of WebDataset tar shards: one sample per caption, crash-safe and resumable.

The format (header, sample naming, index files) is :mod:`solo_stablerep.data.shards`. Besides it the
writer keeps, per writer prefix, the list of its finished tars::

    OUT/records/<prefix>.jsonl     finished tars of writer ``<prefix>``, one JSON line per tar

Crash safety: a tar is written as ``.<name>.tar.tmp`` and renamed when complete (after its index),
then recorded in ``records/<prefix>.jsonl`` (one fsynced line of an
:class:`~solo_stablerep.storage.AppendLog`: a line cut by a crash is dropped on resume, its tar
redone). A writer that starts again deletes
its temporary tar and any of its tars that are not recorded, and skips the captions recorded as
done, so a SIGKILL loses at most the tar in progress and a rerun finishes the set with no caption
missing or duplicated. Several writers (processes) share a folder by using different prefixes.

No torch and no image decoding: images arrive encoded.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from solo_stablerep.data.shards import (
    HEADER_NAME,
    image_member,
    iter_indexed_samples,
    read_header,
    tar_index_path,
    tar_index_text,
)
from solo_stablerep.errors import ShardFormatError
from solo_stablerep.storage import (
    AppendLog,
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    exclusive_lock,
    iter_log,
    remove_stale_temps,
)

RECORDS_DIR = "records"
DEFAULT_SHARD_BYTES = (
    1 << 30
)  # ~1 GB: large sequential reads, yet many shards per rank at 100M images
_BLOCK = tarfile.BLOCKSIZE
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_bytes(size_gb: float) -> int:
    """``--shard-size`` (GB per tar) in bytes; a size that is not positive is refused."""
    if not size_gb > 0:  # NaN too
        raise ShardFormatError(f"--shard-size {size_gb}: must be > 0 (GB per tar, e.g. 1.0)")
    return max(1, int(size_gb * 1e9))


def tar_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def iter_records(folder: Path) -> Iterator[dict]:
    """Every writer's finished-tar records, streamed (a line cut short by a crash is ignored)."""
    for log in sorted((Path(folder) / RECORDS_DIR).glob("*.jsonl")):
        yield from iter_log(log)


def read_records(folder: Path) -> list[dict]:
    """:func:`iter_records` as a list."""
    return list(iter_records(folder))


def read_images(folder: Path, indices: Sequence[int]) -> dict[int, list[bytes]]:
    """Encoded images (in order k = 0, 1, ...) of the captions at positions ``indices`` of the
    caption list, read back from the finished tars of any writer: the records name each caption's
    tar and its sample number there, and only those samples' images are read (through the tar's
    index). Captions in no finished tar are left out."""
    wanted = set(indices)
    found: dict[int, list[bytes]] = {}
    for record in iter_records(folder):
        here = {sample: index for sample, index in enumerate(record["captions"]) if index in wanted}
        if not here:
            continue
        for number, sample in enumerate(iter_indexed_samples(Path(folder) / record["tar"])):
            if number in here:  # its members: the metadata, then the images in order
                found[here[number]] = [
                    sample[component]
                    for component in sample
                    if not component.startswith("__") and component != "json"
                ]
        if len(found) == len(wanted):
            break
    return found


class _OpenTar:
    """The tar being written: its temporary file, members' offsets (for the index) and captions."""

    def __init__(self, path: Path):
        self.path = path
        # one writer per prefix: a fixed temporary name, which the next writer deletes
        self.output = atomic_output(path, sole_writer=True)
        self.tar = tarfile.open(fileobj=self.output.file, mode="w", format=tarfile.USTAR_FORMAT)
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
        """Closes the tar (end-of-archive blocks), writes its index, fsyncs and renames the tar."""
        self.tar.close()
        index = tar_index_text(self.samples).encode()
        atomic_write_bytes(tar_index_path(self.path), index, sole_writer=True)
        self.output.commit()

    def abandon(self) -> None:
        self.output.discard()


class ShardWriter:
    """Writes samples (one caption + its encoded images) into tars of about ``max_bytes``.

    Args:
        out (Path): shard folder; created if needed.
        header (dict): from :func:`solo_stablerep.data.shards.make_header`. A folder holding
            another run (other ``run_id``) is refused unless ``overwrite``, which deletes that
            run's shards first; the same run resumes.
        prefix (str): tar name prefix of this writer; concurrent writers need different prefixes.
        max_bytes (int): a tar is closed once it reaches this size (a sample is never split).

    ``done[i]`` is True for caption index ``i`` already in a finished tar (of any writer of the
    folder): skip those. A boolean array, one byte per caption, not a Python object per caption. Use
    as a context manager; leaving it normally finishes the last, partial tar, while an exception
    leaves that tar unfinished (deleted by the next writer with this prefix).

    Examples:
        >>> header = make_header("run1", 1, 2, "jpg", None, None)
        >>> with ShardWriter(out, header) as writer:  # doctest: +SKIP
        ...     if not writer.done[0]:
        ...         writer.write(0, "abcd", "a photo of a cat", None, [jpeg0, jpeg1])
    """

    def __init__(
        self,
        out,
        header: dict,
        prefix: str = "shard",
        max_bytes: int = DEFAULT_SHARD_BYTES,
        overwrite: bool = False,
    ):
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
        self.done = np.zeros(header["num_captions"], dtype=bool)
        recorded = set()  # tar names: one per ~1 GB of images
        self._next_number = 0
        for record in iter_records(self.out):
            self.done[record["captions"]] = True
            recorded.add(record["tar"])
            if record["tar"].startswith(f"{prefix}-"):
                self._next_number = max(self._next_number, int(record["tar"][-10:-4]) + 1)
        # leftovers of a crash: the temporary tar, and a tar renamed but never recorded
        for stale in self.out.glob(f".{prefix}-*.tar.tmp"):
            stale.unlink()
        for tar in self.out.glob(f"{prefix}-*.tar"):
            if tar.name not in recorded:
                tar.unlink()
                tar_index_path(tar).unlink(missing_ok=True)
        (self.out / RECORDS_DIR).mkdir(exist_ok=True)
        self._log = AppendLog(self.out / RECORDS_DIR / f"{prefix}.jsonl")
        self._tar: _OpenTar | None = None

    def _prepare(self, overwrite: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / HEADER_NAME
        with exclusive_lock(self.out):  # writers (parts) start at once: one checks at a time
            remove_stale_temps(path)  # left by a writer killed while writing it
            self._prepare_locked(path, overwrite)

    def _prepare_locked(self, path: Path, overwrite: bool) -> None:
        if path.exists():
            previous = read_header(self.out)
            if previous["run_id"] == self.header["run_id"]:
                return
            if not overwrite:
                raise ShardFormatError(
                    f"{self.out} holds shards of run {previous['run_id']}, not "
                    f"{self.header['run_id']}; pass --overwrite to replace them"
                )
            self._remove_shards()
        elif any(self.out.glob("*.tar")):
            if not overwrite:
                raise ShardFormatError(
                    f"{self.out} holds tars not written by this tool; pass "
                    "--overwrite to delete them"
                )
            self._remove_shards()  # the loaders read every tar of the folder: none may stay
        atomic_write_json(path, self.header)

    def _remove_shards(self) -> None:
        """Deletes the folder's tars (ours or not), their indexes and temporaries, and the
        records."""
        for tar in [*self.out.glob("*.tar"), *self.out.glob(".*.tar.tmp")]:
            tar.unlink()
            tar_index_path(tar).unlink(missing_ok=True)
        for log in (self.out / RECORDS_DIR).glob("*.jsonl"):
            log.unlink()

    def write(
        self,
        index: int,
        caption_id: str,
        caption: str,
        label: int | None,
        images: Sequence[bytes],
    ) -> None:
        """Adds one caption's sample: its metadata and its encoded images in order k = 0, 1, ..."""
        if self.done[index]:
            raise ShardFormatError(
                f"caption {caption_id} (index {index}) is already in a finished shard"
            )
        if "." in caption_id or "/" in caption_id or not caption_id:
            raise ShardFormatError(
                f"caption {caption_id!r}: a sample key may not be empty or hold '.' or '/'"
            )
        if self._tar is None:
            self._tar = _OpenTar(self.out / tar_name(self.prefix, self._next_number))
            self._next_number += 1
        meta = {
            "caption_id": caption_id,
            "caption": caption,
            "label": label,
            "index": index,
            "run_id": self.header["run_id"],
            "num_images": len(images),
        }
        members = [
            self._tar.add_member(
                f"{caption_id}.json", json.dumps(meta, ensure_ascii=False).encode()
            )
        ]
        members += [
            self._tar.add_member(image_member(caption_id, k, self.ext), data)
            for k, data in enumerate(images)
        ]
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
        record = {
            "tar": tar.path.name,
            "captions": tar.captions,
            "samples": len(tar.captions),
            "bytes": tar.path.stat().st_size,
        }
        self._log.append([record])
        self.done[tar.captions] = True

    def close(self, finish: bool = True) -> None:
        if finish:
            self.finish_tar()
        elif self._tar is not None:
            self._tar.abandon()
            self._tar = None
        self._log.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(finish=exc_type is None)
