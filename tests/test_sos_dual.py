"""Dual (moment) certificates that a nonnegative polynomial is not SoS, re-verified here without our code.

For each classic example the checker must return NOT_SOS with a `DualCertificate`, and this file checks the
certificate from scratch: the basis holds every monomial of degree d = deg/2 (forms) or <= d (the Motzkin variant),
which is all a square in an SoS decomposition can use; L(p) is recomputed from sympy's own expansion of the text;
and the moment matrix is PSD by a Fraction LDL^T written here and by sympy.
"""

import itertools
import json
import time
from fractions import Fraction

import pytest

from hf_plugins.sos import (
    CheckerConfig,
    DualCertificate,
    SosLabel,
    certificate_from_dict,
    check_polynomial,
    parse_polynomial,
)


sympy = pytest.importorskip("sympy")
pytest.importorskip("cvxpy")

ROBINSON = "x1^6+x2^6+x3^6 - x1^4*x2^2 - x1^2*x2^4 - x1^4*x3^2 - x1^2*x3^4 - x2^4*x3^2 - x2^2*x3^4 + 3*x1^2*x2^2*x3^2"
# Lax and Lax's quartic: sum_i prod_{j != i} (x_i - x_j) over 5 variables, and its restriction to x5 = 0
LAX_LAX_5 = " + ".join(
    "*".join(f"(x{i}-x{j})" for j in range(1, 6) if j != i) for i in range(1, 6)
)  # fmt: skip
LAX_LAX_4 = "x1*x2*x3*x4 + " + " + ".join(
    f"x{i}*" + "*".join(f"(x{i}-x{j})" for j in range(1, 5) if j != i) for i in range(1, 5)
)
# Horn's form: (sum x_i^2)^2 - 4 sum_{cyclic neighbours} x_i^2 x_{i+1}^2 (the copositive Horn matrix on squares)
HORN = "(x1^2+x2^2+x3^2+x4^2+x5^2)^2 - 4*(x1^2*x2^2 + x2^2*x3^2 + x3^2*x4^2 + x4^2*x5^2 + x5^2*x1^2)"
MOTZKIN_EPS = "x1^4*x2^2 + x1^2*x2^4 + 1 - 3*x1^2*x2^2 + 0.001*(x1^6 + x2^6 + 1)"

CASES = [
    pytest.param(ROBINSON, 3, 3, True, id="Robinson"),
    pytest.param(LAX_LAX_4, 4, 2, True, id="Lax-Lax (x5 = 0)"),
    pytest.param(LAX_LAX_5, 5, 2, True, id="Lax-Lax"),
    pytest.param(HORN, 5, 2, True, id="Horn"),
    pytest.param(MOTZKIN_EPS, 2, 3, False, id="Motzkin + 0.001 (x^6 + y^6 + 1)"),
]


def sympy_terms(text: str, n: int) -> dict:
    xs = sympy.symbols(f"x1:{n + 1}")
    expr = sympy.sympify(text.replace("^", "**"), locals={f"x{i + 1}": xs[i] for i in range(n)}, rational=True)
    return {m: Fraction(int(c.p), int(c.q)) for m, c in sympy.Poly(sympy.expand(expr), *xs).terms()}


def fraction_ldl_psd(M: list[list[Fraction]]) -> bool:
    """Reference PSD test: symmetric elimination with Fractions; a zero pivot needs a zero column."""
    A = [row[:] for row in M]
    n = len(A)
    for k in range(n):
        d = A[k][k]
        if d < 0 or (d == 0 and any(A[i][k] for i in range(k + 1, n))):
            return False
        if d == 0:
            continue
        for i in range(k + 1, n):
            f = A[i][k] / d
            for j in range(k + 1, n):
                A[i][j] -= f * A[k][j]
    return True


def monomials(n: int, degrees) -> set:
    return {e for e in itertools.product(range(max(degrees) + 1), repeat=n) if sum(e) in degrees}


@pytest.mark.parametrize("text, n, d, form", CASES)
def test_classic_nonneg_non_sos_forms_get_a_verified_dual_certificate(text, n, d, form):
    t0 = time.perf_counter()
    v = check_polynomial(text)
    seconds = time.perf_counter() - t0
    assert v.label == SosLabel.NOT_SOS and isinstance(v.evidence, DualCertificate), v.message
    assert v.nonnegative is None  # a dual certificate says nothing about nonnegativity
    assert seconds < 20  # about a second each on 2 CPU cores
    cert = v.evidence
    assert len(cert.basis) <= 21
    # 1. the basis holds every monomial a square can use: degree exactly d for a form, <= d otherwise
    needed = monomials(n, {d} if form else set(range(d + 1)))
    assert needed <= set(cert.basis)
    # 2. L(p) < 0 from sympy's expansion of the text (not our parser)
    y = cert.moments
    value = sum((c * y[e] for e, c in sympy_terms(text, n).items()), Fraction(0))
    assert value < 0 and value == cert.value
    # 3. the rational moment matrix is PSD: our Fraction LDL^T and sympy agree
    M = [[y[tuple(a + b for a, b in zip(bi, bj))] for bj in cert.basis] for bi in cert.basis]
    assert fraction_ldl_psd(M)
    assert sympy.Matrix(
        [[sympy.Rational(x.numerator, x.denominator) for x in row] for row in M]
    ).is_positive_semidefinite


def test_dual_certificate_round_trips_and_tampering_fails():
    p = parse_polynomial(ROBINSON)
    cert = check_polynomial(p).evidence
    back = certificate_from_dict(json.loads(json.dumps(cert.to_dict())))
    assert isinstance(back, DualCertificate) and back.verify(p)
    assert not back.verify(parse_polynomial(ROBINSON + " + x1^2*x2^2*x3^2"))  # another polynomial: L(p) differs
    short = DualCertificate(cert.basis[1:], cert.moments, cert.value)  # a basis monomial missing
    assert not short.verify(p)
    bad = dict(cert.moments)
    bad[(3, 3, 0)] = Fraction(10**6)  # an off-diagonal moment far too large: M is no longer PSD
    assert not DualCertificate(cert.basis, bad, cert.value).verify(p)


def test_sft_trace_quotes_the_dual_certificate():
    from hf_plugins.sos import parse_boxed_answer, reasoning_trace

    p = parse_polynomial(HORN)
    trace = reasoning_trace(p, check_polynomial(p).evidence)
    assert "moment matrix" in trace and trace.endswith("So p is not SoS.")
    assert parse_boxed_answer(trace + " \\boxed{0}") == 0


def test_sos_polynomials_get_no_dual_certificate():
    """Soundness the other way: an SoS polynomial has no separating functional, so none is ever returned."""
    from hf_plugins.sos.dual import find_dual_certificate

    for text in ("(x1^2 - x2^2)^2 + (x1*x2 - 1)^2", "x1^4*x2^2 + x1^2*x2^4 + x1^6 + x2^6 + 1"):
        assert find_dual_certificate(parse_polynomial(text)).certificate is None


def test_dual_step_can_be_switched_off():
    v = check_polynomial(HORN, CheckerConfig(dual=False, hard_point_time_limit=0.5))
    assert v.label == SosLabel.UNKNOWN and "not a proof" in v.message
