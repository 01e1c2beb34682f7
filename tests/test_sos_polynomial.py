"""Exact polynomials, the parser and the printer of `hf_plugins.sos`."""

from fractions import Fraction

import numpy as np
import pytest

from hf_plugins.sos.parse import (
    SPREADSHEET_CELL_LIMIT,
    PolynomialParseError,
    TruncatedPolynomialError,
    parse_polynomial,
)
from hf_plugins.sos.polynomial import Polynomial, format_number


sympy = pytest.importorskip("sympy")


def _sympy_poly(text: str, n: int):
    xs = sympy.symbols(f"x1:{n + 1}")
    expr = sympy.sympify(text.replace("^", "**"), locals={f"x{i + 1}": xs[i] for i in range(n)}, rational=True)
    return sympy.Poly(sympy.expand(expr), *xs)


def _as_sympy(p: Polynomial):
    xs = sympy.symbols(f"x1:{p.nvars + 1}")
    return sympy.Poly(
        sum(
            sympy.Rational(c.numerator, c.denominator) * sympy.prod([x**k for x, k in zip(xs, e)])
            for e, c in p.terms.items()
        ),
        *xs,
    )


@pytest.mark.parametrize(
    "text",
    [
        "(x1 - x2)^2 + 1",
        "3.2*x1^2*x2^2 + 13.0*x1^2*x2^3 - 4.9e-3*x3 + 1.0e+3",
        "(x1 - x1*x2)^2 + (x2^2 - x1^4)^2",
        "-(x1 + 2*x2 - x3/4)^3 + 1/3*x2",
        "2*x1^4 + 2*x1^3*x2 - x1^2*x2^2 + 5*x2^4",
    ],
)
def test_parser_agrees_with_sympy_expansion(text):
    """The exact expansion equals sympy's (with `rational=True`, so decimals are read exactly there too)."""
    p = parse_polynomial(text)
    assert _as_sympy(p) == _sympy_poly(text, p.nvars)


def test_round_trip_is_identity_on_canonical_forms():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 5))
        terms = {}
        for _ in range(int(rng.integers(1, 8))):
            e = tuple(int(k) for k in rng.integers(0, 4, n))
            terms[e] = Fraction(int(rng.integers(-50, 51)), int(rng.choice([1, 2, 3, 4, 7, 8, 10, 125])))
        p = Polynomial(terms, n)
        for style in ("x1", "x(1)"):
            text = p.to_str(style)
            q = parse_polynomial(text)
            assert q == p
            assert q.to_str(style) == text


def test_variable_styles_and_decimal_exactness():
    assert parse_polynomial("x(3)^2 - 2*x(1)") == parse_polynomial("x3^2 - 2*x1")
    assert parse_polynomial("4.9e-3*x1").coefficient((1,)) == Fraction(49, 10000)
    assert parse_polynomial("0.1*x1").coefficient((1,)) == Fraction(1, 10)  # not the float 0.1000000000000000055
    assert parse_polynomial("x1**2") == parse_polynomial("x1^2")
    assert parse_polynomial("- -x1") == parse_polynomial("x1")
    assert format_number(Fraction(-49, 10000)) == "-0.0049"
    assert format_number(Fraction(1, 3)) == "1/3"


def test_exact_evaluation_matches_fraction_loop():
    p = parse_polynomial("x1^4*x2^2 + x1^2*x2^4 + 1 - 3*x1^2*x2^2")
    x, y = Fraction(2, 3), Fraction(-5, 7)
    assert p.evaluate((x, y)) == x**4 * y**2 + x**2 * y**4 + 1 - 3 * x**2 * y**2
    assert p.evaluate((1, 1)) == 0


@pytest.mark.parametrize(
    "text, error, fragment",
    [
        ("3.2*x1^2 - 7.0*x", TruncatedPolynomialError, "bare variable"),
        ("x1^2 + x2 -", TruncatedPolynomialError, "operator"),
        ("(x1 + 1", TruncatedPolynomialError, "')'"),
        ("x1 + y2", PolynomialParseError, "position 5"),
        ("x0 + 1", PolynomialParseError, "numbered from 1"),
        ("x1^2.5", PolynomialParseError, "integer"),
        ("x1 / x2", PolynomialParseError, "non-constant"),
        ("2 x1", PolynomialParseError, "missing operator"),
        ("", PolynomialParseError, "empty"),
    ],
)
def test_malformed_input_raises_a_clear_error(text, error, fragment):
    with pytest.raises(error, match=None) as info:
        parse_polynomial(text)
    assert fragment in str(info.value)


def test_spreadsheet_cell_limit_is_rejected():
    """Six rows of the released file were cut at exactly 32,767 characters; any such text is rejected."""
    text = ("1.5*x1^2 + " * 4000)[: SPREADSHEET_CELL_LIMIT - 4] + "x2^2"
    assert len(text) == SPREADSHEET_CELL_LIMIT
    with pytest.raises(TruncatedPolynomialError, match="32767"):
        parse_polynomial(text)


def test_arithmetic_and_properties():
    p = parse_polynomial("(x1 + x2)^2")
    assert p == parse_polynomial("x1^2 + 2*x1*x2 + x2^2")
    assert (p - p).is_zero and (p - p).degree == -1
    assert parse_polynomial("x1^3*x2 + x2^2").top_form() == parse_polynomial("x1^3*x2")
    assert parse_polynomial("x1*x3").occurring_variables() == [0, 2]
    sub = parse_polynomial("x1^2 + x2").substitute([parse_polynomial("x1 + 1"), parse_polynomial("2*x2")])
    assert sub == parse_polynomial("x1^2 + 2*x1 + 1 + 2*x2")
