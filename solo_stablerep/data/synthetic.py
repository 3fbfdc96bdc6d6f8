"""PyTorch loader of the synthetic data set: one item = one caption, n of its m images as views.

Every access of an item draws ``n_img`` distinct images of its caption afresh
(:class:`~solo_stablerep.data.sampling.ReadableImages`) and passes each through solo-learn's
augmentation pipeline (all of ``cfg.augmentations``, so each image gives the crops counted by
solo-learn). Views are ordered as solo-learn's ``BaseMethod`` expects: the large crops of image
1..n, then the small crops of image 1..n. :func:`prepare_synthetic_train_data` picks this loader or
the DALI one (:mod:`.synthetic_dali`) from ``data.format``, or the tar-shard loaders
(:mod:`.webdataset`) for ``data.synthetic.layout: webdataset``: the one place a loader is chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import omegaconf
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from solo.data.pretrain_dataloader import prepare_dataloader
from torch.utils.data import DataLoader, Dataset

from solo_stablerep.data.config import check_batch_size, load_caption_index
from solo_stablerep.data.index import CaptionIndex
from solo_stablerep.data.sampling import ReadableImages, SkipCounter, large_crop_slots, order_views
from solo_stablerep.data.transforms import build_image_transform


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


class SyntheticMultiViewDataset(Dataset):
    """Items are ``(index, [view_1, ..., view_V], target)`` with V = n_img x crops per image.

    Args:
        index (CaptionIndex): captions and their images.
        n_img (int): distinct images of a caption drawn at every access.
        image_transform (Callable): PIL image -> list of crops (solo-learn's ``FullTransformPipeline``).
        large_slots (List[bool]): which of an image's crops are large (see
            :func:`~solo_stablerep.data.sampling.large_crop_slots`).
        skip_corrupt (bool): skip images that fail to decode (counted in ``skipped``, over all
            DataLoader workers) and draw another image of the caption instead of raising.
    """

    def __init__(
        self,
        index: CaptionIndex,
        n_img: int,
        image_transform: Callable,
        large_slots: Sequence[bool],
        skip_corrupt: bool = False,
    ):
        self.images = ReadableImages(index, n_img, skip_corrupt)
        self.index = index
        self.image_transform = image_transform
        self.large_slots = list(large_slots)

    @property
    def skipped(self) -> SkipCounter:
        return self.images.skipped

    @property
    def num_corrupt_skipped(self) -> int:
        return self.skipped.value

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        order = torch.randperm(self.index.num_images(i)).tolist()
        per_image_crops = [
            self.image_transform(img) for img in self.images.pick(i, order, _open_rgb)
        ]
        return i, order_views(per_image_crops, self.large_slots), int(self.index.labels[i])


def build_synthetic_dataset(cfg: omegaconf.DictConfig) -> SyntheticMultiViewDataset:
    """The multi-view dataset described by a cfg that went through ``add_and_assert_synthetic_cfg``."""
    dataset = SyntheticMultiViewDataset(
        load_caption_index(cfg),
        n_img=cfg.data.synthetic.n_img,
        image_transform=build_image_transform(cfg),
        large_slots=large_crop_slots(cfg.augmentations),
        skip_corrupt=cfg.data.synthetic.skip_corrupt,
    )
    check_batch_size(len(dataset), cfg.optimizer.batch_size, dataset.index.source)
    return dataset


def prepare_synthetic_train_data(cfg: omegaconf.DictConfig):
    """Training data for the synthetic data set: a PyTorch ``DataLoader`` (``data.format`` image_folder)
    or a :class:`~solo_stablerep.data.synthetic_dali.SyntheticDALIDataModule` (``data.format`` dali);
    for ``data.synthetic.layout: webdataset`` the shard loaders of :mod:`.webdataset` /
    :mod:`.webdataset_dali` instead (``data.synthetic.shuffle_buffer`` samples held to shuffle).

    Batches hold ``optimizer.batch_size`` captions per process, shuffled, last partial batch dropped.
    Under DDP, Lightning swaps the loader's sampler for a ``DistributedSampler`` over captions, so all
    views of a caption stay on one rank; the DALI module shards captions across ranks itself.
    """
    if cfg.data.synthetic.layout == "webdataset":
        shards = load_caption_index(cfg)
        check_batch_size(len(shards), cfg.optimizer.batch_size, shards.source)
        if cfg.data.format == "dali":
            from solo_stablerep.data.webdataset_dali import ShardDALIDataModule

            return ShardDALIDataModule.from_cfg(cfg, shards)
        from solo_stablerep.data.webdataset import ShardLoader

        return ShardLoader.from_cfg(cfg, shards)
    if cfg.data.format == "dali":
        from solo_stablerep.data.synthetic_dali import SyntheticDALIDataModule

        return SyntheticDALIDataModule.from_cfg(cfg)
    return prepare_dataloader(
        build_synthetic_dataset(cfg),
        batch_size=cfg.optimizer.batch_size,
        num_workers=cfg.data.num_workers,
    )


class SkippedImagesLogger(Callback):
    """Logs ``skipped_corrupt_images`` (images skipped this epoch, summed over ranks) at each training
    epoch end, and warns when it is not 0 (a warning reaches the console even with Hydra's job
    logging disabled, as the shipped configs have it)."""

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
                f"epoch {trainer.current_epoch}: skipped {int(count.item())} corrupt images "
                "(data.synthetic.skip_corrupt=True; each is named in the log)"
            )


def synthetic_callbacks(cfg: omegaconf.DictConfig, train_data) -> list[Callback]:
    """Callbacks the synthetic training data needs: :class:`SkippedImagesLogger` with ``skip_corrupt``."""
    if cfg.data.dataset != "synthetic" or not cfg.data.synthetic.skip_corrupt:
        return []
    source = train_data.dataset if isinstance(train_data, DataLoader) else train_data
    while not hasattr(source, "skipped"):  # wrappers (e.g. the caption tokens dataset) hold it
        source = source.dataset
    return [SkippedImagesLogger(source.skipped)]
