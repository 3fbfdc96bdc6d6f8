"""What a value must be, in one vocabulary (standard library only): a :class:`Rule` is a predicate
and the words of its one-line error. The ``method_kwargs`` tables
(:mod:`~solo_stablerep.cfg_defaults`), the solo-learn settings
(:mod:`~solo_stablerep.solo_settings`) and the command-line options' types
(:mod:`~solo_stablerep.console`) all check numbers with these."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What a setting's value must be: ``text`` completes "<key> must ..." in its one-line error
    (and, without a leading "be ", is the docs' "allowed" column); ``accepts`` tells."""

    text: str
    accepts: Callable[[Any], bool]


def is_integer(value: Any) -> bool:
    """An int, not a bool (True is 1 to Python, and a switch is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (nan and inf pass no range)."""
    return is_integer(value) or (isinstance(value, float) and math.isfinite(value))


def greater_than(low: float) -> Rule:
    return Rule(f"be > {low}", lambda v: is_number(v) and v > low)


def at_least(low: float) -> Rule:
    return Rule(f"be >= {low}", lambda v: is_number(v) and v >= low)


def within(low: float, high: float) -> Rule:
    return Rule(f"be in [{low}, {high}]", lambda v: is_number(v) and low <= v <= high)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """An integer, ``>= low`` and ``<= high`` where given."""
    bounds = [f">= {low}"] if low is not None else []
    bounds += [f"<= {high}"] if high is not None else []
    return Rule(
        " ".join(["be an integer", " and ".join(bounds)]).strip(),
        lambda v: is_integer(v) and (low is None or v >= low) and (high is None or v <= high),
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
# a list node of OmegaConf (ListConfig) is a Sequence too
NAMES = Rule(
    "be a list of names",
    lambda v: (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and len(v) > 0
        and all(isinstance(n, str) for n in v)
    ),
)
