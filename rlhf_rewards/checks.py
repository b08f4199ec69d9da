"""Argument checks written once: integers (never a bool), numbers, flags and choices.

Every check raises a ``ValueError`` whose message is ``<name> must be <expected>, got <value!r>.`` (the
choice check: ``<name>=<value!r>; choose one of [...]``). With ``request=True`` it raises a
:class:`~rlhf_rewards.errors.RequestError` on field ``name`` instead, whose message reads the same; that is
the form for request fields, which the server answers with a 400.

``bool`` is a subclass of ``int`` in Python, so ``True`` would pass a plain ``isinstance(value, int)``; no
count, size or token id here is ever a bool, so the checks below reject it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rlhf_rewards.errors import RequestError


def is_int(value: Any, *, minimum: int | None = None, maximum: int | None = None) -> bool:
    """True for an ``int`` that is not a ``bool``, within ``[minimum, maximum]`` where those are given."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def is_number(value: Any, *, minimum: float | None = None, finite: bool = False) -> bool:
    """True for an ``int`` or ``float`` that is not a ``bool``, at least ``minimum`` (so never NaN when a
    minimum is given) and finite when ``finite`` is set."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if minimum is not None and not value >= minimum:
        return False
    return not finite or math.isfinite(value)


def fail(
    name: str, expected: str, value: Any, *, request: bool = False, index: int | None = None
) -> ValueError:
    """The error ``<name> must be <expected>, got <value!r>.``: a ``RequestError`` on field ``name`` (entry
    ``index``) when ``request`` is set, else a plain ``ValueError``. Returned for the caller to raise."""
    reason = f"must be {expected}, got {value!r}."
    if request:
        return RequestError(reason, field=name, index=index)
    return ValueError(f"{name} {reason}")


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    expected: str | None = None,
    request: bool = False,
    index: int | None = None,
) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[minimum, maximum]``, else raise (see the module
    docstring). ``expected`` words the rule in the message; by default ``an integer >= <minimum>``."""
    if not is_int(value, minimum=minimum, maximum=maximum):
        raise fail(name, expected or _int_rule(minimum, maximum), value, request=request, index=index)
    return value


def check_positive_int(name: str, value: Any, *, request: bool = False) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise ``<name> must be a positive integer``."""
    return check_int(name, value, minimum=1, expected="a positive integer", request=request)


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    finite: bool = False,
    expected: str | None = None,
) -> float:
    """Return ``value`` if it is an int or float (not a bool) at least ``minimum`` (and finite when
    ``finite`` is set), else raise a ``ValueError``. ``expected`` words the rule; by default ``a number >=
    <minimum>`` or ``a finite number``. The value comes back as given (an int stays an int)."""
    if not is_number(value, minimum=minimum, finite=finite):
        rule = "a finite number" if finite else "a number"
        raise fail(name, expected or (rule if minimum is None else f"{rule} >= {minimum}"), value)
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``, else raise ``<name> must be True or False``."""
    if not isinstance(value, bool):
        raise fail(name, "True or False", value)
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any], *, otherwise: str = "") -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ``<name>=<value!r>; choose one of [...]``
    (followed by `` or <otherwise>`` when given, e.g. ``pass a callable``)."""
    options = list(choices)
    if value not in options:
        tail = f" or {otherwise}" if otherwise else ""
        raise ValueError(f"{name}={value!r}; choose one of {options}{tail}.")
    return value


def _int_rule(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_positive_int",
    "fail",
    "is_int",
    "is_number",
]
