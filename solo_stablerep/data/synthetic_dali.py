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

import io
from typing import Callable, List, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import omegaconf
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
from PIL import Image
from solo.data.dali_dataloader import build_transform_pipeline_dali
from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation

from solo_stablerep.data.synthetic import (
    CaptionIndex,
    SyntheticDataError,
    check_batch_size,
    corrupt_image_error,
    large_crop_slots,
    load_caption_index,
    log,
    order_views,
)


def shard_epoch(num_items: int, rank: int, world_size: int, epoch: int, seed: int) -> np.ndarray:
    """Item indices of ``rank`` for ``epoch``: one shuffle shared by all ranks, padded by wrapping to a
    multiple of ``world_size``, rank r taking positions r, r + world_size, ... (as DistributedSampler)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    total = -(-num_items // world_size) * world_size
    order = np.resize(order, total)  # np.resize repeats from the start to pad
    return order[rank::world_size]


class CaptionBatchSource:
    """Iterable for ``fn.external_source``: each ``next`` gives one batch of ``batch_size`` captions as
    three lists of ``n_img * batch_size`` samples, image-major (sample s = image s // batch_size of
    caption s % batch_size): encoded images, labels, caption indices. One ``iter`` = one epoch of this
    rank's shard."""

    def __init__(
        self,
        index: CaptionIndex,
        n_img: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        skip_corrupt: bool = False,
    ):
        index.check(n_img)
        self.index = index
        self.n_img = n_img
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        self.num_corrupt_skipped = 0
        self.epoch = 0
        self._rng = np.random.default_rng([seed, rank, 1])
        self._order = np.empty(0, dtype=np.int64)
        self._next = 0

    def batches_per_epoch(self) -> int:
        return -(-len(self.index) // self.world_size) // self.batch_size

    def __iter__(self):
        self._order = shard_epoch(len(self.index), self.rank, self.world_size, self.epoch, self.seed)
        self._next = 0
        self.epoch += 1
        return self

    def _read(self, i: int, k: int) -> Optional[np.ndarray]:
        path = self.index.image_path(i, k)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SyntheticDataError(
                f"{path}: image file missing (caption {self.index.caption_ids[i]})"
            ) from None
        try:  # header check here, so that a bad file is named (DALI's decoder error would not)
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except Exception as e:
            if not self.skip_corrupt:
                raise corrupt_image_error(path, self.index.caption_ids[i], e) from None
            self.num_corrupt_skipped += 1
            log.warning("skipped corrupt image %s (caption %s), %d skipped so far",
                        path, self.index.caption_ids[i], self.num_corrupt_skipped)
            return None
        return np.frombuffer(data, dtype=np.uint8)

    def _read_caption(self, i: int) -> List[np.ndarray]:
        images = []
        for k in self._rng.permutation(self.index.num_images(i)):
            data = self._read(i, int(k))
            if data is not None:
                images.append(data)
                if len(images) == self.n_img:
                    return images
        raise SyntheticDataError(
            f"caption {self.index.caption_ids[i]}: only {len(images)} readable images, "
            f"fewer than data.synthetic.n_img={self.n_img}"
        )

    def __next__(self):
        if self._next + self.batch_size > len(self._order):
            raise StopIteration  # the partial last batch is dropped, as in solo-learn
        ids = self._order[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        per_caption = [self._read_caption(int(i)) for i in ids]
        # image-major, so that the iterator's views are contiguous slices of DALI's output (no copy)
        encoded = [images[k] for k in range(self.n_img) for images in per_caption]
        labels = [np.array([self.index.labels[i]], dtype=np.int64) for i in ids] * self.n_img
        indexes = [np.array([i], dtype=np.int64) for i in ids] * self.n_img
        return encoded, labels, indexes


class DALIRandomDownsample:
    """DALI version of :class:`~solo_stablerep.data.synthetic.RandomDownsample` (needs conditionals)."""

    def __init__(self, prob: float, sizes: Sequence[int], device: str):
        self.prob = prob
        self.sizes = np.array(sizes, dtype=np.float32)
        self.device = device

    def __call__(self, images):
        if fn.random.coin_flip(probability=self.prob, dtype=types.DALIDataType.BOOL):
            shape = images.shape(dtype=types.FLOAT)
            small = fn.resize(images, device=self.device, resize_shorter=fn.random.choice(self.sizes))
            out = fn.resize(small, device=self.device, resize_x=shape[1], resize_y=shape[0])
        else:
            out = images
        return out


class _Then:
    """Applies ``first`` then ``then``: puts the downsample before each of solo-learn's crops."""

    def __init__(self, first: Callable, then: Callable):
        self.first, self.then = first, then

    def __call__(self, images):
        return self.then(self.first(images))

    def __repr__(self) -> str:
        return f"{self.first} -> {self.then}"


def build_dali_image_transform(cfg: omegaconf.DictConfig) -> FullTransformPipeline:
    """DALI images -> their crops: solo-learn's DALI pipelines from ``cfg.augmentations``."""
    downsample = cfg.data.synthetic.downsample
    pipelines = []
    for aug_cfg in cfg.augmentations:
        transform = build_transform_pipeline_dali(
            cfg.data.dataset, aug_cfg, dali_device=cfg.dali.device
        )
        if downsample.prob > 0:
            downsampler = DALIRandomDownsample(downsample.prob, downsample.sizes, cfg.dali.device)
            transform = _Then(downsampler, transform)
        pipelines.append(NCropAugmentation(transform, aug_cfg.num_crops))
    return FullTransformPipeline(pipelines)


@pipeline_def(enable_conditionals=True)
def synthetic_pipeline(source: CaptionBatchSource, transform: Callable, dali_device: str):
    """Outputs each crop of solo-learn's augmentations, then labels and caption indices, for a batch
    of n_img x captions images (pipeline batch size = n_img x captions)."""
    encoded, labels, indexes = fn.external_source(source=source, num_outputs=3, batch=True, cycle="raise")
    decoder_device = "mixed" if dali_device == "gpu" else "cpu"
    crops = transform(fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB))
    if dali_device == "gpu":
        labels, indexes = labels.gpu(), indexes.gpu()
    return (*crops, labels, indexes)


class SyntheticDALIIterator(DALIGenericIterator):
    """Yields solo-learn's batch format ``[indexes, [views...], targets]`` from
    :func:`synthetic_pipeline`'s image-major batches."""

    def __init__(self, pipeline, n_img: int, large_slots: Sequence[bool], batches_per_epoch: int):
        self.n_img = n_img
        self.large_slots = list(large_slots)
        self.batches_per_epoch = batches_per_epoch
        output_map = [f"crop{j}" for j in range(len(self.large_slots))] + ["label", "index"]
        super().__init__(pipeline, output_map, last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __next__(self):
        batch = super().__next__()[0]
        b = self.batch_size // self.n_img  # captions per batch (DALI's batch_size counts images)
        # image k of every caption is samples k*b .. (k+1)*b - 1: contiguous views, no copy needed,
        # as DALI's iterator returns new tensors at every batch
        per_image_crops = [
            [batch[f"crop{j}"][k * b : (k + 1) * b] for j in range(len(self.large_slots))]
            for k in range(self.n_img)
        ]
        views = order_views(per_image_crops, self.large_slots)
        return [batch["index"][:b].flatten().long(), views, batch["label"][:b].flatten().long()]


class SyntheticDALIDataModule(pl.LightningDataModule):
    """Training data of the synthetic data set with DALI; built by :meth:`from_cfg`.

    Cfg keys read: ``data.synthetic.*`` (see ``add_and_assert_synthetic_cfg``), ``augmentations``,
    ``optimizer.batch_size`` (captions per process), ``data.num_workers`` (DALI threads),
    ``dali.device`` (``gpu``: decode with ``mixed``; ``cpu``: CPU-only pipeline), ``seed``.
    """

    def __init__(self, index: CaptionIndex, transform: Callable, large_slots: Sequence[bool], n_img: int,
                 batch_size: int, num_workers: int, dali_device: str, seed: int, skip_corrupt: bool):
        super().__init__()
        if dali_device not in ("gpu", "cpu"):
            raise SyntheticDataError(f"dali.device={dali_device}: choose gpu or cpu")
        check_batch_size(len(index), batch_size, index.source)
        self.index = index
        self.transform = transform
        self.large_slots = list(large_slots)
        self.n_img = n_img
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dali_device = dali_device
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        self.train_loader: Optional[SyntheticDALIIterator] = None

    @classmethod
    def from_cfg(cls, cfg: omegaconf.DictConfig) -> "SyntheticDALIDataModule":
        return cls(
            load_caption_index(cfg),
            transform=build_dali_image_transform(cfg),
            large_slots=large_crop_slots(cfg.augmentations),
            n_img=cfg.data.synthetic.n_img,
            batch_size=cfg.optimizer.batch_size,
            num_workers=cfg.data.num_workers,
            dali_device=cfg.dali.device,
            seed=cfg.seed,
            skip_corrupt=cfg.data.synthetic.skip_corrupt,
        )

    def build_loader(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> SyntheticDALIIterator:
        source = CaptionBatchSource(self.index, self.n_img, self.batch_size, rank, world_size,
                                    self.seed, self.skip_corrupt)
        pipeline = synthetic_pipeline(
            source=source,
            transform=self.transform,
            dali_device=self.dali_device,
            batch_size=self.batch_size * self.n_img,
            num_threads=max(1, self.num_workers),
            device_id=local_rank if self.dali_device == "gpu" else None,
            seed=self.seed + rank,
            prefetch_queue_depth=2,
        )
        pipeline.build()
        return SyntheticDALIIterator(pipeline, self.n_img, self.large_slots, source.batches_per_epoch())

    def setup(self, stage: Optional[str] = None):
        self.train_loader = self.build_loader(
            self.trainer.global_rank, self.trainer.world_size, self.trainer.local_rank
        )

    def train_dataloader(self) -> SyntheticDALIIterator:
        return self.train_loader
