"""Pretraining entry point: solo-learn's ``main_pretrain.py`` flow, plus StableRep's needs.

Run it like solo-learn's script::

    solo-stablerep-pretrain --config-path scripts/pretrain/custom --config-name stablerep.yaml \\
        data.train_path=/data/train method=simclr

(or ``python -m solo_stablerep.pretrain ...``). Every solo-learn method works, and so do the
methods registered by :mod:`solo_stablerep`. It differs from solo-learn's script only where
StableRep needs it:

* methods whose class sets ``any_number_of_large_crops`` (StableRep) may use more than the 2
  large crops solo-learn allows (solo-learn itself only lets ``wmse`` and ``mae`` do that);
* ``data.dataset: synthetic`` reads the multi-image-per-caption datasets of
  :mod:`solo_stablerep.data`; for methods with ``needs_captions`` (StableRep++) each item also
  carries its caption's token ids (:mod:`solo_stablerep.text`);
* ``devices`` may be an int (as Lightning's CPU accelerator requires), not only a list;
* bad method names and view counts are reported in one line instead of a bare assert.
"""

import inspect
import os
import sys
from typing import Any, Dict, Optional

import hydra
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from solo_stablerep import register_methods

register_methods()  # noqa: E402 - solo must be importable for what follows

from solo.args.pretrain import parse_cfg  # noqa: E402
from solo.data.classification_dataloader import prepare_data as prepare_data_classification  # noqa: E402
from solo.data.pretrain_dataloader import (  # noqa: E402
    FullTransformPipeline,
    NCropAugmentation,
    build_transform_pipeline,
    prepare_dataloader,
    prepare_datasets,
)
from solo.methods import METHODS  # noqa: E402
from solo.utils.auto_resumer import AutoResumer  # noqa: E402
from solo.utils.checkpointer import Checkpointer  # noqa: E402
from solo.utils.misc import make_contiguous, omegaconf_select  # noqa: E402

# solo-learn's own methods that are not limited to 2 large crops (main_pretrain.py's list)
_SOLO_ANY_NUMBER_OF_LARGE_CROPS = ("wmse", "mae")


def parse_pretrain_cfg(cfg: DictConfig) -> DictConfig:
    """solo-learn's ``parse_cfg`` with the differences listed in the module docstring."""

    OmegaConf.set_struct(cfg, False)
    method = omegaconf_select(cfg, "method", None)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    for key in ("data.dataset", "data.train_path"):
        if OmegaConf.select(cfg, key, default=None) is None or OmegaConf.is_missing(cfg, key):
            raise ValueError(f"{key} is not set: add {key}=... to the command line or the config")

    # parse_cfg scales the lr by len(devices); Lightning's CPU accelerator wants an int.
    devices = cfg.devices
    if isinstance(devices, int):
        cfg.devices = list(range(devices))

    # parse_cfg only knows solo-learn's datasets: let "synthetic" pass as "custom", then
    # let the synthetic plugin fill in what depends on its manifest.
    synthetic = cfg.data.dataset == "synthetic"
    if synthetic:
        cfg.data.dataset = "custom"
    cfg = parse_cfg(cfg)
    cfg.devices = devices
    if synthetic:
        from solo_stablerep.data import add_and_assert_synthetic_cfg

        cfg.data.dataset = "synthetic"
        cfg = add_and_assert_synthetic_cfg(cfg)

    any_number_of_large_crops = method in _SOLO_ANY_NUMBER_OF_LARGE_CROPS or getattr(
        METHODS[method], "any_number_of_large_crops", False
    )
    if cfg.data.num_large_crops != 2 and not any_number_of_large_crops:
        raise ValueError(
            f"method {method} needs exactly 2 large crops, got {cfg.data.num_large_crops} "
            "(sum of num_crops of the augmentations at the first crop_size)"
        )
    return cfg


def _prepare_val_loader(cfg: DictConfig):
    # the same cases as solo-learn's script, with synthetic data treated like custom data
    if cfg.data.dataset in ("custom", "synthetic") and (cfg.data.no_labels or not cfg.data.val_path):
        return None
    if cfg.data.dataset in ("imagenet100", "imagenet") and cfg.data.val_path is None:
        return None
    _, val_loader = prepare_data_classification(
        # synthetic data is validated on a labelled ImageFolder of real images
        "custom" if cfg.data.dataset == "synthetic" else cfg.data.dataset,
        # solo-learn also opens the train path as an ImageFolder here, unused: synthetic sets
        # (tar shards above all) are not one, so it gets the val folder
        train_data_path=cfg.data.val_path if cfg.data.dataset == "synthetic" else cfg.data.train_path,
        val_data_path=cfg.data.val_path,
        data_format="image_folder" if cfg.data.format == "dali" else cfg.data.format,
        batch_size=cfg.optimizer.batch_size,
        num_workers=cfg.data.num_workers,
    )
    return val_loader


def _build_solo_transform(cfg: DictConfig, dali: bool) -> FullTransformPipeline:
    if dali:
        from solo.data.dali_dataloader import build_transform_pipeline_dali

        build = lambda aug_cfg: build_transform_pipeline_dali(  # noqa: E731
            cfg.data.dataset, aug_cfg, dali_device=cfg.dali.device
        )
    else:
        build = lambda aug_cfg: build_transform_pipeline(cfg.data.dataset, aug_cfg)  # noqa: E731
    return FullTransformPipeline(
        [NCropAugmentation(build(aug_cfg), aug_cfg.num_crops) for aug_cfg in cfg.augmentations]
    )


def prepare_train_data(cfg: DictConfig):
    """The training data: a DataLoader, or a LightningDataModule for DALI."""

    needs_captions = getattr(METHODS[cfg.method], "needs_captions", False)
    if needs_captions:
        from solo_stablerep.text import check_caption_data

        check_caption_data(cfg)  # only synthetic data carries captions

    if cfg.data.dataset == "synthetic":
        from solo_stablerep.data import prepare_synthetic_train_data

        train_data = prepare_synthetic_train_data(cfg)
        if needs_captions:
            # image-text methods (stablerep_pp): items gain the caption's token ids
            from solo_stablerep.text import with_caption_tokens

            train_data = with_caption_tokens(cfg, train_data)
        return train_data

    if cfg.data.format == "dali":
        from solo.data.dali_dataloader import PretrainDALIDataModule

        return PretrainDALIDataModule(
            dataset=cfg.data.dataset,
            train_data_path=cfg.data.train_path,
            transforms=_build_solo_transform(cfg, dali=True),
            num_large_crops=cfg.data.num_large_crops,
            num_small_crops=cfg.data.num_small_crops,
            num_workers=cfg.data.num_workers,
            batch_size=cfg.optimizer.batch_size,
            no_labels=cfg.data.no_labels,
            data_fraction=cfg.data.fraction,
            dali_device=cfg.dali.device,
            encode_indexes_into_labels=cfg.dali.encode_indexes_into_labels,
        )

    transform = _build_solo_transform(cfg, dali=False)
    if cfg.debug_augmentations:
        print("Transforms:")
        print(transform)
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


def _resume_checkpoint(cfg: DictConfig):
    """(checkpoint path, wandb run id) to resume from, as solo-learn's script finds them."""

    if cfg.auto_resume.enabled and cfg.resume_from_checkpoint is None:
        auto_resumer = AutoResumer(
            checkpoint_dir=os.path.join(cfg.checkpoint.dir, cfg.method),
            max_hours=cfg.auto_resume.max_hours,
        )
        ckpt_path, wandb_run_id = auto_resumer.find_checkpoint(cfg)
        if ckpt_path is not None:
            print(f"Resuming from previous checkpoint that matches specifications: '{ckpt_path}'")
        return ckpt_path, wandb_run_id
    ckpt_path = cfg.resume_from_checkpoint
    if ckpt_path is not None:
        del cfg.resume_from_checkpoint
    return ckpt_path, None


def build_trainer(cfg: DictConfig, model, wandb_run_id: Optional[str] = None) -> Trainer:
    callbacks = []
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

    cfg_dict: Dict[str, Any] = OmegaConf.to_container(cfg)
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


def run_pretrain(cfg: DictConfig) -> Trainer:
    """Parses ``cfg`` and trains; returns the fitted Trainer (its ``lightning_module`` is the
    model)."""

    cfg = parse_pretrain_cfg(cfg)
    seed_everything(cfg.seed)

    model = METHODS[cfg.method](cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)

    val_loader = _prepare_val_loader(cfg)
    train_data = prepare_train_data(cfg)
    ckpt_path, wandb_run_id = _resume_checkpoint(cfg)
    trainer = build_trainer(cfg, model, wandb_run_id)

    if isinstance(train_data, torch.utils.data.DataLoader):
        trainer.fit(model, train_data, val_loader, ckpt_path=ckpt_path)
    else:
        # a datamodule whose val_dataloader returns None fails in Lightning: leave it unset
        if val_loader is not None:
            train_data.val_dataloader = lambda: val_loader
        trainer.fit(model, ckpt_path=ckpt_path, datamodule=train_data)
    return trainer


@hydra.main(version_base="1.2", config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    try:
        run_pretrain(cfg)
    except ValueError as error:
        # configuration and data errors: one line that names the culprit; Hydra's own switch
        # brings the traceback back for debugging
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"solo-stablerep-pretrain: error: {error}")


if __name__ == "__main__":
    main()
