"""Field checks shared by the tuner configs (`LiftConfig`, `SeftConfig`): each raises one `ValueError` that names the
field, the value and what is expected, so a bad value fails in `__post_init__` instead of deep inside training."""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real


__all__ = ["check_bool", "check_choice", "check_int", "check_real", "check_sizes"]


def check_int(name: str, value, minimum: int | None = None, optional: bool = False) -> None:
    """`value` is an integer (not a bool) >= `minimum`, or None when `optional`."""
    if value is None and optional:
        return
    if not isinstance(value, Integral) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        none = ", or None" if optional else ""
        raise ValueError(f"`{name}` must be an integer{bound}{none}; got {value!r}.")


def check_real(
    name: str,
    value,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """`value` is a finite real number (not a bool or a string) in the interval given, or None when `optional`."""
    if value is None and optional:
        return
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        none = ", or None" if optional else ""
        raise ValueError(f"`{name}` must be a number in {interval}{none}; got {value!r}.")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def check_sizes(name: str, value) -> None:
    """Recorded buffer sizes: None or `{module name: non-negative int}` (written by the tuner, read back on load)."""
    if value is None:
        return
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for k, v in value.items()
    ):
        raise ValueError(
            f"`{name}` must be None or a dict of module name -> non-negative int (the tuner writes it when saving; "
            f"do not set it by hand); got {value!r}."
        )
