"""The one vocabulary of what a value must be (solo_stablerep/rules.py): the words of the error and
the predicate agree, a switch is not a number, and nan or inf pass no range."""

import pytest
from omegaconf import OmegaConf

from solo_stablerep.rules import NAMES, at_least, greater_than, integer, null_or, within


@pytest.mark.parametrize(
    "rule, text", [(integer(), "be an integer"), (integer(2, 5), "be an integer >= 2 and <= 5")]
)
def test_integer_rules_say_their_bounds(rule, text):
    assert rule.text == text


@pytest.mark.parametrize("value", [True, 2.0, "3", None])
def test_an_integer_is_an_int_and_not_a_switch(value):
    assert integer(0).accepts(3) and not integer(0).accepts(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True])
def test_numbers_are_finite_and_not_switches(value):
    for rule in (greater_than(0), at_least(0), within(0, 1e308)):
        assert not rule.accepts(value), (rule.text, value)
    assert at_least(0).accepts(10**400)  # an int too large for a float is still an int


def test_null_or_and_lists_of_omegaconf():
    assert null_or(at_least(0)).accepts(None) and not at_least(0).accepts(None)
    assert null_or(at_least(0)).text == "be null or >= 0"
    assert NAMES.accepts(OmegaConf.create(["cat", "dog"])) and not NAMES.accepts("cat")
