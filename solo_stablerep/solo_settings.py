"""Types of the solo-learn settings the pretrain entry point, solo-learn's ``parse_cfg`` and its
``BaseMethod`` compute with, checked before ``parse_cfg``: a value of the wrong type is one line
naming the key (``optimizer.lr=abc: must be a number > 0``), not a ``TypeError`` traceback from
``parse_cfg``, the Trainer or the end of the first epoch, nor a silent wrong run
(``wandb.enabled=no`` is a non-empty string, so true; ``devices=auto`` would scale the learning
rate by ``len("auto")``).

A key absent from the cfg gets solo-learn's default later and is not checked here; ``method_kwargs``
are each method's own settings, checked by the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from solo_stablerep.errors import InputError


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return (_integer(value) or isinstance(value, float)) and math.isfinite(value)


def _devices(value) -> bool:
    if isinstance(value, ListConfig | list):
        return len(value) > 0 and all(_integer(d) and d >= 0 for d in value)
    return _integer(value) and value >= 1


Rule = tuple[str, Callable[[object], bool]]
POSITIVE_INTEGER: Rule = ("an integer >= 1", lambda v: _integer(v) and v >= 1)
COUNT: Rule = ("an integer >= 0", lambda v: _integer(v) and v >= 0)
INTEGER: Rule = ("an integer", _integer)
POSITIVE_NUMBER: Rule = ("a number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE_NUMBER: Rule = ("a number >= 0", lambda v: _number(v) and v >= 0)
BOOLEAN: Rule = ("True or False", lambda v: isinstance(v, bool))
DEVICES: Rule = ("an integer >= 1 (a device count) or a list of device ids", _devices)

# key -> (rule, whether null is a valid value)
SETTINGS: dict[str, tuple[Rule, bool]] = {
    "max_epochs": (POSITIVE_INTEGER, False),
    "devices": (DEVICES, False),
    "num_nodes": (POSITIVE_INTEGER, False),
    "accumulate_grad_batches": (POSITIVE_INTEGER, False),
    "seed": (INTEGER, True),  # null: a random seed
    "optimizer.batch_size": (POSITIVE_INTEGER, False),
    "optimizer.lr": (POSITIVE_NUMBER, False),
    "optimizer.classifier_lr": (NON_NEGATIVE_NUMBER, True),  # needed only with data.val_path
    "optimizer.weight_decay": (NON_NEGATIVE_NUMBER, False),
    "optimizer.exclude_bias_n_norm_wd": (BOOLEAN, False),
    "scheduler.warmup_epochs": (NON_NEGATIVE_NUMBER, False),  # a fraction of an epoch too
    "scheduler.min_lr": (NON_NEGATIVE_NUMBER, False),
    "scheduler.warmup_start_lr": (NON_NEGATIVE_NUMBER, False),
    "data.num_workers": (COUNT, False),
    "checkpoint.enabled": (BOOLEAN, False),
    "checkpoint.frequency": (POSITIVE_INTEGER, False),
    "checkpoint.keep_prev": (BOOLEAN, False),
    "auto_resume.enabled": (BOOLEAN, False),
    "auto_resume.max_hours": (POSITIVE_NUMBER, False),
    "wandb.enabled": (BOOLEAN, False),
    "wandb.offline": (BOOLEAN, False),
    "performance.disable_channel_last": (BOOLEAN, False),
    "debug_augmentations": (BOOLEAN, False),
}


def check_solo_settings(cfg: DictConfig) -> None:
    """Raises :class:`~solo_stablerep.errors.InputError` for the first key of :data:`SETTINGS`
    whose value is not of its type and range."""
    for key, ((what, valid), nullable) in SETTINGS.items():
        if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) is None:
            if nullable or not _given_null(cfg, key):
                continue
            raise InputError(f"{key}=null: must be {what}")
        value = OmegaConf.select(cfg, key)
        if not valid(value):
            raise InputError(f"{key}={value}: must be {what}")


def _given_null(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is in the cfg with the value null (not absent, not ``???``)."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return (
        isinstance(node, DictConfig)
        and name in node
        and not OmegaConf.is_missing(node, name)
        and node[name] is None
    )
