"""DALI loader for the synthetic multi-view data set (``data.format: dali``).

A Python source reads the encoded bytes of ``n_img`` distinct images per caption (drawn afresh at every
access) and feeds them to a DALI pipeline through ``fn.external_source`` as one batch of
n_img x captions images, image-major; DALI decodes them (``mixed`` on GPU, ``cpu`` otherwise) and
applies solo-learn's DALI augmentations in one chain of operators, as solo-learn's own DALI loader
does, and the iterator cuts each crop's output into one view per image. Captions are sharded across
ranks by the source itself with ``DistributedSampler``'s rule (:func:`shard_epoch`), so all views of a
caption stay on one rank and every caption is seen once per epoch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import omegaconf
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from solo_stablerep.data.config import check_batch_size, load_caption_index
from solo_stablerep.data.index import CaptionIndex
from solo_stablerep.data.sampling import (
    ReadableImages,
    SkipCounter,
    checked_encoded_image,
    large_crop_slots,
    order_views,
    undecodable,
)
from solo_stablerep.data.transforms import build_image_transform
from solo_stablerep.errors import InputError, SyntheticDataError


def shard_epoch(num_items: int, rank: int, world_size: int, epoch: int, seed: int) -> np.ndarray:
    """Item indices of ``rank`` for ``epoch``: one shuffle shared by all ranks, padded by wrapping to a
    multiple of ``world_size``, rank r taking positions r, r + world_size, ... (as DistributedSampler)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    total = -(-num_items // world_size) * world_size
    order = np.resize(order, total)  # np.resize repeats from the start to pad
    return order[rank::world_size]


def _read_checked_bytes(path: Path) -> np.ndarray:
    return checked_encoded_image(path.read_bytes())


# batches a source keeps a note of: DALI decodes up to its prefetch queue (2) + 1 behind the source
RECENT_BATCHES = 4


def decode_failure(error: Exception, culprits, captions: str) -> SyntheticDataError:
    """The one-line error for a DALI decoder failure: the first of ``culprits`` ((where, encoded
    bytes or a path to read) of the images of the batches DALI may be decoding) that PIL cannot
    decode either, else the captions of those batches. DALI's pipeline stops at such an image (it
    cannot be skipped after the fact); the source's header checks catch the common damage (a file
    cut short) before it, so that ``skip_corrupt`` can skip it."""
    advice = (
        "remove or regenerate it (the DALI pipeline cannot skip an image its decoder "
        "rejects; data.format=image_folder with data.synthetic.skip_corrupt=True can)"
    )
    for where, data in culprits:
        try:
            reason = undecodable(data.read_bytes() if isinstance(data, Path) else bytes(data))
        except OSError as e:
            reason = e.strerror or str(e)
        if reason is not None:
            return SyntheticDataError(
                f"{where}: DALI could not decode this image ({reason}); {advice}"
            )
    lines = [line.strip() for line in str(error).splitlines() if "rror" in line and line.strip()]
    dali_error = lines[0] if lines else type(error).__name__
    return SyntheticDataError(
        f"DALI could not decode an image of {captions} ({dali_error}); PIL "
        "decodes them all: try data.format=image_folder"
    )


class CaptionBatchSource:
    """Iterable for ``fn.external_source``: each ``next`` gives one batch of ``batch_size`` captions as
    three lists of ``n_img * batch_size`` samples, image-major (sample s = image s // batch_size of
    caption s % batch_size): encoded images, labels, caption indices. One ``iter`` = one epoch of this
    rank's shard."""

    def __init__(
        self,
        images: ReadableImages,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        self.images = images
        self.index = images.index
        self.n_img = images.n_img
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self._rng = np.random.default_rng([seed, rank, 1])
        self._order = np.empty(0, dtype=np.int64)
        self._next = 0
        self._recent = deque(maxlen=RECENT_BATCHES)  # caption ids of batches DALI may be decoding

    def batches_per_epoch(self) -> int:
        return -(-len(self.index) // self.world_size) // self.batch_size

    def __iter__(self):
        self._order = shard_epoch(
            len(self.index), self.rank, self.world_size, self.epoch, self.seed
        )
        self._next = 0
        self.epoch += 1
        return self

    def __next__(self):
        if self._next + self.batch_size > len(self._order):
            raise StopIteration  # the partial last batch is dropped, as in solo-learn
        ids = self._order[self._next : self._next + self.batch_size].tolist()
        self._next += self.batch_size
        self._recent.append(ids)
        per_caption = [
            self.images.pick(
                i, self._rng.permutation(self.index.num_images(i)).tolist(), _read_checked_bytes
            )
            for i in ids
        ]
        # image-major, so that the iterator's views are contiguous slices of DALI's output (no copy)
        encoded = [images[k] for k in range(self.n_img) for images in per_caption]
        labels = [np.array([self.index.labels[i]], dtype=np.int64) for i in ids] * self.n_img
        indexes = [np.array([i], dtype=np.int64) for i in ids] * self.n_img
        return encoded, labels, indexes

    def decode_failure(self, error: Exception) -> SyntheticDataError:
        """Names the image of the recent batches that DALI's decoder failed on (see
        :func:`decode_failure`)."""
        ids = [i for batch in self._recent for i in batch]
        paths = (
            (self.index.image_path(i, k), self.index.caption_id(i))
            for i in ids
            for k in range(self.index.num_images(i))
        )
        culprits = ((f"{path} (caption {caption_id})", path) for path, caption_id in paths)
        first = ", ".join(self.index.caption_id(i) for i in ids[:4])
        return decode_failure(error, culprits, f"captions {first}...")


@pipeline_def(enable_conditionals=True)
def synthetic_pipeline(source: CaptionBatchSource, transform: Callable, dali_device: str):
    """Outputs each crop of solo-learn's augmentations, then labels and caption indices, for a batch
    of n_img x captions images (pipeline batch size = n_img x captions)."""
    encoded, labels, indexes = fn.external_source(
        source=source, num_outputs=3, batch=True, cycle="raise"
    )
    decoder_device = "mixed" if dali_device == "gpu" else "cpu"
    crops = transform(fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB))
    if dali_device == "gpu":
        labels, indexes = labels.gpu(), indexes.gpu()
    return (*crops, labels, indexes)


class SyntheticDALIIterator(DALIGenericIterator):
    """Yields solo-learn's batch format ``[indexes, [views...], targets]`` from
    :func:`synthetic_pipeline`'s image-major batches. A decoder failure is one line naming the image
    (the source's ``decode_failure``), not DALI's anonymous error."""

    def __init__(self, pipeline, n_img: int, large_slots: Sequence[bool], source):
        self.n_img = n_img
        self.large_slots = list(large_slots)
        self.source = source
        self.batches_per_epoch = source.batches_per_epoch()
        output_map = [f"crop{j}" for j in range(len(self.large_slots))] + ["label", "index"]
        try:  # DALI's iterator runs the pipeline for its first batch already
            super().__init__(
                pipeline, output_map, last_batch_policy=LastBatchPolicy.DROP, auto_reset=True
            )
        except RuntimeError as error:
            raise self._failure(error) from None

    def _failure(self, error: RuntimeError) -> Exception:
        return self.source.decode_failure(error) if "decoders.image" in str(error) else error

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __next__(self):
        try:
            batch = super().__next__()[0]
        except RuntimeError as error:
            raise self._failure(error) from None
        b = self.batch_size // self.n_img  # captions per batch (DALI's batch_size counts images)
        # image k of every caption is samples k*b .. (k+1)*b - 1: contiguous views, no copy needed,
        # as DALI's iterator returns new tensors at every batch
        per_image_crops = [
            [batch[f"crop{j}"][k * b : (k + 1) * b] for j in range(len(self.large_slots))]
            for k in range(self.n_img)
        ]
        views = order_views(per_image_crops, self.large_slots)
        return [batch["index"][:b].flatten().long(), views, batch["label"][:b].flatten().long()]


class DALIDataModule(pl.LightningDataModule):
    """What the DALI data modules share: the settings of one training pipeline per rank, built in
    :meth:`setup` by the subclass's ``build_loader(rank, world_size, local_rank)``."""

    def __init__(
        self,
        transform: Callable,
        large_slots: Sequence[bool],
        n_img: int,
        batch_size: int,
        num_workers: int,
        dali_device: str,
        seed: int,
    ):
        super().__init__()
        if dali_device not in ("gpu", "cpu"):
            raise InputError(f"dali.device={dali_device}: choose gpu or cpu")
        self.transform = transform
        self.large_slots = list(large_slots)
        self.n_img = n_img
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dali_device = dali_device
        self.seed = seed
        self.train_loader = None

    def pipeline_options(self, rank: int, local_rank: int) -> dict:
        """The DALI pipeline arguments that depend on the device and the rank."""
        return dict(
            num_threads=max(1, self.num_workers),
            seed=self.seed + rank,
            prefetch_queue_depth=2,
            device_id=local_rank if self.dali_device == "gpu" else None,
        )

    def setup(self, stage: str | None = None):
        self.train_loader = self.build_loader(
            self.trainer.global_rank, self.trainer.world_size, self.trainer.local_rank
        )

    def train_dataloader(self):
        return self.train_loader


class SyntheticDALIDataModule(DALIDataModule):
    """Training data of the synthetic data set with DALI; built by :meth:`from_cfg`.

    Cfg keys read: ``data.synthetic.*`` (see ``add_and_assert_synthetic_cfg``), ``augmentations``,
    ``optimizer.batch_size`` (captions per process), ``data.num_workers`` (DALI threads),
    ``dali.device`` (``gpu``: decode with ``mixed``; ``cpu``: CPU-only pipeline), ``seed``.
    """

    def __init__(
        self,
        index: CaptionIndex,
        transform: Callable,
        large_slots: Sequence[bool],
        n_img: int,
        batch_size: int,
        num_workers: int,
        dali_device: str,
        seed: int,
        skip_corrupt: bool,
    ):
        super().__init__(transform, large_slots, n_img, batch_size, num_workers, dali_device, seed)
        self.images = ReadableImages(index, n_img, skip_corrupt)
        check_batch_size(len(index), batch_size, index.source)
        self.index = index

    @classmethod
    def from_cfg(cls, cfg: omegaconf.DictConfig) -> SyntheticDALIDataModule:
        return cls(
            load_caption_index(cfg),
            transform=build_image_transform(cfg, dali=True),
            large_slots=large_crop_slots(cfg.augmentations),
            n_img=cfg.data.synthetic.n_img,
            batch_size=cfg.optimizer.batch_size,
            num_workers=cfg.data.num_workers,
            dali_device=cfg.dali.device,
            seed=cfg.seed,
            skip_corrupt=cfg.data.synthetic.skip_corrupt,
        )

    def build_loader(
        self, rank: int = 0, world_size: int = 1, local_rank: int = 0
    ) -> SyntheticDALIIterator:
        source = CaptionBatchSource(self.images, self.batch_size, rank, world_size, self.seed)
        pipeline = synthetic_pipeline(
            source=source,
            transform=self.transform,
            dali_device=self.dali_device,
            batch_size=self.batch_size * self.n_img,
            **self.pipeline_options(rank, local_rank),
        )
        pipeline.build()
        return SyntheticDALIIterator(pipeline, self.n_img, self.large_slots, source)

    @property
    def skipped(self) -> SkipCounter:
        return self.images.skipped
