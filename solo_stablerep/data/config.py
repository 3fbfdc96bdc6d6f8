"""Config of the synthetic data set (``data.dataset: synthetic``): defaults, checks, and its index.

Three layouts are read (on-disk formats in :mod:`solo_stablerep.data.manifest` and
:mod:`solo_stablerep.data.shards`):

- ``manifest``: ``data.train_path`` is a root folder holding ``manifest.jsonl`` (format v1).
- ``authors``: the StableRep authors' layout, one CSV whose rows are ``relative image path,caption``
  plus a list of root folders, one per generation seed; image ``k`` of the caption on a row is
  ``roots[k]/relative_path``. Relative ``csv`` and ``roots`` are resolved against ``data.train_path``.
- ``webdataset``: tar shards, one sample per caption; ``data.train_path`` is the shard folder or a
  brace pattern (:mod:`solo_stablerep.data.webdataset`).

The first two are read through a :class:`~solo_stablerep.data.index.CaptionIndex` (built on first
open), shards through a :class:`~solo_stablerep.data.webdataset.ShardSet` (their ``.idx`` files);
:func:`load_caption_index` is the one place that maps a layout to its reader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import omegaconf
from solo.utils.misc import omegaconf_select

from solo_stablerep.data.index import CaptionIndex
from solo_stablerep.data.sampling import large_crop_slots
from solo_stablerep.errors import SyntheticDataError

if TYPE_CHECKING:
    from solo_stablerep.data.webdataset import ShardSet

LAYOUTS = ("manifest", "authors", "webdataset")
# the keys of data.synthetic (documented in add_and_assert_synthetic_cfg); any other is a typo
SYNTHETIC_KEYS = {
    "n_img": None,
    "layout": None,
    "csv": None,
    "csv_header": None,
    "roots": None,
    "downsample": ("prob", "sizes"),
    "skip_corrupt": None,
    "shuffle_buffer": None,
}


def _check_known_keys(syn: omegaconf.DictConfig) -> None:
    """An unknown ``data.synthetic`` key (``+data.synthetic.skip_corupt=True``, the form Hydra's own
    error suggests) would be ignored without a word: refused, as ``method_kwargs`` typos are."""
    for key, sub_keys in SYNTHETIC_KEYS.items():
        value = syn.get(key)
        if sub_keys is not None and isinstance(value, omegaconf.DictConfig):
            for sub_key in value:
                if sub_key not in sub_keys:
                    raise SyntheticDataError(
                        f"unknown data.synthetic.{key}.{sub_key}; expected one of {list(sub_keys)}"
                    )
    for key in syn:
        if key not in SYNTHETIC_KEYS:
            raise SyntheticDataError(
                f"unknown data.synthetic.{key}; expected one of {sorted(SYNTHETIC_KEYS)}"
            )


def load_caption_index(cfg: omegaconf.DictConfig) -> CaptionIndex | ShardSet:
    """The caption index of ``data.train_path`` and ``data.synthetic`` (layout, csv, csv_header, roots):
    memory-mapped, built and saved on first open (milliseconds to open again); for shards, the
    checked :class:`~solo_stablerep.data.webdataset.ShardSet`."""
    syn = cfg.data.synthetic
    if syn.layout == "webdataset":
        from solo_stablerep.data.webdataset import ShardSet  # torch + webdataset: only when used

        return ShardSet(cfg.data.train_path, skip_corrupt=syn.skip_corrupt)
    base = Path(cfg.data.train_path)
    if syn.layout == "manifest":
        return CaptionIndex.from_manifest(base)
    return CaptionIndex.from_authors_csv(
        base / syn.csv, [base / r for r in syn.roots], header=bool(syn.csv_header)
    )


def check_batch_size(num_captions: int, batch_size: int, source: str) -> None:
    # batches drop their remainder (solo-learn's convention), so a smaller set would train on nothing
    if num_captions < batch_size:
        raise SyntheticDataError(
            f"{source}: {num_captions} captions, fewer than optimizer.batch_size={batch_size}"
        )


def _check_val_classes(val_path: str | Path, class_names: list[str], source: str) -> None:
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
        train_path (str): manifest root (layout ``manifest``), base folder of ``csv``/``roots``
            (``authors``), or shard folder / brace pattern (``webdataset``).
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
        synthetic.skip_corrupt (bool): skip images that fail to decode, and log their number at each
            epoch end (``skipped_corrupt_images``). Defaults to False.
        synthetic.shuffle_buffer (int): layout ``webdataset``: samples held to shuffle, per
            DataLoader worker or DALI reader. Defaults to 256 (read by the shard loaders).

    Sets ``data.num_classes`` (classes in the manifest, 1 if unlabelled), ``data.no_labels`` and
    ``data.num_large_crops`` / ``data.num_small_crops`` (n_img x the crops of one image).

    Args:
        cfg (omegaconf.DictConfig): DictConfig object.

    Returns:
        omegaconf.DictConfig: same as the argument, used to avoid errors.
    """
    cfg.data.synthetic = omegaconf_select(cfg, "data.synthetic", {})
    syn = cfg.data.synthetic
    _check_known_keys(syn)
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
    if not syn.downsample.sizes or not all(
        isinstance(s, int) and s > 0 for s in syn.downsample.sizes
    ):
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
