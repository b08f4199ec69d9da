"""The shared argument checks: bools are never ints, messages name the argument and the rule."""

from __future__ import annotations

import math

import pytest

from rlhf_rewards.checks import check_bool, check_choice, check_int, check_number, check_positive_int, is_int
from rlhf_rewards.errors import RequestError


def test_bool_is_not_an_int() -> None:
    assert not is_int(True)
    with pytest.raises(ValueError, match=r"^n must be an integer >= 0, got True\.$"):
        check_int("n", True, minimum=0)
    assert check_int("n", 0, minimum=0) == 0


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({}, "an integer"),
        ({"maximum": 3}, "an integer <= 3"),
        ({"minimum": 1, "maximum": 3}, r"an integer in \[1, 3\]"),
    ],
)
def test_int_rule_wording(kwargs: dict, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"^n must be {rule}, got 'x'\.$"):
        check_int("n", "x", **kwargs)


def test_request_form_names_the_field() -> None:
    with pytest.raises(RequestError) as info:
        check_positive_int("max_length", 0, request=True)
    assert str(info.value) == "max_length must be a positive integer, got 0."
    assert info.value.param == "max_length"


def test_numbers_flags_and_choices() -> None:
    assert check_number("t", 2, minimum=0) == 2
    with pytest.raises(ValueError, match=r"^t must be a number >= 0, got nan\.$"):
        check_number("t", math.nan, minimum=0)
    with pytest.raises(ValueError, match=r"^s must be a finite number, got inf\.$"):
        check_number("s", math.inf, finite=True)
    with pytest.raises(ValueError, match=r"^f must be True or False, got 1\.$"):
        check_bool("f", 1)
    with pytest.raises(ValueError, match=r"^how='x'; choose one of \['a', 'b'\] or pass a callable\.$"):
        check_choice("how", "x", ["a", "b"], otherwise="pass a callable")
