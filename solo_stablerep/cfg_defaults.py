"""Defaults of a cfg node, shared by ``method_kwargs`` and ``data.synthetic``: a missing key gets
its default, and a key left ``???`` or unknown (a typo that would otherwise be ignored without a
word) is a one-line error naming it. A method declares its ``method_kwargs`` once, as a table of
:class:`Setting` (name, default, rule, meaning): :func:`apply_settings` fills and checks them, and
the docs' tables are compared with it (tests/test_docs.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import omegaconf
from omegaconf import ListConfig, OmegaConf
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


@dataclass(frozen=True)
class Rule:
    """What a setting's value must be: ``text`` completes "<key> must ..." in its one-line error
    (and, without a leading "be ", is the docs' "allowed" column); ``accepts`` tells."""

    text: str
    accepts: Callable[[Any], bool]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def greater_than(low: float) -> Rule:
    return Rule(f"be > {low}", lambda v: _is_number(v) and v > low)


def at_least(low: float) -> Rule:
    return Rule(f"be >= {low}", lambda v: _is_number(v) and v >= low)


def within(low: float, high: float) -> Rule:
    return Rule(f"be in [{low}, {high}]", lambda v: _is_number(v) and low <= v <= high)


def integer(low: int) -> Rule:
    return Rule(
        f"be an integer >= {low}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
    )


def one_of(*choices: str) -> Rule:
    return Rule(f"be one of {sorted(choices)}", lambda v: isinstance(v, str) and v in choices)


def null_or(rule: Rule) -> Rule:
    return Rule(
        f"be null or {rule.text.removeprefix('be ')}", lambda v: v is None or rule.accepts(v)
    )


def containing(part: str) -> Rule:
    return Rule(f"contain {part}", lambda v: isinstance(v, str) and part in v)


BOOLEAN = Rule("be true or false", lambda v: isinstance(v, bool))
NAMES = Rule(
    "be a list of names",
    lambda v: (
        isinstance(v, (list, ListConfig)) and len(v) > 0 and all(isinstance(n, str) for n in v)
    ),
)


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
        value = node[setting.name]
        if not setting.rule.accepts(value):
            shown = repr(value) if isinstance(value, str) else value
            hint = f" ({setting.hint})" if setting.hint else ""
            raise error(f"{key}.{setting.name} must {setting.rule.text}, got {shown}{hint}")
