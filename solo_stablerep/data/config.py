"""Config of the synthetic data set (``data.dataset: synthetic``): defaults and checks
(:func:`add_and_assert_synthetic_cfg`), the typed :class:`DataConfig` every loader reads, and
:func:`open_reader`, the one place a layout's reader is chosen."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import omegaconf

from solo_stablerep.cfg_defaults import fill_defaults
from solo_stablerep.data.index import CaptionIndex
from solo_stablerep.data.readers import CaptionReader, Reader, ShardReader
from solo_stablerep.errors import SyntheticDataError

LAYOUTS = ("manifest", "authors", "webdataset")
# data.synthetic's keys and defaults (documented in add_and_assert_synthetic_cfg)
DEFAULTS = {
    "n_img": 6,
    "layout": "manifest",
    "csv": None,
    "csv_header": False,
    "roots": [],
    "downsample": {"prob": 0.0, "sizes": [64, 128]},
    "skip_corrupt": False,
    "shuffle_buffer": 256,
}


def large_crop_slots(augmentations) -> list[bool]:
    """For each crop one image yields (``cfg.augmentations`` order), whether it is large: as in
    solo-learn's ``parse_cfg``, its crop_size equals the first pipeline's."""
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


@dataclass(frozen=True)
class DataConfig:
    """The cfg keys the readers and loaders use, read once (:meth:`from_cfg`, after
    :func:`add_and_assert_synthetic_cfg`); see that function for their meaning."""

    train_path: str
    layout: str
    n_img: int
    csv: str | None
    csv_header: bool
    roots: tuple[str, ...]
    skip_corrupt: bool
    shuffle_buffer: int
    batch_size: int  # captions per batch and process (optimizer.batch_size)
    num_workers: int  # DataLoader workers, or DALI threads
    dali: bool  # data.format == dali
    dali_device: str
    seed: int
    large_slots: tuple[bool, ...]

    @classmethod
    def from_cfg(cls, cfg: omegaconf.DictConfig) -> DataConfig:
        syn = cfg.data.synthetic
        return cls(
            train_path=str(cfg.data.train_path),
            layout=syn.layout,
            n_img=syn.n_img,
            csv=syn.csv,
            csv_header=bool(syn.csv_header),
            roots=tuple(syn.roots),
            skip_corrupt=bool(syn.skip_corrupt),
            shuffle_buffer=syn.shuffle_buffer,
            batch_size=cfg.optimizer.batch_size,
            num_workers=cfg.data.num_workers,
            dali=cfg.data.format == "dali",
            dali_device=omegaconf.OmegaConf.select(cfg, "dali.device", default="gpu"),
            seed=cfg.seed,
            large_slots=tuple(large_crop_slots(cfg.augmentations)),
        )


def open_caption_index(
    train_path: str, layout: str, csv: str | None, roots, csv_header: bool
) -> CaptionIndex:
    """The caption index of a manifest (``layout`` manifest) or an authors' CSV (memory-mapped,
    built and saved on first open); ``csv`` and ``roots`` are relative to ``train_path``."""
    base = Path(train_path)
    if layout == "manifest":
        return CaptionIndex.from_manifest(base)
    return CaptionIndex.from_authors_csv(
        base / csv, [base / r for r in roots], header=bool(csv_header)
    )


def open_reader(data: DataConfig | omegaconf.DictConfig) -> Reader:
    """The reader of a layout, the one place it is chosen: a
    :class:`~solo_stablerep.data.readers.CaptionReader` over the caption index of a manifest or
    authors' CSV, or a :class:`~solo_stablerep.data.readers.ShardReader` over tar shards."""
    if not isinstance(data, DataConfig):
        data = DataConfig.from_cfg(data)
    if data.layout == "webdataset":
        return ShardReader(data.train_path, data.n_img, data.skip_corrupt, data.shuffle_buffer)
    index = open_caption_index(data.train_path, data.layout, data.csv, data.roots, data.csv_header)
    return CaptionReader(index, data.n_img, data.skip_corrupt)


def add_and_assert_synthetic_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
    """Adds defaults and checks for the synthetic data set; call after solo-learn's ``parse_cfg``.

    Cfg keys (under ``data``):
        train_path (str): manifest root (layout ``manifest``), base folder of ``csv``/``roots``
            (``authors``), or shard folder / brace pattern (``webdataset``).
        val_path (Optional[str]): ImageFolder for online linear evaluation; needs labelled captions
            whose ``class_names`` equal its sorted class folders.
        format (str): ``image_folder`` (PyTorch loader, the default) or ``dali``.
        synthetic.n_img (int): images of a caption per item. Defaults to 6.
        synthetic.layout (str): ``manifest``, ``authors`` or ``webdataset`` (tar shards, see
            :mod:`solo_stablerep.data.shards`). Defaults to ``manifest``.
        synthetic.csv (Optional[str]): authors' layout: CSV of ``relative path,caption`` rows.
        synthetic.csv_header (bool): authors' layout: the CSV's first row is a header. Defaults
            to False.
        synthetic.roots (List[str]): authors' layout: one image root per generation seed.
        synthetic.downsample.prob (float): probability of the downsample augmentation. Defaults
            to 0.
        synthetic.downsample.sizes (List[int]): shorter-side sizes to downsample to. Defaults to
            [64, 128].
        synthetic.skip_corrupt (bool): skip images that fail to decode and items left with fewer
            than ``n_img`` readable images, each named in a warning, and log their number at each
            epoch end (``skipped_corrupt_images``); without it the first is a one-line error.
            Defaults to False.
        synthetic.shuffle_buffer (int): layout ``webdataset``: samples held to shuffle, per
            DataLoader worker or DALI source. Defaults to 256.

    Sets ``data.num_classes`` (classes in the manifest, 1 if unlabelled), ``data.no_labels`` and
    ``data.num_large_crops`` / ``data.num_small_crops`` (n_img x the crops of one image).

    Args:
        cfg (omegaconf.DictConfig): DictConfig object.

    Returns:
        omegaconf.DictConfig: same as the argument, used to avoid errors.
    """
    fill_defaults(cfg, "data.synthetic", DEFAULTS, SyntheticDataError)
    syn = cfg.data.synthetic
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
    sizes = list(syn.downsample.sizes)
    if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise SyntheticDataError(f"data.synthetic.downsample.sizes={sizes}: need positive integers")
    if cfg.data.format not in ("image_folder", "dali"):
        raise SyntheticDataError(
            f"data.format={cfg.data.format}: synthetic data supports image_folder or dali"
        )

    index = open_reader(cfg)  # checks that every item has n_img images
    cfg.data.format_identity = index.identity  # auto-resume's (solo_stablerep/resume.py)
    cfg.data.num_classes = len(index.class_names) if index.class_names else 1  # as solo-learn
    cfg.data.no_labels = index.class_names is None
    if cfg.data.no_labels and cfg.method == "supcon":
        # solo-learn's SupCon takes views with equal targets as positives: all -1 would make every
        # view of the batch a positive
        raise SyntheticDataError(f"method=supcon needs class labels, but {index.source} has none")
    val_path = cfg.data.val_path
    if val_path is not None:
        if index.class_names is None:
            raise SyntheticDataError(
                f"data.val_path is set but {index.source} has no class labels: an online "
                "classifier trained without labels gives a meaningless accuracy; unset "
                "data.val_path and run offline linear evaluation"
            )
        if not Path(val_path).is_dir():
            raise SyntheticDataError(f"data.val_path={val_path}: folder not found")
        # solo-learn validates on an ImageFolder, whose class index = position in sorted folders
        folders = sorted(e.name for e in os.scandir(val_path) if e.is_dir())
        if folders != index.class_names:
            raise SyntheticDataError(
                f"data.val_path={val_path}: class folders {folders[:5]}... differ from class_names "
                f"{index.class_names[:5]}... of {index.source} (same names, sorted, are needed)"
            )

    slots = large_crop_slots(cfg.augmentations)
    cfg.data.num_large_crops = syn.n_img * sum(slots)
    cfg.data.num_small_crops = syn.n_img * (len(slots) - sum(slots))
    return cfg
