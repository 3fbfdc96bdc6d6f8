"""Defaults of a cfg node, shared by ``method_kwargs`` and ``data.synthetic``: a missing key gets
its default, and a key left ``???`` or unknown (a typo that would otherwise be ignored without a
word) is a one-line error naming it."""

from __future__ import annotations

from typing import Any

import omegaconf
from omegaconf import OmegaConf
from solo.utils.misc import omegaconf_select

from solo_stablerep.errors import InputError


def fill_defaults(
    cfg: omegaconf.DictConfig,
    key: str,
    defaults: dict[str, Any],
    error: type[InputError] = InputError,
    owner: str = "",
) -> None:
    """Sets the missing keys of ``cfg.<key>`` (a dict default is a nested node, filled the same
    way); raises ``error`` for an unknown or ``???`` key. ``owner`` ends the unknown-key message
    (e.g. " for method simclr")."""

    node = omegaconf_select(cfg, key, {})
    OmegaConf.update(cfg, key, node, force_add=True)
    node = OmegaConf.select(cfg, key)
    for name in node:
        if name not in defaults:
            raise error(f"unknown {key}.{name}{owner}; expected one of {sorted(defaults)}")
    for name, default in defaults.items():
        if isinstance(default, dict):
            fill_defaults(cfg, f"{key}.{name}", default, error, owner)
        elif OmegaConf.is_missing(node, name):
            raise error(f"{key}.{name} is missing (???): set it, e.g. {default}")
        else:
            OmegaConf.update(cfg, f"{key}.{name}", omegaconf_select(cfg, f"{key}.{name}", default))
