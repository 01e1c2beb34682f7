"""The constructions behind each generator class (`generators.py`): exact rational polynomials with the certificate
that proves their label. `build` returns `(polynomial, printed text, certificate)`, or None to ask for another draw.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .certificates import PointCertificate, SquaresCertificate, TheoryCertificate
from .checker import quadratic_gram
from .exact import ldl
from .polynomial import Exponent, Polynomial, format_number
from .search import FloatPolynomial, negative_direction_point


__all__ = ["build"]


# ----------------------------------------------------------------------------------------------- building blocks
def _rat(rng: np.random.Generator, m: int, nonzero: bool = False) -> Fraction:
    while True:
        q = (
            Fraction(int(rng.integers(-m * 4, m * 4 + 1)), 4)
            if rng.random() < 0.3
            else Fraction(int(rng.integers(-m, m + 1)))
        )
        if q or not nonzero:
            return q


def _point(rng: np.random.Generator, n: int, spread: int = 2) -> tuple[Fraction, ...]:
    return tuple(
        Fraction(int(rng.integers(-4 * spread, 4 * spread + 1)), int(rng.choice([1, 2, 4]))) for _ in range(n)
    )


def _random_exponent(rng: np.random.Generator, n: int, deg: int) -> Exponent:
    e = [0] * n
    for _ in range(deg):
        e[int(rng.integers(n))] += 1
    return tuple(e)


def _monomials_upto(n: int, d: int) -> list[Exponent]:
    out: list[Exponent] = []

    def rec(i, prefix, left):
        if i == n:
            out.append(tuple(prefix))
            return
        for k in range(left + 1):
            rec(i + 1, prefix + [k], left - k)

    rec(0, [], d)
    return sorted(out, key=lambda e: (sum(e), tuple(-k for k in e)))


def _linear_combo(coeffs, basis: list[Exponent], n: int) -> Polynomial:
    return Polynomial({b: Fraction(c) for b, c in zip(basis, coeffs) if c}, n)


def _squares_item(cls, squares, weights, n, style, meta) -> tuple[Polynomial, str, object]:
    p = Polynomial({}, n)
    for w, q in zip(weights, squares):
        p = p + q * q * w
    return p, p.to_str(style), SquaresCertificate(list(weights), list(squares))


def _gram_negative(rng, squares, weights, basis, n, style) -> tuple[Polynomial, str, object]:
    """p = sum w_k q_k^2 - s (w^T z)^2 with s set so that p(x0) = -delta exactly."""
    for _ in range(50):
        x0 = _point(rng, n)
        wvec = [int(rng.integers(-2, 3)) if rng.random() < max(0.3, 2 / len(basis)) else 0 for _ in basis]
        r = _linear_combo(wvec, basis, n)
        rv = r.evaluate(x0)
        if rv == 0:
            continue
        base = sum((w * q.evaluate(x0) ** 2 for w, q in zip(weights, squares)), Fraction(0))
        # s > base / rv^2 makes p(x0) < 0; round it up to a multiple of 1/4 so that the printed coefficients do not
        # betray the negative class by odd denominators
        s = Fraction(math.floor(base / rv**2 * 4) + int(rng.integers(1, 5)), 4)
        p = Polynomial({}, n)
        for w, q in zip(weights, squares):
            p = p + q * q * w
        p = p - r * r * s
        value = p.evaluate(x0)
        assert value < 0
        return p, p.to_str(style), PointCertificate(x0, value, "constructed: p(x0) < 0")
    raise RuntimeError("could not build a negative Gram item; try another seed")


# --------------------------------------------------------------------------------------------------- classes
def _odd_degree(rng, cfg, n: int):
    D = cfg.degree + 1
    terms = {_random_exponent(rng, n, D): _rat(rng, cfg.coef_max, nonzero=True)}
    for _ in range(cfg.num_terms - 1):
        terms[_random_exponent(rng, n, int(rng.integers(0, D + 1)))] = _rat(rng, cfg.coef_max, nonzero=True)
    p = Polynomial(terms, n)
    if p.degree != D:
        return None
    cert = negative_direction_point(p, rng)
    return None if cert is None else (p, p.to_str(cfg.style), cert)


def _random_squares(rng, cfg, n: int, k: int):
    d = cfg.degree // 2
    squares = []
    for i in range(k):
        terms = {}
        for j in range(int(rng.integers(2, 5))):
            deg = d if (i == 0 and j == 0) else int(rng.integers(0, d + 1))
            terms[_random_exponent(rng, n, deg)] = _rat(rng, cfg.coef_max, nonzero=True)
        squares.append(Polynomial(terms, n))
    return squares


def _shift_below(rng, s: Polynomial, n: int) -> tuple[tuple[Fraction, ...], Fraction] | None:
    """A rational point x0 and a shift C (a multiple of 1/4, drawn at random) with s(x0) < C < s(0): s - C is then
    negative at x0 while its constant term s(0) - C stays positive, so the sign of the constant term does not give
    the label away. x0 comes from local minimisation of s from a few random starts."""
    s0 = s.constant_term()
    fs = FloatPolynomial(s)
    for _ in range(4):
        x, _ = _local_min(fs, rng.standard_normal(n) * 2)
        for den in (1, 2, 4, 8):
            x0 = tuple(Fraction(round(float(v) * den), den) for v in x)
            lo, hi = math.floor(4 * s.evaluate(x0)) + 1, math.ceil(4 * s0) - 1  # 4 s(x0) < 4 C < 4 s(0)
            if lo <= hi:
                return x0, Fraction(int(rng.integers(lo, hi + 1)), 4)
    return None


def _squared_with_tail(rng, cfg, n: int, squares: list[Polynomial]):
    """An SoS item printed like the negatives, `(q_1)^2 + ... - c`: q_1 = w^2 + m with w of degree <= degree / 4
    and m > 0, so (w^2 + m)^2 - c = (w^2)^2 + 2m w^2 + (m^2 - c) is SoS for 0 < c <= m^2 (explicit squares)."""
    w = Polynomial({}, n)
    while w.is_zero:
        w = Polynomial({_random_exponent(rng, n, int(rng.integers(1, max(1, cfg.degree // 4) + 1))):
                        _rat(rng, cfg.coef_max, nonzero=True) for _ in range(2)}, n)  # fmt: skip
    m = Fraction(int(rng.integers(1, cfg.coef_max + 1)))
    c = Fraction(int(rng.integers(1, 4 * int(m * m) + 1)), 4)  # 0 < c <= m^2
    squares = [w * w + m, *squares[1:]]
    p = sum((q * q for q in squares), Polynomial({}, n)) - c
    cert = SquaresCertificate([Fraction(1)] * (len(squares) - 1) + [Fraction(1), 2 * m, m * m - c],
                              [*squares[1:], w * w, w, Polynomial.constant(1, n)])  # fmt: skip
    order = rng.permutation(len(squares)).tolist()  # the w^2 + m square is not always first
    text = " + ".join(f"({squares[i].to_str(cfg.style)})^2" for i in order) + f" - {format_number(c)}"
    return p, text, cert


def _sos(rng, cfg, n, squared: bool, negative: bool):
    """Sum of squares (positive), or s - C with C drawn between s(x0) and s(0) (negative). In squared form both
    print as `(q_1)^2 + ... - c`, so the subtracted constant is no cue: the positive's first square is w^2 + m with
    c <= m^2."""
    k = max(1, cfg.num_terms // 2)
    squares = _random_squares(rng, cfg, n, k)
    weights = [Fraction(1)] * k
    if squared and not negative:
        return _squared_with_tail(rng, cfg, n, squares)
    p, text, cert = _squares_item("sos", squares, weights, n, cfg.style, {})
    if negative:
        shift = _shift_below(rng, p, n)
        if shift is None:
            return None  # s(0) is (near) the minimum of s: draw other squares
        x0, C = shift
        p = p - C
        cert = PointCertificate(x0, p.evaluate(x0), "constructed: p(x0) < 0")
        text = p.to_str(cfg.style)
        if squared:
            order = rng.permutation(len(squares)).tolist()
            text = " + ".join(f"({squares[i].to_str(cfg.style)})^2" for i in order) + f" - {format_number(C)}"
    return p, text, cert


def _gram(rng, cfg, n, basis: list[Exponent], kind: str, negative: bool):
    N = len(basis)
    m = cfg.coef_max
    if kind == "dense":
        L = rng.integers(-m, m + 1, (N, N))
        weights = [Fraction(1)] * N
    elif kind == "sparse":
        L = np.diag(rng.integers(1, m + 1, N) * rng.choice([-1, 1], N))
        mask = rng.random((N, N)) < 0.1  # density 0.1 (Table 3, set 5.2)
        L = L + np.where(mask, rng.integers(-m, m + 1, (N, N)), 0)
        weights = [Fraction(1)] * N
    elif kind == "low_rank":
        L = rng.integers(-m, m + 1, (N, 3))  # rank 3 (Table 3, set 5.3)
        weights = [Fraction(1)] * 3
    elif kind == "ill_conditioned":
        L = rng.integers(-m, m + 1, (N, N))
        # weights 1 ... 10^12 geometrically (Table 3, set 5.4: "lambda = 1-10^12")
        weights = [Fraction(10 ** round(12 * k / max(1, N - 1))) for k in range(N)]
    else:
        raise ValueError(kind)
    squares = [_linear_combo([int(x) for x in L[:, k]], basis, n) for k in range(L.shape[1])]
    keep = [(w, q) for w, q in zip(weights, squares) if not q.is_zero]
    weights, squares = [w for w, _ in keep], [q for _, q in keep]
    if negative:
        return _gram_negative(rng, squares, weights, basis, n, cfg.style)
    return _squares_item(kind, squares, weights, n, cfg.style, {})


def _quadratic_quartic(rng, cfg, n, negative: bool):
    """c + g^T x + x^T H x + (sigma/4)|x|^4 (Set 4's shape). With mu >= 0 rational and H + mu I > 0:
    p = (sigma/4)(|x|^2 - 2 mu / sigma)^2 + [x^T (H + mu I) x + g^T x + c - mu^2 / sigma], and the bracket is a PSD
    quadratic once c >= mu^2/sigma + g^T (H + mu I)^{-1} g / 4: explicit squares, no SDP."""
    m = cfg.coef_max
    sigma = Fraction(int(rng.integers(1, 4 * m + 1)), int(rng.choice([1, 2, 4])))
    A = rng.integers(-m, m + 1, (n, n))
    H = (A + A.T) // 2
    g = rng.integers(-3 * m, 3 * m + 1, n)
    xs = [Polynomial.variable(i, n) for i in range(n)]
    norm2 = sum((x * x for x in xs), Polynomial({}, n))
    quad = Polynomial({}, n)
    for i in range(n):
        quad = quad + xs[i] * int(g[i])
        for j in range(n):
            if H[i, j]:
                quad = quad + xs[i] * xs[j] * int(H[i, j])
    f = norm2 * norm2 * (sigma / 4) + quad  # p without its constant
    if not negative:
        mu = Fraction(max(0, math.ceil(-float(np.linalg.eigvalsh(H.astype(float))[0]))) + 1)
        shifted = f - (norm2 * norm2 * (sigma / 4)) + norm2 * mu  # x^T (H + mu I) x + g^T x
        G = quadratic_gram(shifted)
        Hm = np.array([[float(G[i][j]) for j in range(1, n + 1)] for i in range(1, n + 1)])
        gh = np.array([float(G[0][j]) for j in range(1, n + 1)])
        need = Fraction(float(gh @ np.linalg.solve(Hm, gh))).limit_denominator(10**6)
        # the margin covers the float rounding of `need`; the exact LDL^T below proves it anyway
        # an integer constant with a random margin; the exact LDL^T below proves the bracket PSD anyway
        c = math.ceil(need + mu * mu / sigma + Fraction(1, 10**3)) + int(rng.integers(0, 4))
        G[0][0] += c - mu * mu / sigma
        res = ldl(G)
        if not res.psd:
            return None
        p = f + c
        basis = [(0,) * n] + [tuple(int(i == j) for j in range(n)) for i in range(n)]
        squares = [norm2 - 2 * mu / sigma]
        weights = [sigma / 4]
        for k, dk in enumerate(res.D):
            if dk:
                squares.append(Polynomial({basis[j]: res.L[j][k] for j in range(n + 1)}, n))
                weights.append(dk)
        return p, p.to_str(cfg.style), SquaresCertificate(weights, squares)
    ff = FloatPolynomial(f)
    best = min((_local_min(ff, rng.standard_normal(n)) for _ in range(3)), key=lambda r: r[1])
    x0 = tuple(Fraction(round(float(v) * 8), 8) for v in best[0])
    # the largest integer c with f(x0) + c < 0, minus 0-3: ceil(-f(x0)) - 1 (floor(-f(x0)) gave p(x0) = 0, an
    # unproved and sometimes wrong label, when f(x0) was an integer)
    c = math.ceil(-f.evaluate(x0)) - 1 - int(rng.integers(0, 4))
    p = f + c
    return p, p.to_str(cfg.style), PointCertificate(x0, p.evaluate(x0), "constructed: p(x0) < 0")


def _local_min(ff, x: np.ndarray, steps: int = 500) -> tuple[np.ndarray, float]:
    """A local minimiser of the float polynomial `ff` from `x`: scipy's BFGS when scipy is installed (the `sos`
    extra), else gradient descent with step doubling / halving (numpy only). Only proposes x0: the label is proved
    by the exact value at the rounded point."""
    try:
        from scipy.optimize import minimize
    except ImportError:
        fx, lr = float(ff(x[None, :])[0]), 0.1
        for _ in range(steps):
            g = ff.grad(x)
            while lr > 1e-10:
                y = x - lr * g
                fy = float(ff(y[None, :])[0])
                if fy < fx:
                    x, fx, lr = y, fy, lr * 2
                    break
                lr /= 2
            else:
                break
        return x, fx
    res = minimize(lambda v: float(ff(v[None, :])[0]), x, jac=ff.grad, method="BFGS")
    return res.x, float(res.fun)


def _motzkin(rng, cfg, n):
    if n < 2:
        return None
    i, j = (int(v) for v in rng.choice(n, 2, replace=False))
    scalings = (
        Fraction(int(rng.integers(1, 4)), int(rng.integers(1, 3))),
        Fraction(int(rng.integers(1, 4)), int(rng.integers(1, 3))),
    )
    shift = Fraction(int(rng.integers(0, 5)), int(rng.choice([1, 2, 10])))
    scale = Fraction(int(rng.integers(1, 6)), int(rng.choice([1, 2])))
    cert = TheoryCertificate("motzkin", (i, j), scalings, scale, shift)
    p = cert.rebuild(n)
    return p, p.to_str(cfg.style), cert


def build(cls: str, rng: np.random.Generator, cfg):
    """One draw of class `cls` (a name of `generators.CLASS_LABELS`) with the sizes of `cfg` (a `GeneratorConfig`)."""
    n = cfg.num_vars
    d = cfg.degree // 2
    neg = cls.endswith("_negative")
    if cls == "odd_degree":
        return _odd_degree(rng, cfg, n)
    if cls.startswith("sos_"):
        return _sos(rng, cfg, n, squared="squared" in cls, negative=neg)
    if cls.startswith("quadratic_quartic"):
        return _quadratic_quartic(rng, cfg, n, neg)
    if cls.startswith("quadratic"):
        basis = _monomials_upto(n, 1)
        L = rng.integers(-cfg.coef_max, cfg.coef_max + 1, (n + 1, int(rng.integers(1, n + 2))))
        squares = [_linear_combo([int(x) for x in L[:, k]], basis, n) for k in range(L.shape[1])]
        squares = [q for q in squares if not q.is_zero] or [Polynomial.constant(1, n)]
        weights = [Fraction(1)] * len(squares)
        if neg:
            return _gram_negative(rng, squares, weights, basis, n, cfg.style)
        return _squares_item(cls, squares, weights, n, cfg.style, {})
    if cls.startswith(("quartic_2var", "quartic_form")):
        nn = 2 if cls.startswith("quartic_2var") else 3
        basis = _monomials_upto(nn, 2)
        if cls.startswith("quartic_form"):
            basis = [b for b in basis if sum(b) == 2]
        L = rng.integers(-cfg.coef_max, cfg.coef_max + 1, (len(basis), len(basis)))
        squares = [_linear_combo([int(x) for x in L[:, k]], basis, nn) for k in range(len(basis))]
        squares = [q for q in squares if not q.is_zero]
        weights = [Fraction(1)] * len(squares)
        if neg:
            return _gram_negative(rng, squares, weights, basis, nn, cfg.style)
        return _squares_item(cls, squares, weights, nn, cfg.style, {})
    if cls.startswith("gram_"):
        kind = cls[len("gram_") :].removesuffix("_negative")
        allm = _monomials_upto(n, d)
        size = min(len(allm), max(2, cfg.num_terms))
        idx = sorted(rng.choice(len(allm), size, replace=False).tolist())
        basis = [allm[i] for i in idx]
        if not any(sum(b) == d for b in basis):
            basis[-1] = next(b for b in reversed(allm) if sum(b) == d and b not in basis)
        return _gram(rng, cfg, n, basis, kind, neg)
    if cls == "nonneg_not_sos":
        return _motzkin(rng, cfg, n)
    raise ValueError(f"unknown class {cls!r}")
