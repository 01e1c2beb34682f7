"""The SoS checker on known cases, with every certificate re-verified by code that did not find it
(Motzkin, Parrilo's quartic, singular Gram matrices, the official reasoning prompt's examples)."""

from fractions import Fraction

import numpy as np
import pytest

from hf_plugins.sos import (
    CheckerConfig,
    GramCertificate,
    NewtonCertificate,
    PointCertificate,
    SosLabel,
    check_polynomial,
    parse_polynomial,
)
from hf_plugins.sos.exact import is_psd, ldl, quad_form


sympy = pytest.importorskip("sympy")
pytest.importorskip("cvxpy")

MOTZKIN = "x1^4*x2^2 + x1^2*x2^4 + 1 - 3*x1^2*x2^2"


def sympy_expand_squares(cert: GramCertificate, nvars: int):
    """Reference: expand sum_k D_k (l_k^T z)^2 with sympy, from the rational LDL^T of the certificate."""
    xs = sympy.symbols(f"x1:{nvars + 1}")
    total = 0
    for d, q in cert.squares(nvars):
        qs = sum(
            sympy.Rational(c.numerator, c.denominator) * sympy.prod([x**k for x, k in zip(xs, e)])
            for e, c in q.terms.items()
        )
        total += sympy.Rational(d.numerator, d.denominator) * qs**2
    return sympy.Poly(sympy.expand(total), *xs)


def sympy_poly(p, nvars):
    xs = sympy.symbols(f"x1:{nvars + 1}")
    return sympy.Poly(
        sum(
            sympy.Rational(c.numerator, c.denominator) * sympy.prod([x**k for x, k in zip(xs, e)])
            for e, c in p.terms.items()
        ),
        *xs,
    )


def sympy_value(text: str, point) -> sympy.Rational:
    """Reference evaluation: sympy substitution of the rational point into the text read by sympy itself."""
    n = len(point)
    xs = sympy.symbols(f"x1:{n + 1}")
    expr = sympy.sympify(text.replace("^", "**"), locals={f"x{i + 1}": xs[i] for i in range(n)}, rational=True)
    return expr.subs({x: sympy.Rational(v.numerator, v.denominator) for x, v in zip(xs, point)})


def test_motzkin_is_not_sos_by_the_diagonal_argument_and_never_called_nonnegative():
    """Motzkin: nonnegative but not SoS. The checker must say NOT_SOS from the diagonal x1^2 x2^2 coefficient,
    and must not claim anything about nonnegativity (it has no multiplier certificate)."""
    v = check_polynomial(MOTZKIN)
    assert v.label == SosLabel.NOT_SOS
    assert isinstance(v.evidence, NewtonCertificate) and v.evidence.reason == "diagonal"
    assert v.evidence.alpha == (2, 2)
    assert v.nonnegative is None
    # Nonnegativity itself, checked another way: AM-GM bound on a grid never goes below 0.
    g = np.linspace(-2, 2, 81)
    X, Y = np.meshgrid(g, g)
    assert (X**4 * Y**2 + X**2 * Y**4 + 1 - 3 * X**2 * Y**2).min() >= -1e-12
    # Adding a constant does not help: the diagonal argument does not involve the constant term.
    assert check_polynomial(MOTZKIN + " + 0.01").label == SosLabel.NOT_SOS


def test_shifted_square_is_sos_with_an_exact_certificate():
    v = check_polynomial("(x1 - x2)^2 + 1")
    assert v.label == SosLabel.SOS and v.nonnegative
    p = parse_polynomial("(x1 - x2)^2 + 1")
    assert sympy_expand_squares(v.evidence, 2) == sympy_poly(p, 2)


@pytest.mark.parametrize(
    "text",
    ["2*x1^4 + 2*x1^3*x2 - x1^2*x2^2 + 5*x2^4", "(x1^2 - x2^2)^2", "(x1 - x1*x2)^2 + (x2^2 - x1^4)^2"],
)
def test_gram_sdp_certificates_expand_to_the_polynomial(text):
    """SDP + exact rounding; the certificate's squares, expanded by sympy, equal p exactly."""
    v = check_polynomial(text)
    assert v.label == SosLabel.SOS, v.message
    assert isinstance(v.evidence, GramCertificate)
    p = parse_polynomial(text)
    assert sympy_expand_squares(v.evidence, p.nvars) == sympy_poly(p, p.nvars)
    assert all(d > 0 for d, _ in v.evidence.squares(p.nvars))


def test_odd_degree_gives_an_exact_point():
    text = "x1^3*x2^2 + x1^2 + x2^4 + 1"
    v = check_polynomial(text)
    assert v.label == SosLabel.NOT_SOS and v.nonnegative is False
    assert isinstance(v.evidence, PointCertificate)
    assert sympy_value(text, v.evidence.point) == v.evidence.value < 0


def test_negative_shift_gives_its_exact_point():
    """1.8(x1+3)^2 + 1.2(x2+2)^2 - 0.18 is negative at (-3, -2): the reasoning prompt's own example."""
    text = "1.8*(x1 + 3)^2 + 1.2*(x2 + 2)^2 - 0.18"
    v = check_polynomial(text)
    assert v.label == SosLabel.NOT_SOS
    assert v.evidence.point == (Fraction(-3), Fraction(-2))
    assert sympy_value(text, v.evidence.point) == Fraction(-18, 100)


def test_prompt_sdp_example_is_not_sos():
    """The official prompt leaves this example unanswered; p(1, 1) = -3."""
    text = "x1^4 - 4*x1^3*x2 + 7*x1^2*x2^2 - 4*x1*x2^3 - 4*x1*x2 + x2^4"
    v = check_polynomial(text)
    assert v.label == SosLabel.NOT_SOS
    assert sympy_value(text, v.evidence.point) < 0


def test_quadratics_are_decided_exactly_both_ways():
    sos = check_polynomial("x1^2 + 2*x1*x2 + 2*x2^2 + 2*x1 + 4")
    assert sos.label == SosLabel.SOS and sos.method.startswith("quadratic")
    neg = check_polynomial("x1^2 + 4*x1*x2 + x2^2 + 1")  # indefinite: negative along (1, -1)
    assert neg.label == SosLabel.NOT_SOS and neg.evidence.value < 0
    singular = check_polynomial("x1^2 - 2*x1*x2 + x2^2")  # PSD and singular
    assert singular.label == SosLabel.SOS


def test_univariate_and_constants():
    assert check_polynomial("x1^4 - 2*x1^2 + 1").label == SosLabel.SOS  # (x^2 - 1)^2, real double roots
    v = check_polynomial("x1^4 - 2*x1^2 + 0.9")
    assert v.label == SosLabel.NOT_SOS and v.evidence.value < 0
    assert check_polynomial("3").label == SosLabel.SOS
    assert check_polynomial("-1/2").label == SosLabel.NOT_SOS


def test_truncated_text_is_rejected_not_guessed():
    v = check_polynomial("3.2*x1^2*x2^2 + 1.5 - 7.0*x")
    assert v.label == SosLabel.REJECTED and v.proved_label is None and "truncated" in v.message


def test_tampered_certificates_fail_verification():
    p = parse_polynomial("(x1 - x2)^2 + 1")
    v = check_polynomial(p)
    Q = [row[:] for row in v.evidence.gram]
    Q[1][1] += 1  # no longer z^T Q z = p
    assert not GramCertificate(v.evidence.basis, Q).verify(p)
    assert not PointCertificate((Fraction(0), Fraction(0)), Fraction(-1)).verify(p)
    motz = parse_polynomial(MOTZKIN)
    assert not NewtonCertificate((2, 2), "diagonal", [(1, 1)]).verify(motz)  # basis misses lattice points


def test_exact_ldl_and_bareiss_agree_with_numpy():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 7))
        L = rng.integers(-3, 4, (n, int(rng.integers(0, n + 1))))
        Q = L @ L.T
        if trial % 3 == 0:
            Q[0, 0] -= int(rng.integers(0, 3))
        Qf = [[Fraction(int(x), 3) for x in row] for row in Q]
        psd = np.linalg.eigvalsh(Q.astype(float)).min() > -1e-9
        res = ldl(Qf, want_direction=True)
        assert res.psd == psd == is_psd(Qf)
        if not psd:
            assert quad_form(Qf, res.direction) < 0


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_basis": 0}, "max_basis"), ({"sdp_time_limit": 0}, "sdp_time_limit"), ({"solvers": "CLARABEL"}, "solvers")],
)
def test_checker_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CheckerConfig(**kwargs)
