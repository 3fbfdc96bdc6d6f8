"""Pretraining entry point: solo-learn's ``main_pretrain.py`` flow, plus StableRep's needs.

Run it like solo-learn's script::

    solo-stablerep-pretrain --config-path scripts/pretrain/custom --config-name stablerep.yaml \\
        data.train_path=/data/train method=simclr

(or ``python -m solo_stablerep.pretrain ...``). Every solo-learn method works, and so do the
methods registered by :mod:`solo_stablerep`. It differs from solo-learn's script only where
StableRep needs it:

* methods whose class declares ``any_number_of_large_crops``
  (:class:`~solo_stablerep.methods.EntryPointNeeds`; StableRep) may use more than the 2 large
  crops solo-learn allows (solo-learn itself only lets ``wmse`` and ``mae`` do that);
* ``data.dataset: synthetic`` reads the multi-image-per-caption datasets of
  :mod:`solo_stablerep.data`; for methods with ``needs_captions`` (StableRep++) each item also
  carries its caption's token ids (:mod:`solo_stablerep.text`);
* ``devices`` may be an int (as Lightning's CPU accelerator requires), not only a list;
* bad method names, view counts and solo-learn settings of the wrong type
  (:mod:`solo_stablerep.solo_settings`) are reported in one line instead of a bare assert or a
  ``TypeError``;
* auto-resume continues only a run on the same data, and says which checkpoint it resumed
  (:mod:`solo_stablerep.resume`).
"""

import inspect
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import hydra
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from solo_stablerep import register_methods
from solo_stablerep.console import configure_logging, run_command
from solo_stablerep.errors import InputError
from solo_stablerep.extras import check_extras

register_methods()  # adds stablerep & co to solo's METHODS; a one-line error without solo-learn

# solo imports come after that check (E402), so a missing/old solo-learn is reported in one line
from solo.args.pretrain import parse_cfg  # noqa: E402
from solo.data.classification_dataloader import prepare_data as prepare_data_classification  # noqa: E402
from solo.data.classification_dataloader import (  # noqa: E402
    prepare_transforms as prepare_transforms_classification,
)
from solo.data.pretrain_dataloader import prepare_dataloader, prepare_datasets  # noqa: E402
from solo.methods import METHODS  # noqa: E402
from solo.utils.checkpointer import Checkpointer  # noqa: E402
from solo.utils.misc import make_contiguous, omegaconf_select  # noqa: E402

from solo_stablerep.methods import EntryPointNeeds  # noqa: E402
from solo_stablerep.resume import resume_checkpoint  # noqa: E402
from solo_stablerep.solo_settings import check_solo_settings  # noqa: E402

log = logging.getLogger(__name__)
PROG = "solo-stablerep-pretrain"

# solo-learn's own methods that are not limited to 2 large crops (main_pretrain.py's list)
_SOLO_ANY_NUMBER_OF_LARGE_CROPS = ("wmse", "mae")
# data sets read from data.train_path / data.val_path on disk (the others are downloaded there)
_ON_DISK_DATASETS = ("custom", "synthetic", "imagenet", "imagenet100")


def _entry_point_needs(method: str) -> type[EntryPointNeeds]:
    """The method's declared needs; solo-learn's own methods declare none (the defaults)."""
    method_class = METHODS[method]
    return method_class if issubclass(method_class, EntryPointNeeds) else EntryPointNeeds


def parse_pretrain_cfg(cfg: DictConfig) -> DictConfig:
    """solo-learn's ``parse_cfg`` with the differences listed in the module docstring."""

    OmegaConf.set_struct(cfg, False)
    method = omegaconf_select(cfg, "method", None)
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    for key in ("data.dataset", "data.train_path"):
        if OmegaConf.select(cfg, key, default=None) is None or OmegaConf.is_missing(cfg, key):
            raise InputError(f"{key} is not set: add {key}=... to the command line or the config")
    check_solo_settings(cfg)  # numbers and switches of the wrong type: one line, up front
    if cfg.data.dataset in _ON_DISK_DATASETS:
        # solo-learn's parse_cfg would scan a missing train_path with a traceback
        for key in ("data.train_path", "data.val_path"):
            path = OmegaConf.select(cfg, key, default=None)
            # a brace pattern of tars is checked (and named) when the shards are opened
            synthetic_pattern = cfg.data.dataset == "synthetic" and "{" in str(path)
            if path is not None and not synthetic_pattern and not os.path.exists(path):
                raise InputError(f"{key}={path}: no such file or folder")

    # parse_cfg scales the lr by len(devices); Lightning's CPU accelerator wants an int.
    devices = cfg.devices
    if isinstance(devices, int):
        cfg.devices = list(range(devices))

    # parse_cfg only knows solo-learn's datasets: let "synthetic" pass as "custom", then
    # let the synthetic plugin fill in what depends on its manifest.
    synthetic = cfg.data.dataset == "synthetic"
    train_path = cfg.data.train_path
    if synthetic:
        cfg.data.dataset = "custom"
        # parse_cfg counts the class folders of a custom train_path; a synthetic one may be a tar or
        # a brace pattern of tars, and the synthetic plugin sets the classes from its own index
        cfg.data.train_path = train_path if os.path.isdir(train_path) else os.curdir
    cfg = parse_cfg(cfg)
    cfg.devices = devices
    if synthetic:
        from solo_stablerep.data.config import add_and_assert_synthetic_cfg

        cfg.data.dataset = "synthetic"
        cfg.data.train_path = train_path
        cfg = add_and_assert_synthetic_cfg(cfg)

    any_number_of_large_crops = _entry_point_needs(method).any_number_of_large_crops
    if cfg.data.num_large_crops != 2 and not (
        any_number_of_large_crops or method in _SOLO_ANY_NUMBER_OF_LARGE_CROPS
    ):
        raise InputError(
            f"method {method} needs exactly 2 large crops, got {cfg.data.num_large_crops} "
            "(sum of num_crops of the augmentations at the first crop_size)"
        )
    return cfg


def _prepare_val_loader(cfg: DictConfig) -> torch.utils.data.DataLoader | None:
    """The online-validation loader of solo-learn's script, or None when there is nothing to
    validate.

    Synthetic data is validated on ``data.val_path``, an ImageFolder of real images whose sorted
    class folders are the manifest's ``class_names``. Only that side is built, from solo-learn's own
    pieces (its ``custom`` evaluation transform, torchvision's ImageFolder, its loader settings):
    solo-learn's ``prepare_data`` would also read ``data.train_path`` as an ImageFolder, which a
    synthetic root is not (and at cc12m scale would mean walking 100M files for a set that is thrown
    away).
    """

    if cfg.data.dataset in ("custom", "synthetic") and (
        cfg.data.no_labels or not cfg.data.val_path
    ):
        return None
    if cfg.data.dataset in ("imagenet100", "imagenet") and cfg.data.val_path is None:
        return None
    if cfg.data.dataset == "synthetic":
        from torchvision.datasets import ImageFolder

        _, val_transform = prepare_transforms_classification("custom")
        return torch.utils.data.DataLoader(
            ImageFolder(cfg.data.val_path, val_transform),
            batch_size=cfg.optimizer.batch_size,
            num_workers=cfg.data.num_workers,
            pin_memory=True,
            drop_last=False,
        )
    _, val_loader = prepare_data_classification(
        cfg.data.dataset,
        train_data_path=cfg.data.train_path,
        val_data_path=cfg.data.val_path,
        data_format="image_folder" if cfg.data.format == "dali" else cfg.data.format,
        batch_size=cfg.optimizer.batch_size,
        num_workers=cfg.data.num_workers,
    )
    return val_loader


def prepare_train_data(cfg: DictConfig):
    """The training data: a DataLoader, or a LightningDataModule for DALI."""

    needs_captions = _entry_point_needs(cfg.method).needs_captions
    if needs_captions:
        from solo_stablerep.text import check_caption_data

        check_caption_data(cfg)  # only synthetic data carries captions

    if cfg.data.dataset == "synthetic":
        from solo_stablerep.data.loaders import prepare_synthetic_train_data

        train_data = prepare_synthetic_train_data(cfg)
        if needs_captions:
            # image-text methods (stablerep_pp): items gain the caption's token ids
            from solo_stablerep.text import with_caption_tokens

            train_data = with_caption_tokens(cfg, train_data)
        return train_data

    from solo_stablerep.data.transforms import build_image_transform

    if cfg.data.format == "dali":
        from solo.data.dali_dataloader import PretrainDALIDataModule

        return PretrainDALIDataModule(
            dataset=cfg.data.dataset,
            train_data_path=cfg.data.train_path,
            transforms=build_image_transform(cfg, dali=True),
            num_large_crops=cfg.data.num_large_crops,
            num_small_crops=cfg.data.num_small_crops,
            num_workers=cfg.data.num_workers,
            batch_size=cfg.optimizer.batch_size,
            no_labels=cfg.data.no_labels,
            data_fraction=cfg.data.fraction,
            dali_device=cfg.dali.device,
            encode_indexes_into_labels=cfg.dali.encode_indexes_into_labels,
        )

    transform = build_image_transform(cfg)
    if cfg.debug_augmentations:
        log.info("Transforms:\n%s", transform)
    train_dataset = prepare_datasets(
        cfg.data.dataset,
        transform,
        train_data_path=cfg.data.train_path,
        data_format=cfg.data.format,
        no_labels=cfg.data.no_labels,
        data_fraction=cfg.data.fraction,
    )
    return prepare_dataloader(
        train_dataset, batch_size=cfg.optimizer.batch_size, num_workers=cfg.data.num_workers
    )


def build_trainer(cfg: DictConfig, model, wandb_run_id: str | None = None, callbacks=()) -> Trainer:
    callbacks = list(callbacks)
    if cfg.checkpoint.enabled:
        callbacks.append(
            Checkpointer(
                cfg,
                logdir=os.path.join(cfg.checkpoint.dir, cfg.method),
                frequency=cfg.checkpoint.frequency,
                keep_prev=cfg.checkpoint.keep_prev,
            )
        )
    if omegaconf_select(cfg, "auto_umap.enabled", False):
        from solo.utils.auto_umap import AutoUMAP

        callbacks.append(
            AutoUMAP(
                cfg.name,
                logdir=os.path.join(cfg.auto_umap.dir, cfg.method),
                frequency=cfg.auto_umap.frequency,
            )
        )

    logger = None
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers.wandb import WandbLogger

        logger = WandbLogger(
            name=cfg.name,
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            offline=cfg.wandb.offline,
            resume="allow" if wandb_run_id else None,
            id=wandb_run_id,
        )
        logger.watch(model, log="gradients", log_freq=100)
        logger.log_hyperparams(OmegaConf.to_container(cfg))
        callbacks.append(LearningRateMonitor(logging_interval="step"))

    cfg_dict: dict[str, Any] = OmegaConf.to_container(cfg)
    # only valid Trainer args: the rest of the cfg is for the method and the data
    valid_kwargs = inspect.signature(Trainer.__init__).parameters
    trainer_kwargs = {name: cfg_dict[name] for name in valid_kwargs if name in cfg_dict}
    strategy = cfg_dict.get("strategy")
    if strategy == "ddp":
        from lightning.pytorch.strategies.ddp import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=False)
    trainer_kwargs.update(
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        **({"strategy": strategy} if strategy is not None else {}),
    )
    return Trainer(**trainer_kwargs)


def run_pretrain(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> Trainer:
    """Parses ``cfg`` and trains; returns the fitted Trainer (its ``lightning_module`` is the
    model). ``callbacks`` are added to the Trainer's (e.g. a progress line)."""

    cfg = parse_pretrain_cfg(cfg)
    check_extras(cfg)  # a feature whose optional extra is missing: one line, before any work
    seed_everything(cfg.seed)

    model = METHODS[cfg.method](cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)

    val_loader = _prepare_val_loader(cfg)
    train_data = prepare_train_data(cfg)
    ckpt_path, wandb_run_id = resume_checkpoint(cfg)  # the same run on the same data only
    from solo_stablerep.data.loaders import synthetic_callbacks

    trainer = build_trainer(
        cfg, model, wandb_run_id, [*synthetic_callbacks(cfg, train_data), *callbacks]
    )

    if isinstance(train_data, torch.utils.data.DataLoader):
        trainer.fit(model, train_data, val_loader, ckpt_path=ckpt_path)
    else:
        # a datamodule whose val_dataloader returns None fails in Lightning: leave it unset
        if val_loader is not None:
            train_data.val_dataloader = lambda: val_loader
        trainer.fit(model, ckpt_path=ckpt_path, datamodule=train_data)
    return trainer


@hydra.main(version_base="1.2", config_path=None, config_name=None)
def hydra_main(cfg: DictConfig) -> None:
    configure_logging()  # the shipped configs turn Hydra's job logging off
    # configuration and data errors: one line that names the culprit; Hydra's own switch brings
    # the traceback back for debugging (any other exception keeps its traceback)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        run_pretrain(cfg)
        return
    exit_code = run_command(PROG, lambda: run_pretrain(cfg))
    if exit_code:
        sys.exit(exit_code)


def unquoted_brace_override(argv: list[str]) -> str | None:
    """The first ``key=value`` override whose value holds a brace (a shard pattern such as
    ``shard-{000000..000099}.tar``) that Hydra's override grammar cannot parse unquoted, or None.
    Values quoted for Hydra, escaped braces, ``${...}`` interpolations and ``{...}`` dicts pass."""
    for arg in argv:
        key, equals, value = arg.partition("=")
        if not equals or key.startswith("-") or value[:1] in ("'", '"', "{", "["):
            continue
        if re.search(r"(?<![$\\]){", value):
            return arg
    return None


def check_overrides(argv: list[str]) -> None:
    """Raises the hint Hydra's parser cannot give for an unquoted brace (InputError)."""
    override = unquoted_brace_override(argv)
    if override is not None:
        key, _, value = override.partition("=")
        quoted = f"'{key}=\"{value}\"'"
        raise InputError(
            f"{override}: Hydra reads a brace as the start of a dict; quote the value for "
            f"Hydra, inside the shell's quotes: {quoted}"
        )


def main() -> None:
    """``solo-stablerep-pretrain``: Hydra's command line, plus a hint Hydra's parser cannot give."""
    exit_code = run_command(PROG, lambda: check_overrides(sys.argv[1:]))
    if exit_code:
        sys.exit(exit_code)
    hydra_main()


if __name__ == "__main__":
    main()
