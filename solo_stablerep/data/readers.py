"""The reader protocol: how every loader reads the items (a caption with its m images) of the
synthetic data set, whatever its layout: :class:`CaptionReader` (manifest, authors' CSV) or
:class:`ShardReader` (tar shards)."""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from solo_stablerep.data.index import CaptionIndex
from solo_stablerep.data.shards import (
    HEADER_NAME,
    bad_line_errors,
    image_component,
    iter_indexed_samples,
    read_header,
    sample_meta,
    tar_summaries,
)
from solo_stablerep.errors import (
    InputError,
    ShardDataError,
    ShardFormatError,
    SyntheticDataError,
    first_line,
)

log = logging.getLogger(__name__)
SKIP_HINT = "set data.synthetic.skip_corrupt=True to skip such items"


class SkipCounter:
    """Images and items skipped as corrupt, shared with the DataLoader workers it is given to."""

    def __init__(self, value: int = 0):
        self._shared = multiprocessing.Value("q", value)

    def add(self, n: int = 1) -> int:
        with self._shared.get_lock():
            self._shared.value += n
            return self._shared.value

    @property
    def value(self) -> int:
        return self._shared.value

    def __getstate__(self):
        # a worker being started shares the counter; any other pickling gets a detached copy
        starting = get_spawning_popen() is not None
        return {"shared": self._shared} if starting else {"value": self.value}

    def __setstate__(self, state):
        self._shared = state.get("shared") or multiprocessing.Value("q", state["value"])


class Slot(NamedTuple):
    """Who reads: DDP rank of ``world_size``, DataLoader worker of ``workers``, in ``epoch``."""

    rank: int
    world_size: int
    worker: int
    workers: int
    epoch: int
    seed: int
    batch_size: int


class Item(NamedTuple):
    """An opened item: ``read(k)`` gives image k's encoded bytes, ``where(k)`` names it."""

    position: int  # the caption's position in the data set's caption list (its batch index)
    label: int  # -1 when unlabelled
    caption: Callable[[], str]
    num_images: int
    read: Callable[[int], bytes]
    where: Callable[[int], str]  # image k in errors: its file and caption, or tar, sample, member
    name: str  # the item in errors: its caption id, or tar and sample


class Reader(ABC):
    """What the loaders need of a layout: the abstract methods, ``source``, ``class_names``,
    ``error`` (the error class of its messages), and the one :meth:`pick` of n readable images."""

    source: str
    class_names: list[str] | None
    error: type[InputError]
    identity: dict  # what tells this data set from another at the same path (auto-resume)

    @abstractmethod
    def __len__(self) -> int:
        """Items (captions) in the data set."""

    @abstractmethod
    def check(self, n_img: int) -> None:
        """Raises the one-line error if the data set is empty or an item has fewer images."""

    @abstractmethod
    def batches_per_epoch(self, world_size: int, batch_size: int) -> int:
        """Batches each rank yields per epoch (the same on every rank)."""

    @abstractmethod
    def samples(self, slot: Slot) -> Iterator:
        """The samples ``slot`` reads in its epoch, then on (endless: a slot goes on into its next
        pass if skipped items leave its share of batches short), for :meth:`open`."""

    @abstractmethod
    def open(self, sample) -> Item:
        """The item of a sample; raises ShardFormatError for damage (skippable)."""

    @abstractmethod
    def nothing_usable(self, slot: Slot) -> InputError:
        """The one-line error when no item ``slot`` reads is usable."""

    def __init__(self, n_img: int, skip_corrupt: bool):
        self.check(n_img)
        self.n_img = n_img
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()

    def corrupt(self, message: str) -> None:
        """Raises the one-line error for damaged data, or with ``skip_corrupt`` logs and counts."""
        if not self.skip_corrupt:
            raise self.error(f"{message}; {SKIP_HINT}")
        log.warning("%s: skipped (%d skipped so far)", message, self.skipped.add())

    def pick(self, sample, rng: np.random.Generator, decode: Callable[[bytes], Any]):
        """``(item, [decode(image bytes)] * n_img)`` for ``n_img`` of the item's images drawn in a
        fresh random order, unreadable ones passed over (an error unless ``skip_corrupt``); None
        when the item cannot be opened or has fewer than ``n_img`` readable images (skipped)."""
        try:
            item = self.open(sample)
        except ShardFormatError as e:  # names the index line, or tar and sample
            return self.corrupt(str(e))
        images = []
        for k in rng.permutation(item.num_images).tolist():
            try:
                images.append(decode(item.read(k)))
                if len(images) == self.n_img:
                    return item, images
            except FileNotFoundError:  # a file of the manifest or CSV (a wrong root: see check)
                self.corrupt(f"{item.where(k)}: image file missing")
            except ShardFormatError as e:  # already names tar and sample
                self.corrupt(str(e))
            except Exception as e:  # any failure to decode: the decoders raise many types
                self.corrupt(f"{item.where(k)}: corrupt image ({first_line(e)})")
        return self.corrupt(
            f"{item.name}: only {len(images)} readable images, "
            f"fewer than data.synthetic.n_img={self.n_img}"
        )

    def items(self, slot: Slot, decode: Callable[[bytes], Any]) -> Iterator:
        """:meth:`pick` of the slot's samples with ``decode``, endlessly; an item that cannot be
        used (skipped) is left out, and more of them in a row than the data set holds stop with
        one line (:meth:`nothing_usable`)."""
        rng = np.random.default_rng([slot.seed, slot.epoch, slot.rank, slot.worker, 1])
        unusable = 0
        for sample in self.samples(slot):
            picked = self.pick(sample, rng, decode)
            if picked is not None:
                unusable = 0
                yield picked
            elif (unusable := unusable + 1) > len(self):
                raise self.nothing_usable(slot)


class CaptionReader(Reader):
    """The manifest and authors' CSV layouts, through their :class:`CaptionIndex`; each rank takes
    its share of one shuffle of all captions (``DistributedSampler``'s rule)."""

    error = SyntheticDataError

    def __init__(self, index: CaptionIndex, n_img: int, skip_corrupt: bool = False):
        self.index = index
        self.source = index.source
        self.class_names = index.class_names
        super().__init__(n_img, skip_corrupt)

    @property
    def identity(self) -> dict:
        """The manifest's (or CSV's) size, modification time and first line, as its caption index
        identifies it: a data set regenerated or rewritten at the same path is another one (a
        manifest's header line also records the generator's settings and caption digest); one
        moved with ``mv`` keeps them. A stat and one line read."""
        with open(self.source, "rb") as f:
            first = f.readline(1 << 16)
            stat = os.fstat(f.fileno())
        return {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "first_line_sha1": hashlib.sha1(first).hexdigest(),
        }

    def __len__(self) -> int:
        return len(self.index)

    def check(self, n_img: int) -> None:
        self.index.check(n_img)
        # the first caption's images (one per root in the authors' layout): a wrong root, or a
        # manifest copied without its images, is one line here, with or without skip_corrupt
        # (which skips a missing image of any other caption), not a line for every image read
        first = self.open(0)
        for k in range(first.num_images):
            if not self.index.image_path(0, k).is_file():
                raise self.error(
                    f"{first.where(k)}: image file missing, the first caption's (a wrong "
                    "data.train_path or data.synthetic.roots, or images not copied?)"
                )

    def batches_per_epoch(self, world_size: int, batch_size: int) -> int:
        return -(-len(self) // world_size) // batch_size

    def samples(self, slot: Slot) -> Iterator[int]:
        """Caption positions: the rank's share of a shuffle of all captions (as DistributedSampler:
        padded by wrapping to a multiple of ``world_size``), cut into batches dealt to the workers
        in turn (so the DataLoader, taking one batch of each worker in turn, keeps that order);
        then the next such pass."""
        chunk = 0
        for lap in range(1 << 62):
            rng = np.random.default_rng([slot.seed, slot.epoch, lap])
            order = np.resize(
                rng.permutation(len(self)), -(-len(self) // slot.world_size) * slot.world_size
            )
            mine = np.ascontiguousarray(order[slot.rank :: slot.world_size])  # the rank's share
            del order  # 8 bytes a caption: a worker keeps only its rank's share
            for start in range(0, len(mine) - slot.batch_size + 1, slot.batch_size):
                if chunk % slot.workers == slot.worker:
                    yield from mine[start : start + slot.batch_size].tolist()
                chunk += 1

    def open(self, i: int) -> Item:
        index = self.index
        return Item(
            i,
            int(index.labels[i]),
            lambda: index.captions[i],
            index.num_images(i),
            lambda k: index.image_path(i, k).read_bytes(),
            lambda k: f"{index.image_path(i, k)} (caption {index.caption_ids[i]})",
            f"caption {index.caption_ids[i]}",
        )

    def nothing_usable(self, slot: Slot) -> InputError:
        return self.error(
            f"{self.source}: no usable caption among the {len(self)} ({self.skipped.value} skipped "
            "as corrupt): training cannot go on"
        )


def _expand(train_path: str) -> tuple[list[Path], Path]:
    """(tars, folder holding the header) for a shard folder, a brace pattern or one tar."""
    path = Path(train_path)
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        if not tars:
            raise ShardDataError(f"data.train_path={train_path}: no .tar shards in this folder")
        return tars, path
    if "{" not in str(train_path) and not path.is_file():
        raise ShardDataError(f"data.train_path={train_path}: no such shard folder or .tar file")
    from webdataset.shardlists import expand_urls

    tars = [Path(p) for p in expand_urls(str(train_path))]
    missing = [t for t in tars if not t.is_file()]
    if len(missing) == len(tars):
        raise ShardDataError(f"data.train_path={train_path}: the pattern matches no shard file")
    if missing:
        raise ShardDataError(
            f"{missing[0]}: shard named by data.train_path={train_path} not found "
            f"({len(missing)} of {len(tars)} missing)"
        )
    return tars, tars[0].parent


def shuffled(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of ``size`` samples over an endless stream (filled before the first one)."""
    buffer = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.randrange(size)
        buffer[j], sample = sample, buffer[j]
        yield sample


class ShardReader(Reader):
    """The tar shards of ``train_path`` (a folder, brace pattern or one tar), checked on opening
    through each tar's summary (:func:`~solo_stablerep.data.shards.tar_summaries`), so that a
    missing or truncated tar, a sample lacking images or holding fewer than ``n_img``, and tars of
    two generation runs are one line before training. With ``skip_corrupt``, a damaged sample line
    of a tar index is left out (warned; the rest of its tar is read), and so is a tar whose index
    as a whole (header, line count), length or first usable sample is unusable.

    The tars are dealt out to the (rank, worker) pairs in a new order every epoch, each pair
    streaming its tars through a shuffle buffer of ``shuffle_buffer`` samples. With tars of unequal
    sizes a few captions are seen twice in an epoch and others wait for the next: use many more
    tars than ranks x workers."""

    error = ShardDataError

    def __init__(
        self, train_path: str, n_img: int = 1, skip_corrupt: bool = False, shuffle_buffer: int = 256
    ):
        tars, folder = _expand(train_path)
        self.source, self.shuffle_buffer = str(train_path), shuffle_buffer
        header = read_header(folder)
        self.run_id, self.image_ext = header["run_id"], header["image_ext"]
        self.class_names = header["class_names"]
        # the run id hashes the generator's settings and caption list (or the converted source)
        self.identity = {"run_id": self.run_id, "num_captions": header["num_captions"]}

        def leave_out(tar: Path, error: str) -> None:
            log.warning("%s: skipped (data.synthetic.skip_corrupt=True)", error)

        try:
            summaries = tar_summaries(tars, self.image_ext, leave_out if skip_corrupt else None)
        except ShardFormatError as e:
            raise ShardDataError(
                f"{e}; or set data.synthetic.skip_corrupt=True to leave such tars out"
            ) from None
        kept = [(tar, s) for tar, s in zip(tars, summaries, strict=True) if s is not None]
        if not kept:
            raise ShardDataError(
                f"{self.source}: none of its {len(tars)} tars is usable "
                f"(first: {tars[0]}, see the warnings above)"
            )
        self._leave_out_bad_lines(kept, skip_corrupt)
        for tar, summary in kept:
            if summary["run_id"] != self.run_id:
                raise ShardDataError(
                    f"{tar}: sample {summary['first']} is from generation run {summary['run_id']}, "
                    f"the header from run {self.run_id}: shards of two runs are mixed"
                )
        self.tars = [tar for tar, _ in kept]
        self.sample_counts = [summary["samples"] for _, summary in kept]
        count, _, tar, key = min(
            (s["fewest"][0], i, t, s["fewest"][1]) for i, (t, s) in enumerate(kept)
        )
        self.fewest_images = (count, tar, key)
        all_kept = len(kept) == len(tars)
        if Path(train_path).is_dir() and all_kept and len(self) != header["num_captions"]:
            raise ShardDataError(self._count_mismatch(folder, header["num_captions"], kept))
        super().__init__(n_img, skip_corrupt)

    def _leave_out_bad_lines(self, kept: list, skip_corrupt: bool) -> None:
        """Damaged sample lines of the tar indexes: one line without ``skip_corrupt``; with it a
        warning each, and their samples are left out when the tars are read (the other samples
        of their tars are kept)."""
        self.bad_lines = {}  # tar -> its damaged sample lines, left out when read
        for tar, summary in kept:
            numbers = summary.get("bad_lines") or []  # entries cached by an older version: none
            if numbers:
                self.bad_lines[tar] = frozenset(numbers)
            for error in bad_line_errors(tar, self.image_ext, numbers) if numbers else ():
                if not skip_corrupt:
                    raise ShardDataError(
                        f"{error}; or set data.synthetic.skip_corrupt=True to leave such samples "
                        "out"
                    )
                log.warning("%s: sample left out (data.synthetic.skip_corrupt=True)", error)

    def _count_mismatch(self, folder: Path, num_captions: int, kept: list) -> str:
        """Why a folder's tars do not hold the header's caption count, and what to do."""
        held = f"{folder}: the tars hold {len(self)} samples, {folder / HEADER_NAME} says "
        held += str(num_captions)
        if len(self) < num_captions:
            return f"{held} (unfinished writing? rerun the command that wrote it to finish it)"
        first_seen: dict[str, Path] = {}
        for tar, summary in kept:
            other = first_seen.setdefault(summary["first"], tar)
            if other != tar:
                return (
                    f"{held}: {other.name} and {tar.name} start with the same sample (a copy?); "
                    "remove one"
                )
        return f"{held}: tars of another writer or copies were added to the folder; remove them"

    def __len__(self) -> int:
        return sum(self.sample_counts)

    def check(self, n_img: int) -> None:
        count, tar, key = self.fewest_images
        if count < n_img:
            raise ShardDataError(
                f"{tar}: sample {key} has {count} images, fewer than data.synthetic.n_img={n_img}"
            )

    def batches_per_epoch(self, world_size: int, batch_size: int) -> int:
        # the same count on every rank, so that no rank waits for another at an epoch's end
        return len(self) // (world_size * batch_size)

    def _slot_tars(self, slot: Slot) -> list[Path]:
        """The tars of (rank, worker) pair ``slot``: one of every ``world_size x workers`` of this
        epoch's tar order, in the pair's own order."""
        pair, pairs = slot.rank * slot.workers + slot.worker, slot.world_size * slot.workers
        order = np.random.default_rng([slot.seed, slot.epoch]).permutation(len(self.tars))
        mine = order[pair::pairs] if len(order) >= pairs else order[[pair % len(order)]]
        rng = np.random.default_rng([slot.seed, slot.epoch, pair])
        return [self.tars[i] for i in rng.permutation(mine)]

    def samples(self, slot: Slot) -> Iterator:
        """The samples of this pair's tars through the shuffle buffer, each an
        :class:`~solo_stablerep.data.shards.IndexedSample` (members read when asked for)."""

        def passes():
            while True:
                read = 0
                for tar in self._slot_tars(slot):
                    try:
                        for sample in iter_indexed_samples(tar, self.bad_lines.get(tar, ())):
                            read += 1
                            yield sample
                    except (ShardFormatError, OSError, ValueError) as e:
                        self.corrupt(f"{tar}: unreadable ({first_line(e)})")
                if read == 0:  # every tar skipped: another pass would find nothing either
                    raise self.nothing_usable(slot)

        rng = np.random.default_rng([slot.seed, slot.epoch, slot.rank, slot.worker])
        return shuffled(passes(), self.shuffle_buffer, random.Random(int(rng.integers(2**63))))

    def open(self, sample) -> Item:
        tar = sample["__url__"]
        key = sample["__key__"]  # parses the index line
        try:  # (a membership test would read the member too)
            meta = sample_meta(sample["json"], tar, key)
        except KeyError:
            raise ShardFormatError(
                f"{tar}: sample {key}: no .json metadata in its index line"
            ) from None
        if meta["run_id"] != self.run_id:
            raise ShardDataError(
                f"{tar}: sample {key} is from generation run {meta['run_id']}, "
                f"not {self.run_id}: shards of two runs are mixed"
            )
        names = [image_component(k, self.image_ext) for k in range(meta["num_images"])]

        def read(k: int) -> bytes:
            try:
                return sample[names[k]]
            except KeyError:  # the tar index lists every image: the tar is damaged
                raise ShardFormatError(f"{tar}: sample {key} lacks image {names[k]}") from None

        label = -1 if meta["label"] is None else meta["label"]
        return Item(
            meta["index"],
            label,
            lambda: meta["caption"],
            len(names),
            read,
            lambda k: f"{tar}: sample {key}: image {names[k]}",
            f"{tar}: sample {key}",
        )

    def nothing_usable(self, slot: Slot) -> InputError:
        tars = self._slot_tars(slot)
        return ShardDataError(
            f"{tars[0]}: no usable sample in it or the {len(tars) - 1} other tars this "
            f"process reads ({self.skipped.value} skipped as corrupt): training cannot go on"
        )


def _open_image(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # whose message names an anonymous buffer
        raise OSError("not an image file PIL can identify") from None


def decode_rgb(data: bytes) -> Image.Image:
    with _open_image(data) as img:
        return img.convert("RGB")


def checked_encoded_image(data: bytes) -> np.ndarray:
    """An encoded image's bytes for a decoder elsewhere (DALI), after a header check here, so that a
    corrupt image raises an error this package names (DALI's decoder error would not, and would
    leave its pipeline unusable, so nothing could be skipped after it). A JPEG must also have a
    scan (PIL's header parser stops at its start-of-scan marker, and finds none in a file cut
    before it, which DALI decodes without a word) and end with its end-of-image marker after its
    last scan (PNG and WebP headers already tell a file cut short): an O(1) check of the last two
    bytes on a complete file."""
    with _open_image(data) as img:
        if img.format == "JPEG" and not img.tile:
            raise OSError("JPEG without scan data (no start-of-scan marker: cut after its header)")
        img.verify()
        cut = not data.endswith(b"\xff\xd9") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
        if img.format == "JPEG" and cut:
            raise OSError("JPEG data cut short (no end-of-image marker after its last scan)")
    return np.frombuffer(data, dtype=np.uint8)
