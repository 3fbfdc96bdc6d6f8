"""Training from WebDataset tar shards (``data.synthetic.layout: webdataset``), PyTorch or DALI.

``data.train_path`` is a shard folder written by ``stablerep-generate`` (``--format webdataset`` or
``convert``; format in :mod:`solo_stablerep.data.shards`) or a brace pattern such as
``/data/cc12m/shard-{000000..002499}.tar`` (the header ``webdataset.json`` is then read from the
folder of the first tar). One sample = one caption with its m images; each visit of a sample draws
``n_img`` distinct images of it afresh, each through solo-learn's augmentations, and yields
solo-learn's item ``[index, [views...], target]`` (index = the caption's position in the source
caption list, target = its label or -1).

Epoch length: with N samples, W processes (DDP ranks) and B captions per batch, every rank yields
exactly ``N // (W * B)`` batches per epoch, so no rank waits for another at an epoch's end.

- PyTorch (``data.format: image_folder``): the shards are dealt out, in a new order every epoch,
  to the W x K (rank, DataLoader worker) pairs; each pair streams its tars through the webdataset
  package's shuffle buffer (``data.synthetic.shuffle_buffer`` samples) and starts over on them if
  its share of the epoch's batches needs more samples than they hold. With shards of unequal sizes
  a few captions are therefore seen twice in an epoch and others wait for the next one; over
  epochs each caption is seen once per epoch on average. Use many more shards than W x K.
- DALI (``data.format: dali``, :mod:`.webdataset_dali`): the same stream on each rank (no
  DataLoader workers) hands the n encoded images of each caption to the manifest layout's DALI
  pipeline, which decodes (``mixed`` on GPU, ``cpu`` with ``dali.device: cpu``) and augments them.

Both read a tar as DALI's own reader does, through its index file
(:func:`~solo_stablerep.data.shards.iter_indexed_samples`): the shuffle buffer holds index lines,
and a visit reads the sample's JSON and the n images drawn, each with one ``pread`` at its offset,
in tar order within the buffer's window. The webdataset package's tar stream parses every member
header in Python and keeps whole samples (m images) in the buffer: it gave 0.95-0.98x the
manifest layout's items per second with DataLoader workers and cost the DALI source 6 ms a batch
against 1.2 ms (``bench/bench_shards.py``).

Opening the set checks every shard through its index file, so a missing or truncated tar, a sample
lacking images or holding fewer than ``n_img``, and tars of two generation runs are reported before
training starts, each in one line naming the shard and the sample. Each index is read once: what
the checks and loaders need of a tar is cached in a small summary per folder
(:func:`~solo_stablerep.data.shards.tar_summaries`), so later opens (every rank, every run) cost a
``stat`` of each tar and index, and only tars added or changed since are read again. A sample that
cannot be read while training (corrupt tar or image) stops training with such a line as well,
unless ``data.synthetic.skip_corrupt`` is set: then it is skipped, counted and logged.

Methods that need captions (StableRep++) get each sample's caption tokens appended to the batch,
read from the sample's JSON (``with_caption_tokens`` of either loader, called by
:func:`solo_stablerep.text.with_caption_tokens`).
"""

from __future__ import annotations

import io
import logging
import os
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import omegaconf
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate

from solo_stablerep.data.sampling import (
    SkipCounter,
    checked_encoded_image,
    large_crop_slots,
    order_views,
)
from solo_stablerep.data.shards import (
    HEADER_NAME,
    image_component,
    iter_indexed_samples,
    read_header,
    sample_meta,
    tar_summaries,
)
from solo_stablerep.data.transforms import build_image_transform
from solo_stablerep.errors import ShardDataError, ShardFormatError

log = logging.getLogger(__name__)
DEFAULT_SHUFFLE_BUFFER = 256  # samples (raw bytes of m images each) held per worker to shuffle


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
    tars = [Path(p) for p in wds.shardlists.expand_urls(str(train_path))]
    missing = [t for t in tars if not t.is_file()]
    if len(missing) == len(tars):
        raise ShardDataError(f"data.train_path={train_path}: the pattern matches no shard file")
    if missing:
        raise ShardDataError(
            f"{missing[0]}: shard named by data.train_path={train_path} not found "
            f"({len(missing)} of {len(tars)} missing)"
        )
    return tars, tars[0].parent


class ShardSet:
    """The shards of a training set, checked through their index files; what the cfg checks and the
    loaders need (the shard counterpart of the manifest's caption index).

    Each tar's index is read once: its summary (sample count, fewest and most images, where the
    index ends, first sample's run id) is cached per folder (:func:`~solo_stablerep.data.shards.tar_summaries`),
    so a later open costs one ``stat`` per tar and index, and reads again only the tars added or
    changed since (a tar truncated after it was cached is checked, and named, again).

    Args:
        train_path (str): shard folder, brace pattern or one tar.
        skip_corrupt (bool): leave out tars whose index or first sample is unusable (each named in a
            warning) instead of raising.
    """

    def __init__(self, train_path: str, skip_corrupt: bool = False):
        self.tars, folder = _expand(train_path)
        self.source = str(train_path)
        header = read_header(folder)
        self.run_id = header["run_id"]
        self.class_names = header["class_names"]
        self.image_ext = header["image_ext"]
        left_out = []

        def leave_out(tar: Path, error: str) -> None:
            log.warning("%s: skipped (data.synthetic.skip_corrupt=True)", error)
            left_out.append(tar)

        try:
            summaries = tar_summaries(
                self.tars, self.image_ext, leave_out if skip_corrupt else None
            )
        except ShardFormatError as e:
            raise ShardDataError(
                f"{e}; or set data.synthetic.skip_corrupt=True to leave such tars out"
            ) from None
        if left_out:
            if len(left_out) == len(self.tars):
                raise ShardDataError(
                    f"{self.source}: none of its {len(self.tars)} tars is usable "
                    f"(first: {left_out[0]}, see the warnings above)"
                )
            summaries = [summary for summary in summaries if summary is not None]
            self.tars = [tar for tar in self.tars if tar not in left_out]
        for tar, summary in zip(self.tars, summaries):
            if summary["run_id"] != self.run_id:
                raise ShardDataError(
                    f"{tar}: sample {summary['first']} is from generation run {summary['run_id']}, "
                    f"the header from run {self.run_id}: shards of two runs are mixed"
                )
        self.sample_counts: list[int] = [summary["samples"] for summary in summaries]
        # (count, tar, caption id) of the sample with the fewest images, the first such one
        count, position, key = min(
            (s["fewest"][0], i, s["fewest"][1]) for i, s in enumerate(summaries)
        )
        self.fewest_images = (count, self.tars[position], key)
        self.most_images = max(summary["most"] for summary in summaries)
        counted = Path(train_path).is_dir() and not left_out  # the whole folder, nothing left out
        if counted and sum(self.sample_counts) != header["num_captions"]:
            raise ShardDataError(self._count_mismatch(folder, header["num_captions"], summaries))

    def _count_mismatch(self, folder: Path, num_captions: int, summaries: list[dict]) -> str:
        """Why a folder's tars do not hold the header's caption count, and what to do."""
        held = (
            f"{folder}: the tars hold {sum(self.sample_counts)} samples, "
            f"{folder / HEADER_NAME} says {num_captions}"
        )
        if sum(self.sample_counts) < num_captions:
            return f"{held} (unfinished writing? rerun the command that wrote it to finish it)"
        first_seen: dict[str, Path] = {}
        for tar, summary in zip(self.tars, summaries):
            other = first_seen.setdefault(summary["first"], tar)
            if other != tar:
                return (
                    f"{held}: {other.name} and {tar.name} start with the same sample "
                    "(a copy?); remove one"
                )
        return f"{held}: tars of another writer or copies were added to the folder; remove them"

    def __len__(self) -> int:
        return sum(self.sample_counts)

    @property
    def num_classes(self) -> int:
        """Classes for solo-learn's online classifier; 1 when unlabelled (as solo-learn does)."""
        return len(self.class_names) if self.class_names else 1

    def check(self, n_img: int) -> None:
        count, tar, key = self.fewest_images
        if count < n_img:
            raise ShardDataError(
                f"{tar}: sample {key} has {count} images, fewer than data.synthetic.n_img={n_img}"
            )

    def batches_per_epoch(self, world_size: int, batch_size: int) -> int:
        return len(self) // (world_size * batch_size)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """Batches ``[indexes, views, targets(, tokens)]`` of one (rank, worker) pair; see the module
    docstring for how shards and batches are dealt out. ``rank``, ``world_size`` and ``epoch`` are
    set by :class:`ShardLoader` before each epoch.

    Args:
        shards (ShardSet): the training shards.
        n_img (int): images of a caption per item.
        image_transform (Callable): PIL image -> list of crops (solo-learn's ``FullTransformPipeline``).
        large_slots (Sequence[bool]): which of an image's crops are large.
        batch_size (int): captions per batch.
        seed (int): seeds shard order, shuffle buffer and image choice (with rank, worker, epoch).
        shuffle_buffer (int): samples held to shuffle.
        skip_corrupt (bool): skip and count unreadable samples instead of raising.
        tokenizer (Optional[Callable]): caption -> token ids; set (by
            :meth:`ShardLoader.with_caption_tokens`) for methods that need captions.
    """

    def __init__(
        self,
        shards: ShardSet,
        n_img: int,
        image_transform: Callable,
        large_slots: Sequence[bool],
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        skip_corrupt: bool = False,
        tokenizer: Callable | None = None,
    ):
        shards.check(n_img)
        self.shards = shards
        self.n_img = n_img
        self.image_transform = image_transform
        self.large_slots = list(large_slots)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.skip_corrupt = skip_corrupt
        self.tokenizer = tokenizer
        self.skipped = SkipCounter()  # shared with the DataLoader workers
        self.rank, self.world_size, self.epoch = 0, 1, 0

    @property
    def num_corrupt_skipped(self) -> int:
        return self.skipped.value

    def __len__(self) -> int:
        return self.shards.batches_per_epoch(self.world_size, self.batch_size)

    def _my_tars(self, slot: int, slots: int, rng: np.random.Generator) -> list[Path]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards.tars))
        mine = order[slot::slots] if len(order) >= slots else order[[slot % len(order)]]
        return [self.shards.tars[i] for i in rng.permutation(mine)]

    def _read_tar(self, tar: Path):
        """The samples of one tar, read through its index (DALI's way: each member by its offset,
        when asked for); a tar or index that cannot be opened is one error line, a member past
        the tar's end or unreadable bytes are named when read, in :meth:`_pick`."""
        try:
            yield from iter_indexed_samples(tar)
        except (ShardFormatError, OSError, ValueError) as e:
            self._corrupt(f"{tar}: unreadable ({str(e).splitlines()[0]})")

    def _corrupt(self, message: str) -> None:
        if not self.skip_corrupt:
            raise ShardDataError(
                message + "; set data.synthetic.skip_corrupt=True to skip such samples"
            )
        log.warning("%s: skipped (%d skipped so far)", message, self.skipped.add())

    def _samples(self, slot: int, slots: int, rng: np.random.Generator):
        """This pair's tars' samples, endlessly (the next pass over them in another order)."""
        while True:
            read = 0
            for tar in self._my_tars(slot, slots, rng):
                for sample in self._read_tar(tar):
                    read += 1
                    yield sample
            if read == 0:  # every tar skipped as corrupt: another pass would find nothing either
                raise self._nothing_readable(slot, slots, rng)

    def _nothing_readable(self, slot: int, slots: int, rng: np.random.Generator) -> ShardDataError:
        tars = self._my_tars(slot, slots, rng)
        return ShardDataError(
            f"{tars[0]}: no usable sample in it or the {len(tars) - 1} other tars this "
            f"process reads ({self.skipped.value} skipped as corrupt): training cannot go on"
        )

    def _pick(self, sample: dict, rng: np.random.Generator, read: Callable[[bytes], Any]):
        """``(meta, [read(image bytes)] * n_img)`` for ``n_img`` of the sample's images drawn afresh
        in random order, skipping unreadable ones (an error unless ``skip_corrupt``); None when fewer
        than ``n_img`` are readable (counted)."""
        tar = sample["__url__"]
        try:
            key = sample["__key__"]  # parses the index line
            meta = sample_meta(sample["json"], tar, key)
        except KeyError:
            self._corrupt(f"{tar}: sample {key}: no .json metadata in its index line")
            return None
        except ShardFormatError as e:  # names the index line, or tar and sample
            self._corrupt(str(e))
            return None
        if meta["run_id"] != self.shards.run_id:
            raise ShardDataError(
                f"{tar}: sample {key} is from generation run {meta['run_id']}, "
                f"not {self.shards.run_id}: shards of two runs are mixed"
            )
        names = [image_component(k, self.shards.image_ext) for k in range(meta["num_images"])]
        picked = []
        for k in rng.permutation(len(names)):
            try:
                picked.append(read(sample[names[k]]))
            except KeyError:  # the index lists every image: the tar is damaged
                self._corrupt(f"{tar}: sample {key} lacks image {names[k]} (corrupt tar?)")
                continue
            except ShardFormatError as e:  # already names tar and sample
                self._corrupt(str(e))
                continue
            except (OSError, SyntaxError, ValueError) as e:
                self._corrupt(
                    f"{tar}: sample {key}: corrupt image {names[k]} ({str(e).splitlines()[0]})"
                )
                continue
            if len(picked) == self.n_img:
                return meta, picked
        self._corrupt(
            f"{tar}: sample {key}: {len(picked)} readable images, "
            f"fewer than data.synthetic.n_img={self.n_img}"
        )
        return None

    def _crops(self, data: bytes) -> list:
        with Image.open(io.BytesIO(data)) as img:
            return self.image_transform(img.convert("RGB"))

    def _item(self, sample: dict, rng: np.random.Generator):
        """solo-learn's item (plus tokens) of a sample, its images decoded and augmented here."""
        picked = self._pick(sample, rng, self._crops)
        if picked is None:
            return None
        meta, per_image_crops = picked
        label = -1 if meta["label"] is None else meta["label"]
        item = (meta["index"], order_views(per_image_crops, self.large_slots), label)
        return item + (self.tokenizer(meta["caption"]),) if self.tokenizer else item

    def encoded_item(self, sample: dict, rng: np.random.Generator):
        """``(index, [encoded image] * n_img, label, caption, sample)`` of a sample, for a decoder
        elsewhere (DALI; the sample names tar and key if it fails); each image's header is checked
        here, so that a corrupt one is named."""
        picked = self._pick(sample, rng, checked_encoded_image)
        if picked is None:
            return None
        meta, images = picked
        label = -1 if meta["label"] is None else meta["label"]
        return meta["index"], images, label, meta["caption"], sample

    def items(self, slot: int, slots: int, rng: np.random.Generator, make_item: Callable):
        """``make_item`` of every sample of (rank, worker) pair ``slot`` of ``slots``, endlessly,
        through the shuffle buffer; samples it returns None for are left out."""
        samples = wds.filters.shuffle(
            self.shuffle_buffer,
            initial=self.shuffle_buffer,
            rng=random.Random(int(rng.integers(2**63))),
        )(self._samples(slot, slots, rng))
        unusable = 0  # in a row: more than the whole set's samples means none is usable
        for sample in samples:
            item = make_item(sample, rng)
            if item is not None:
                unusable = 0
                yield item
            elif (unusable := unusable + 1) > len(self.shards):
                raise self._nothing_readable(slot, slots, rng)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        rng = np.random.default_rng([self.seed, self.epoch, slot])
        total = len(self)
        quota = total // workers + (worker < total % workers)
        items = self.items(slot, slots, rng, self._item)
        for _ in range(quota):
            yield default_collate([next(items) for _ in range(self.batch_size)])


class ShardLoader(DataLoader):
    """DataLoader over a :class:`ShardStream`; sets its rank, world size and epoch at each ``iter``.
    ``len`` is the batches per epoch of each rank."""

    def __init__(self, stream: ShardStream, num_workers: int):
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=True)
        self._epoch = 0
        # Lightning warns that an IterableDataset's len may count duplicates across workers; here each
        # worker takes its own tars and its own share of the batches, so len is exact (tested under DDP)
        warnings.filterwarnings(
            "ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning
        )

    def with_caption_tokens(self, tokenizer: Callable) -> ShardLoader:
        """Appends each sample's caption tokens to the batches (StableRep++)."""
        self.dataset.tokenizer = tokenizer
        return self

    @classmethod
    def from_cfg(cls, cfg: omegaconf.DictConfig, shards: ShardSet) -> ShardLoader:
        """The loader of a cfg that went through ``add_and_assert_synthetic_cfg``; reads
        ``data.synthetic.*``, ``augmentations``, ``optimizer.batch_size``, ``data.num_workers``, ``seed``."""
        stream = ShardStream(
            shards,
            n_img=cfg.data.synthetic.n_img,
            image_transform=build_image_transform(cfg),
            large_slots=large_crop_slots(cfg.augmentations),
            batch_size=cfg.optimizer.batch_size,
            seed=cfg.seed,
            shuffle_buffer=shuffle_buffer(cfg),
            skip_corrupt=cfg.data.synthetic.skip_corrupt,
        )
        return cls(stream, num_workers=cfg.data.num_workers)

    def __len__(self) -> int:
        # asked before the first epoch too (schedulers), when DDP has just been set up
        self.dataset.rank, self.dataset.world_size = _dist_info()
        return len(self.dataset)

    def __iter__(self):
        self.dataset.rank, self.dataset.world_size = _dist_info()
        self.dataset.epoch = self._epoch
        self._epoch += 1
        return super().__iter__()


def shuffle_buffer(cfg: omegaconf.DictConfig) -> int:
    return omegaconf.OmegaConf.select(
        cfg, "data.synthetic.shuffle_buffer", default=DEFAULT_SHUFFLE_BUFFER
    )
