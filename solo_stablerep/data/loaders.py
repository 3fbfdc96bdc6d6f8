"""The PyTorch loader of the synthetic data set, over any reader (:mod:`.readers`), and the one
place a loader is chosen (:func:`prepare_synthetic_train_data`: this one, or :mod:`.dali`).

One item is one caption: every visit draws ``n_img`` distinct images of it afresh and passes each
through solo-learn's augmentations; views are ordered as solo-learn's ``BaseMethod`` expects
(:func:`~solo_stablerep.data.config.order_views`). Batches are ``[indexes, views, targets]`` (plus
caption tokens for methods that need captions). The stream deals the data out itself, so that
every layout behaves alike under DDP: each rank yields ``reader.batches_per_epoch`` batches an
epoch (the same number on every rank), all views of a caption on one rank, its workers taking
turns."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import omegaconf
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset, default_collate

from solo_stablerep.data.config import DataConfig, open_reader, order_views
from solo_stablerep.data.readers import Item, Reader, SkipCounter, Slot, decode_rgb
from solo_stablerep.data.transforms import build_image_transform
from solo_stablerep.errors import SyntheticDataError


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class MultiViewStream(IterableDataset):
    """Batches of one (rank, DataLoader worker) pair, ``rank``, ``world_size`` and ``epoch`` set by
    :class:`MultiViewLoader` before each epoch; ``image_transform``: PIL image -> its crops
    (solo-learn's ``FullTransformPipeline``); ``tokenizer`` (caption -> token ids): see
    :meth:`MultiViewLoader.with_caption_tokens`."""

    def __init__(self, reader: Reader, data: DataConfig, image_transform: Callable):
        self.reader, self.data, self.skipped = reader, data, reader.skipped
        self.image_transform = image_transform
        self.tokenizer: Callable | None = None
        self.rank, self.world_size, self.epoch = 0, 1, 0

    def __len__(self) -> int:
        return self.reader.batches_per_epoch(self.world_size, self.data.batch_size)

    def _crops(self, data: bytes) -> list:
        return self.image_transform(decode_rgb(data))

    def _row(self, item: Item, per_image_crops: list) -> tuple:
        row = (item.position, order_views(per_image_crops, self.data.large_slots), item.label)
        return (*row, self.tokenizer(item.caption())) if self.tokenizer else row

    def item(self, sample, rng: np.random.Generator | None = None) -> tuple | None:
        """The row ``(index, views, target)`` of one sample (a caption position for the caption
        layouts), or None when it is skipped as unusable."""
        picked = self.reader.pick(sample, rng or np.random.default_rng(), self._crops)
        return None if picked is None else self._row(*picked)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        d = self.data
        slot = Slot(self.rank, self.world_size, worker, workers, self.epoch, d.seed, d.batch_size)
        items = self.reader.items(slot, self._crops)
        total = len(self)
        for _ in range(total // workers + (worker < total % workers)):
            yield default_collate([self._row(*next(items)) for _ in range(d.batch_size)])


class MultiViewLoader(DataLoader):
    """DataLoader over a :class:`MultiViewStream`; sets its rank, world size and epoch at each
    ``iter``. ``len`` is the batches per epoch of each rank."""

    def __init__(self, stream: MultiViewStream, num_workers: int):
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=True)
        self._epoch = 0
        self.skipped = stream.skipped
        # Lightning tells a loader its epoch through its sampler's set_epoch (after a resume too)
        self.sampler.set_epoch = self.set_epoch
        # Lightning warns, when fit starts, that an IterableDataset's len may count duplicates
        # across workers: each worker here makes its own share of the batches (len is DDP-tested)
        warnings.filterwarnings(
            "ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning
        )

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def with_caption_tokens(self, tokenizer: Callable) -> MultiViewLoader:
        """Appends each item's caption tokens to the batches (StableRep++)."""
        self.dataset.tokenizer = tokenizer
        return self

    def __len__(self) -> int:
        # asked before the first epoch too (schedulers), when DDP has just been set up
        self.dataset.rank, self.dataset.world_size = dist_info()
        return len(self.dataset)

    def __iter__(self):
        # a generator: Lightning creates the first epoch's iterator before it sets that epoch (the
        # restored one after a resume), so the epoch is read, and workers start, at the first batch
        self.dataset.rank, self.dataset.world_size = dist_info()
        self.dataset.epoch = self._epoch
        self._epoch += 1
        yield from super().__iter__()


def prepare_synthetic_train_data(cfg: omegaconf.DictConfig):
    """Training data of a cfg checked by ``add_and_assert_synthetic_cfg``: a
    :class:`MultiViewLoader` (``data.format: image_folder``) or a :class:`.dali.DALIDataModule`
    (``dali``), over the reader of ``data.synthetic.layout``; cfg keys: see ``DataConfig``."""
    data = DataConfig.from_cfg(cfg)
    reader = open_reader(data)
    # batches drop their remainder (solo-learn's convention): a smaller set would train on nothing
    if len(reader) < data.batch_size:
        raise SyntheticDataError(
            f"{reader.source}: {len(reader)} captions, fewer than "
            f"optimizer.batch_size={data.batch_size}"
        )
    if data.dali:
        from solo_stablerep.data.dali import DALIDataModule

        return DALIDataModule(reader, data, build_image_transform(cfg, dali=True))
    stream = MultiViewStream(reader, data, build_image_transform(cfg))
    return MultiViewLoader(stream, data.num_workers)


class SkippedImagesLogger(Callback):
    """Logs ``skipped_corrupt_images`` (images and items skipped this epoch, summed over ranks) at
    each training epoch end, and warns when it is not 0 (a warning reaches the console even with
    Hydra's job logging disabled, as the shipped configs have it)."""

    def __init__(self, skipped: SkipCounter):
        self.skipped = skipped
        self._logged = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        total = self.skipped.value
        new, self._logged = total - self._logged, total
        count = trainer.strategy.reduce(
            torch.tensor(float(new), device=pl_module.device), reduce_op="sum"
        )
        pl_module.log("skipped_corrupt_images", count, rank_zero_only=True)
        if count.item() > 0:
            rank_zero_warn(
                f"epoch {trainer.current_epoch}: skipped {int(count.item())} corrupt images or "
                "items (data.synthetic.skip_corrupt=True; each is named in the log)"
            )


def synthetic_callbacks(cfg: omegaconf.DictConfig, train_data) -> list[Callback]:
    """The synthetic training data's callbacks: :class:`SkippedImagesLogger` with skip_corrupt."""
    if cfg.data.dataset != "synthetic" or not cfg.data.synthetic.skip_corrupt:
        return []
    return [SkippedImagesLogger(train_data.skipped)]
