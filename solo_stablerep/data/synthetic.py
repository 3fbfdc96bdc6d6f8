"""Multi-view synthetic data set for StableRep: one item = one caption, n of its m images as views.

Two layouts are read (see :mod:`solo_stablerep.data.manifest` for the first):

- ``manifest``: ``data.train_path`` is a root folder holding ``manifest.jsonl`` (format v1).
- ``authors``: the StableRep authors' layout, one CSV whose rows are ``relative image path,caption``
  plus a list of root folders, one per generation seed; image ``k`` of the caption on a row is
  ``roots[k]/relative_path``. Relative ``csv`` and ``roots`` are resolved against ``data.train_path``.

Every access of an item draws ``n_img`` distinct images of its caption afresh and passes each through
solo-learn's augmentation pipeline (all of ``cfg.augmentations``, so each image gives the crops counted
by solo-learn). Views are ordered as solo-learn's ``BaseMethod`` expects: the large crops of image 1..n,
then the small crops of image 1..n.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import omegaconf
import torch
from PIL import Image, UnidentifiedImageError
from solo.data.pretrain_dataloader import (
    FullTransformPipeline,
    NCropAugmentation,
    build_transform_pipeline,
    prepare_dataloader,
)
from solo.utils.misc import omegaconf_select
from torch.utils.data import Dataset
from torchvision import transforms

from solo_stablerep.data.manifest import (
    MANIFEST_NAME,
    ManifestError,
    check_relative_path,
    read_manifest,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
LAYOUTS = ("manifest", "authors", "webdataset")

log = logging.getLogger(__name__)


class SyntheticDataError(ValueError):
    """A synthetic data set or its config is unusable; the message is one line naming the culprit."""


def corrupt_image_error(path: Path, caption_id: str, err: Exception) -> SyntheticDataError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return SyntheticDataError(
        f"{path}: corrupt image (caption {caption_id}): {reason}; "
        "set data.synthetic.skip_corrupt=True to skip such images"
    )


class CaptionIndex:
    """Captions with their labels and image paths, stored compactly (no per-image absolute paths).

    Image ``k`` of caption ``i`` is ``roots[k] / relpaths[i][0]`` when there is one root per image
    (authors' layout), else ``roots[0] / relpaths[i][k]`` (manifest layout).
    """

    def __init__(
        self,
        caption_ids: List[str],
        labels: List[int],
        relpaths: List[Tuple[str, ...]],
        roots: List[Path],
        class_names: Optional[List[str]],
        source: str,
        root_per_image: bool,
    ):
        self.caption_ids = caption_ids
        self.labels = labels
        self.relpaths = relpaths
        self.roots = roots
        self.class_names = class_names
        self.source = source
        self._root_per_image = root_per_image

    @classmethod
    def from_manifest(cls, root: Union[str, Path]) -> "CaptionIndex":
        header, records = read_manifest(root)
        return cls(
            caption_ids=[r.caption_id for r in records],
            labels=[-1 if r.label is None else r.label for r in records],
            relpaths=[tuple(r.images) for r in records],
            roots=[Path(root)],
            class_names=header["class_names"],
            source=str(Path(root) / MANIFEST_NAME),
            root_per_image=False,
        )

    @classmethod
    def from_authors_csv(
        cls, csv_path: Union[str, Path], roots: Sequence[Union[str, Path]], header: bool = False
    ) -> "CaptionIndex":
        """Reads the authors' CSV of ``relative image path,caption`` rows; caption id = the row's
        1-based position in the CSV (a header row counted); errors give the file's line number."""
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise ManifestError(f"{csv_path}: caption CSV (data.synthetic.csv) not found")
        if not roots:
            raise ManifestError(f"{csv_path}: data.synthetic.roots is empty (need one root per seed)")
        for root in roots:
            if not Path(root).is_dir():
                raise ManifestError(f"{root}: image root folder (data.synthetic.roots) not found")
        ids, relpaths = [], []
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for row_no, row in enumerate(reader):
                if header and row_no == 0:
                    continue
                where = f"{csv_path}:{reader.line_num}"  # captions may hold quoted newlines
                if len(row) != 2:
                    raise ManifestError(f"{where}: expected 2 columns (path,caption), got {len(row)}")
                path = check_relative_path(row[0], where)
                if not path.lower().endswith(IMAGE_EXTENSIONS):
                    raise ManifestError(
                        f"{where}: {path!r} is not an image path ({', '.join(IMAGE_EXTENSIONS)})"
                    )
                ids.append(str(row_no + 1))
                relpaths.append((path,))
        roots = [Path(r) for r in roots]
        return cls(ids, [-1] * len(ids), relpaths, roots, None, str(csv_path), root_per_image=True)

    def __len__(self) -> int:
        return len(self.caption_ids)

    @property
    def num_classes(self) -> int:
        """Number of classes for solo-learn's online classifier; 1 when unlabelled (as solo does)."""
        return len(self.class_names) if self.class_names else 1

    def num_images(self, i: int) -> int:
        return len(self.roots) if self._root_per_image else len(self.relpaths[i])

    def image_path(self, i: int, k: int) -> Path:
        if self._root_per_image:
            return self.roots[k] / self.relpaths[i][0]
        return self.roots[0] / self.relpaths[i][k]

    def check(self, n_img: int) -> None:
        """Raises if the index is empty or a caption has fewer than ``n_img`` images."""
        if len(self) == 0:
            raise SyntheticDataError(f"{self.source}: the data set has no captions")
        for i in range(len(self)):
            if self.num_images(i) < n_img:
                raise SyntheticDataError(
                    f"{self.source}: caption {self.caption_ids[i]} has {self.num_images(i)} images, "
                    f"fewer than data.synthetic.n_img={n_img}"
                )


def load_caption_index(cfg: omegaconf.DictConfig) -> CaptionIndex:
    """Builds the caption index from ``data.train_path`` and ``data.synthetic`` (layout, csv, roots)."""
    syn = cfg.data.synthetic
    if syn.layout == "webdataset":  # tar shards: see solo_stablerep.data.webdataset
        from solo_stablerep.data.webdataset import ShardSet

        return ShardSet(cfg.data.train_path)
    base = Path(cfg.data.train_path)
    if syn.layout == "manifest":
        index_file, roots = base / MANIFEST_NAME, (str(base),)
    else:
        index_file, roots = base / syn.csv, tuple(str(base / r) for r in syn.roots)
    # the file's mtime is part of the key: a rewritten manifest is read again
    mtime = index_file.stat().st_mtime_ns if index_file.is_file() else None
    return _load_caption_index(syn.layout, str(index_file), roots, bool(syn.csv_header), mtime)


@functools.lru_cache(maxsize=1)
def _load_caption_index(layout, index_file, roots, csv_header, mtime) -> CaptionIndex:
    # the cfg check and the loader both need the index: read a large manifest once
    if layout == "manifest":
        return CaptionIndex.from_manifest(roots[0])
    return CaptionIndex.from_authors_csv(index_file, roots, header=csv_header)


class RandomDownsample:
    """StableRep's downsample augmentation: with probability ``prob`` resize the image so its shorter
    side is one of ``sizes`` (chosen uniformly), then back to its original size (PIL, bicubic)."""

    def __init__(self, prob: float, sizes: Sequence[int]):
        self.prob = prob
        self.sizes = list(sizes)

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.prob:
            return img
        size = self.sizes[torch.randint(len(self.sizes), ()).item()]
        w, h = img.size
        scale = size / min(w, h)
        small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        return small.resize((w, h), Image.BICUBIC)

    def __repr__(self) -> str:
        return f"RandomDownsample(prob={self.prob}, sizes={self.sizes})"


def large_crop_slots(augmentations: omegaconf.ListConfig) -> List[bool]:
    """For each crop one image yields (in ``cfg.augmentations`` order), whether it is a large crop.

    Same rule as solo-learn's ``parse_cfg``: large = crop_size equal to the first pipeline's.
    """
    big_size = augmentations[0].crop_size
    return [aug.crop_size == big_size for aug in augmentations for _ in range(aug.num_crops)]


def order_views(per_image_crops: Sequence[Sequence], large_slots: Sequence[bool]) -> list:
    """Flattens the crops of each image into solo-learn's view order: every image's large crops
    (image-major), then every image's small crops."""
    return [
        crops[j]
        for want_large in (True, False)
        for crops in per_image_crops
        for j, large in enumerate(large_slots)
        if large == want_large
    ]


class SyntheticMultiViewDataset(Dataset):
    """Items are ``(index, [view_1, ..., view_V], target)`` with V = n_img x crops per image.

    Args:
        index (CaptionIndex): captions and their images.
        n_img (int): distinct images of a caption drawn at every access.
        image_transform (Callable): PIL image -> list of crops (solo-learn's ``FullTransformPipeline``).
        large_slots (List[bool]): which of an image's crops are large (see :func:`large_crop_slots`).
        skip_corrupt (bool): skip images that fail to decode (counted in ``num_corrupt_skipped`` and
            logged) and draw another image of the caption instead of raising.
    """

    def __init__(
        self,
        index: CaptionIndex,
        n_img: int,
        image_transform: Callable,
        large_slots: Sequence[bool],
        skip_corrupt: bool = False,
    ):
        index.check(n_img)
        self.index = index
        self.n_img = n_img
        self.image_transform = image_transform
        self.large_slots = list(large_slots)
        self.skip_corrupt = skip_corrupt
        self.num_corrupt_skipped = 0  # per process (each DataLoader worker counts its own)

    def __len__(self) -> int:
        return len(self.index)

    def _open(self, i: int, k: int) -> Optional[Image.Image]:
        path = self.index.image_path(i, k)
        caption_id = self.index.caption_ids[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise SyntheticDataError(f"{path}: image file missing (caption {caption_id})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if not self.skip_corrupt:
                raise corrupt_image_error(path, caption_id, e) from None
            self.num_corrupt_skipped += 1
            log.warning("skipped corrupt image %s (caption %s), %d skipped so far in this process",
                        path, caption_id, self.num_corrupt_skipped)
            return None

    def __getitem__(self, i: int):
        per_image_crops = []
        for k in torch.randperm(self.index.num_images(i)).tolist():
            img = self._open(i, k)
            if img is not None:
                per_image_crops.append(self.image_transform(img))
                if len(per_image_crops) == self.n_img:
                    break
        if len(per_image_crops) < self.n_img:
            raise SyntheticDataError(
                f"caption {self.index.caption_ids[i]}: only {len(per_image_crops)} readable images, "
                f"fewer than data.synthetic.n_img={self.n_img}"
            )
        return i, order_views(per_image_crops, self.large_slots), self.index.labels[i]


def _check_val_classes(val_path: Union[str, Path], class_names: List[str], source: str) -> None:
    """solo-learn validates on an ImageFolder, whose class index = position in sorted folder names."""
    if not Path(val_path).is_dir():
        raise SyntheticDataError(f"data.val_path={val_path}: folder not found")
    folders = sorted(e.name for e in os.scandir(val_path) if e.is_dir())
    if folders != list(class_names):
        raise SyntheticDataError(
            f"data.val_path={val_path}: class folders {folders[:5]}... differ from class_names "
            f"{list(class_names)[:5]}... of {source} (same names, sorted, are needed)"
        )


def add_and_assert_synthetic_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
    """Adds defaults and checks for the synthetic data set; call after solo-learn's ``parse_cfg``.

    Cfg keys (under ``data``):
        train_path (str): manifest root (layout ``manifest``) or base folder of ``csv``/``roots``.
        val_path (Optional[str]): ImageFolder for online linear evaluation; needs labelled captions
            whose ``class_names`` equal its sorted class folders.
        format (str): ``image_folder`` (PyTorch loader, the default) or ``dali``.
        synthetic.n_img (int): images of a caption per item. Defaults to 6.
        synthetic.layout (str): ``manifest``, ``authors`` or ``webdataset`` (tar shards, see
            :mod:`solo_stablerep.data.webdataset`). Defaults to ``manifest``.
        synthetic.csv (Optional[str]): authors' layout: CSV of ``relative path,caption`` rows.
        synthetic.csv_header (bool): authors' layout: the CSV's first row is a header. Defaults to False.
        synthetic.roots (List[str]): authors' layout: one image root per generation seed.
        synthetic.downsample.prob (float): probability of the downsample augmentation. Defaults to 0.
        synthetic.downsample.sizes (List[int]): shorter-side sizes to downsample to. Defaults to [64, 128].
        synthetic.skip_corrupt (bool): skip (and count) images that fail to decode. Defaults to False.

    Sets ``data.num_classes`` (classes in the manifest, 1 if unlabelled), ``data.no_labels`` and
    ``data.num_large_crops`` / ``data.num_small_crops`` (n_img x the crops of one image).

    Args:
        cfg (omegaconf.DictConfig): DictConfig object.

    Returns:
        omegaconf.DictConfig: same as the argument, used to avoid errors.
    """
    cfg.data.synthetic = omegaconf_select(cfg, "data.synthetic", {})
    syn = cfg.data.synthetic
    syn.n_img = omegaconf_select(cfg, "data.synthetic.n_img", 6)
    syn.layout = omegaconf_select(cfg, "data.synthetic.layout", "manifest")
    syn.csv = omegaconf_select(cfg, "data.synthetic.csv", None)
    syn.csv_header = omegaconf_select(cfg, "data.synthetic.csv_header", False)
    syn.roots = omegaconf_select(cfg, "data.synthetic.roots", [])
    syn.downsample = omegaconf_select(cfg, "data.synthetic.downsample", {})
    syn.downsample.prob = omegaconf_select(cfg, "data.synthetic.downsample.prob", 0.0)
    syn.downsample.sizes = omegaconf_select(cfg, "data.synthetic.downsample.sizes", [64, 128])
    syn.skip_corrupt = omegaconf_select(cfg, "data.synthetic.skip_corrupt", False)

    if not isinstance(syn.n_img, int) or syn.n_img < 1:
        raise SyntheticDataError(f"data.synthetic.n_img={syn.n_img}: must be an integer >= 1")
    if syn.layout not in LAYOUTS:
        raise SyntheticDataError(f"data.synthetic.layout={syn.layout}: choose one of {LAYOUTS}")
    if syn.layout == "authors" and (not syn.csv or not syn.roots):
        raise SyntheticDataError(
            "data.synthetic.layout=authors needs data.synthetic.csv and data.synthetic.roots"
        )
    if not 0.0 <= syn.downsample.prob <= 1.0:
        raise SyntheticDataError(
            f"data.synthetic.downsample.prob={syn.downsample.prob}: must be in [0, 1]"
        )
    if not syn.downsample.sizes or not all(isinstance(s, int) and s > 0 for s in syn.downsample.sizes):
        raise SyntheticDataError(
            f"data.synthetic.downsample.sizes={list(syn.downsample.sizes)}: need positive integers"
        )
    if cfg.data.format not in ("image_folder", "dali"):
        raise SyntheticDataError(
            f"data.format={cfg.data.format}: synthetic data supports image_folder or dali"
        )

    index = load_caption_index(cfg)
    index.check(syn.n_img)
    cfg.data.num_classes = index.num_classes
    cfg.data.no_labels = index.class_names is None
    if cfg.data.no_labels and cfg.method == "supcon":
        # solo-learn's SupCon takes views with equal targets as positives: all -1 would make every
        # view of the batch a positive
        raise SyntheticDataError(f"method=supcon needs class labels, but {index.source} has none")
    if cfg.data.val_path is not None:
        if index.class_names is None:
            raise SyntheticDataError(
                f"data.val_path is set but {index.source} has no class labels: an online classifier "
                "trained without labels gives a meaningless accuracy; unset data.val_path and run "
                "offline linear evaluation"
            )
        _check_val_classes(cfg.data.val_path, index.class_names, index.source)

    slots = large_crop_slots(cfg.augmentations)
    cfg.data.num_large_crops = syn.n_img * sum(slots)
    cfg.data.num_small_crops = syn.n_img * (len(slots) - sum(slots))
    return cfg


def build_image_transform(cfg: omegaconf.DictConfig) -> Callable:
    """PIL image -> its crops: solo-learn's pipelines from ``cfg.augmentations``, each preceded by the
    downsample augmentation when ``data.synthetic.downsample.prob`` > 0."""
    downsample = cfg.data.synthetic.downsample
    pipelines = []
    for aug_cfg in cfg.augmentations:
        transform = build_transform_pipeline(cfg.data.dataset, aug_cfg)
        if downsample.prob > 0:
            downsampler = RandomDownsample(downsample.prob, downsample.sizes)
            transform = transforms.Compose([downsampler, transform])
        pipelines.append(NCropAugmentation(transform, aug_cfg.num_crops))
    return FullTransformPipeline(pipelines)


def build_synthetic_dataset(cfg: omegaconf.DictConfig) -> SyntheticMultiViewDataset:
    """The multi-view dataset described by a cfg that went through :func:`add_and_assert_synthetic_cfg`."""
    dataset = SyntheticMultiViewDataset(
        load_caption_index(cfg),
        n_img=cfg.data.synthetic.n_img,
        image_transform=build_image_transform(cfg),
        large_slots=large_crop_slots(cfg.augmentations),
        skip_corrupt=cfg.data.synthetic.skip_corrupt,
    )
    check_batch_size(len(dataset), cfg.optimizer.batch_size, dataset.index.source)
    return dataset


def check_batch_size(num_captions: int, batch_size: int, source: str) -> None:
    # batches drop their remainder (solo-learn's convention), so a smaller set would train on nothing
    if num_captions < batch_size:
        raise SyntheticDataError(
            f"{source}: {num_captions} captions, fewer than optimizer.batch_size={batch_size}"
        )


def prepare_synthetic_train_data(cfg: omegaconf.DictConfig):
    """Training data for the synthetic data set: a PyTorch ``DataLoader`` (``data.format`` image_folder)
    or a :class:`~solo_stablerep.data.synthetic_dali.SyntheticDALIDataModule` (``data.format`` dali).

    Batches hold ``optimizer.batch_size`` captions per process, shuffled, last partial batch dropped.
    Under DDP, Lightning swaps the loader's sampler for a ``DistributedSampler`` over captions, so all
    views of a caption stay on one rank; the DALI module shards captions across ranks itself.
    """
    if cfg.data.synthetic.layout == "webdataset":
        from solo_stablerep.data.webdataset import prepare_webdataset_train_data

        return prepare_webdataset_train_data(cfg, load_caption_index(cfg))
    if cfg.data.format == "dali":
        from solo_stablerep.data.synthetic_dali import SyntheticDALIDataModule

        return SyntheticDALIDataModule.from_cfg(cfg)
    return prepare_dataloader(
        build_synthetic_dataset(cfg),
        batch_size=cfg.optimizer.batch_size,
        num_workers=cfg.data.num_workers,
    )
