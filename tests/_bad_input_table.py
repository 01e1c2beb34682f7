"""The bad-input tables' shared parts (tests/test_bad_inputs*.py, tests/test_sparse_delta_bad_inputs.py).

A row is (plugin, case, act, expect, before): `act` provokes the bad input, `expect` what must happen (one clear
error, a warning, or a checker verdict), `before` what the code did before these checks existed ("silent" =
accepted, possibly with a wrong result; "deep" = an error from deep inside, not naming the input; "same" = an error
already, possibly worded otherwise).
"""

from __future__ import annotations

import math
import re

import pytest


INF, NAN = math.inf, math.nan
BEFORE = ("same", "silent", "deep")


def err(pattern, cls=ValueError):
    return ("raises", cls, pattern)


def warns(pattern, cls=UserWarning):
    return ("warns", cls, pattern)


def verdict(label, pattern):
    return ("verdict", label, pattern)


def expect_outcome(expect, call) -> None:
    """`call()` raises / warns with a message matching the pattern, or returns a result of that verdict label."""
    kind, what, pattern = expect
    if kind == "raises":
        with pytest.raises(what, match=pattern):
            call()
    elif kind == "warns":
        with pytest.warns(what, match=pattern):
            call()
    else:
        result = call()
        assert result.label == what and re.search(pattern, result.message), (result.label, result.message)


def check_table(rows, plugins: set[str], kinds: tuple[str, ...]) -> None:
    """The table covers exactly `plugins`, names no (plugin, case) twice, and uses known kinds and `before` values."""
    assert {r[0] for r in rows} == plugins
    assert len({(r[0], r[1]) for r in rows}) == len(rows)
    assert all(r[4] in BEFORE and r[3][0] in kinds for r in rows)
