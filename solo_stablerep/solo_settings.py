"""Types of the solo-learn settings the pretrain entry point, solo-learn's ``parse_cfg`` and its
``BaseMethod`` compute with, checked before ``parse_cfg``: a value of the wrong type is one line
naming the key (``optimizer.lr must be > 0, got 'abc'``), not a ``TypeError`` traceback from
``parse_cfg``, the Trainer or the end of the first epoch, nor a silent wrong run
(``wandb.enabled=no`` is a non-empty string, so true; ``devices=auto`` would scale the learning
rate by ``len("auto")``).

A key absent from the cfg (or left ``???``) gets solo-learn's default later and is not checked
here; ``method_kwargs`` are each method's own settings, checked by the method. The rules and the
message are those of the methods' tables (:mod:`solo_stablerep.rules`,
:func:`~solo_stablerep.cfg_defaults.check_value`).
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from solo_stablerep.cfg_defaults import check_value
from solo_stablerep.rules import BOOLEAN, Rule, at_least, greater_than, integer, is_integer, null_or

DEVICES = Rule(
    "be an integer >= 1 (a device count) or a list of device ids",
    lambda v: (
        all(is_integer(d) and d >= 0 for d in v) and len(v) > 0
        if isinstance(v, ListConfig | list)
        else is_integer(v) and v >= 1
    ),
)

SETTINGS: dict[str, Rule] = {
    "max_epochs": integer(1),
    "devices": DEVICES,
    "num_nodes": integer(1),
    "accumulate_grad_batches": integer(1),
    "seed": null_or(integer()),  # null: a random seed
    "optimizer.batch_size": integer(1),
    "optimizer.lr": greater_than(0),
    "optimizer.classifier_lr": null_or(at_least(0)),  # needed only with data.val_path
    "optimizer.weight_decay": at_least(0),
    "optimizer.exclude_bias_n_norm_wd": BOOLEAN,
    "scheduler.warmup_epochs": at_least(0),  # a fraction of an epoch too
    "scheduler.min_lr": at_least(0),
    "scheduler.warmup_start_lr": at_least(0),
    "data.num_workers": integer(0),
    "checkpoint.enabled": BOOLEAN,
    "checkpoint.frequency": integer(1),
    "checkpoint.keep_prev": BOOLEAN,
    "auto_resume.enabled": BOOLEAN,
    "auto_resume.max_hours": greater_than(0),
    "wandb.enabled": BOOLEAN,
    "wandb.offline": BOOLEAN,
    "performance.disable_channel_last": BOOLEAN,
    "debug_augmentations": BOOLEAN,
}


def check_solo_settings(cfg: DictConfig) -> None:
    """Raises :class:`~solo_stablerep.errors.InputError` for the first key of :data:`SETTINGS`
    given a value its rule refuses (null included)."""
    for key, rule in SETTINGS.items():
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and name in node and not OmegaConf.is_missing(node, name):
            check_value(key, node[name], rule)
