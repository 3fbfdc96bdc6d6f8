"""Defaults of a cfg node, shared by ``method_kwargs`` and ``data.synthetic``: a missing key gets
its default, and a key left ``???`` or unknown (a typo that would otherwise be ignored without a
word) is a one-line error naming it. A method declares its ``method_kwargs`` once, as a table of
:class:`Setting` (name, default, rule, meaning): :func:`apply_settings` fills and checks them, and
the docs' tables are compared with it (tests/test_docs.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import omegaconf
from omegaconf import OmegaConf

from solo_stablerep.errors import InputError
from solo_stablerep.rules import Rule


def _select(cfg: omegaconf.DictConfig, key: str, default: Any) -> Any:
    """``cfg.<key>``, or ``default`` where absent; the word None is null (as solo-learn's
    ``omegaconf_select``, which the configs' readers use)."""
    value = OmegaConf.select(cfg, key, default=default)
    return None if isinstance(value, str) and value == "None" else value


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

    node = _select(cfg, key, {})
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
            OmegaConf.update(cfg, f"{key}.{name}", _select(cfg, f"{key}.{name}", default))


@dataclass(frozen=True)
class Setting:
    """One key of a settings table: its default, what its value must be, what it means (one line,
    the docs' table), and a hint that ends its error."""

    name: str
    default: Any
    rule: Rule
    meaning: str
    hint: str = ""


def apply_settings(
    cfg: omegaconf.DictConfig,
    key: str,
    settings: Sequence[Setting],
    error: type[InputError] = InputError,
    owner: str = "",
) -> None:
    """:func:`fill_defaults` from the table's defaults, then each value checked against its rule:
    a wrong value or type is a one-line ``error`` naming the key."""

    fill_defaults(cfg, key, {s.name: s.default for s in settings}, error, owner)
    node = OmegaConf.select(cfg, key)
    for setting in settings:
        check_value(f"{key}.{setting.name}", node[setting.name], setting.rule, error, setting.hint)


def check_value(
    key: str, value: Any, rule: Rule, error: type[InputError] = InputError, hint: str = ""
) -> None:
    """Raises ``error`` unless ``rule`` accepts ``value``: one line, ``<key> must <rule>, got
    <value> (<hint>)``."""
    if not rule.accepts(value):
        shown = "null" if value is None else repr(value) if isinstance(value, str) else value
        raise error(f"{key} must {rule.text}, got {shown}" + (f" ({hint})" if hint else ""))
