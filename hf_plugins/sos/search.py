"""Search for exact rational points where p < 0: along directions where the top form is negative, by sampling and
local descent, and on badly scaled polynomials in rescaled variables.

Floats only *propose* points; every accepted point is rationalised and evaluated exactly. Evaluation is
vectorised over a precomputed exponent matrix (sympy-based evaluation made a whole-file screen take minutes).
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np

from .certificates import PointCertificate
from .polynomial import Polynomial


__all__ = [
    "FloatPolynomial",
    "balancing_scales",
    "find_negative_point",
    "find_negative_point_balanced",
    "negative_direction_point",
    "rationalize_negative",
]


class FloatPolynomial:
    """p / max|c| in float64 over an exponent matrix; values and gradients at many points at once."""

    def __init__(self, p: Polynomial):
        self.n = p.nvars
        exps = list(p.terms)
        scale = p.max_abs_coefficient() or Fraction(1)
        self.E = np.array(exps, dtype=np.int64).reshape(len(exps), self.n)
        self.c = np.array([float(p.terms[e] / scale) for e in exps])
        self.grad_parts = []
        for j in range(self.n):
            mask = self.E[:, j] > 0
            E = self.E[mask].copy()
            E[:, j] -= 1
            self.grad_parts.append((E, self.c[mask] * self.E[mask, j]))

    @staticmethod
    def _eval(E: np.ndarray, c: np.ndarray, X: np.ndarray) -> np.ndarray:
        if E.shape[0] == 0:
            return np.zeros(X.shape[0])
        M = np.ones((X.shape[0], E.shape[0]))
        for j in range(E.shape[1]):
            col = E[:, j]
            if col.any():
                M *= X[:, j : j + 1] ** col[None, :]
        return M @ c

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.empty(X.shape[0])
            for s in range(0, X.shape[0], 256):
                out[s : s + 256] = self._eval(self.E, self.c, X[s : s + 256])
        return out

    def grad(self, x: np.ndarray) -> np.ndarray:
        X = x[None, :]
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array([self._eval(E, c, X)[0] for E, c in self.grad_parts])


def _to_fraction_grid(x: np.ndarray, k: int) -> tuple[Fraction, ...]:
    return tuple(Fraction(round(float(v) * 2**k), 2**k) for v in x)


def rationalize_negative(p: Polynomial, x: np.ndarray, reason: str) -> PointCertificate | None:
    """Round a float point to a 2^-k grid (k small first, the nicest point) or to bounded denominators until the
    exact value is negative."""
    if not np.all(np.isfinite(x)):
        return None
    tried = set()
    candidates = [_to_fraction_grid(x, k) for k in (0, 1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 26, 32, 40, 52)]
    candidates += [tuple(Fraction(float(v)).limit_denominator(d) for v in x) for d in (10, 100, 1000, 10**5)]
    candidates.append(tuple(Fraction(float(v)) for v in x))  # the float itself, exactly
    for pt in candidates:
        if pt in tried:
            continue
        tried.add(pt)
        value = p.evaluate(pt)
        if value < 0:
            return PointCertificate(pt, value, reason)
    return None


def _escape_point(p: Polynomial, u: tuple[Fraction, ...]) -> tuple[tuple[Fraction, ...], Fraction] | None:
    """A point t*u with p(t*u) < 0 for a direction u where the top form is negative: t doubles from 1, and at most
    jumps to a power of 2 above Cauchy's root bound 1 + max_k |a_k| / |a_d| of g(t) = p(t u) = sum_k a_k t^k, beyond
    which g has the sign of a_d < 0. So the loop always ends, however small a_d is against the lower terms
    (`1e-80*x1^3 + x1^2 + 1` needs t ~ 1e80)."""
    coeffs: dict[int, Fraction] = {}
    for e, c in p.terms.items():
        v = c
        for ui, k in zip(u, e):
            if k:
                v *= ui**k
        if v:
            coeffs[sum(e)] = coeffs.get(sum(e), Fraction(0)) + v
    d = p.degree
    lead = coeffs.get(d, Fraction(0))
    if lead >= 0:
        return None
    bound = 1 + max((abs(a) for k, a in coeffs.items() if k != d), default=Fraction(0)) / -lead
    k_max = max(0, math.ceil(bound).bit_length())  # 2**k_max > bound
    for k in list(range(min(k_max, 64))) + [k_max]:
        pt = tuple(Fraction(2**k) * x for x in u)
        value = p.evaluate(pt)
        if value < 0:
            return pt, value
    return None  # unreachable: g(2**k_max) < 0 by Cauchy's bound


def negative_direction_point(p: Polynomial, rng: np.random.Generator, samples: int = 2000) -> PointCertificate | None:
    """Odd degree, or a direction u where the top form f is negative: then p(t u) -> -inf. Try unit vectors, then
    random directions rationalised (for odd degree, -u when f(u) > 0); `_escape_point` finds t."""
    d = p.degree
    if d <= 0:
        return None
    f = p.top_form()
    n = p.nvars
    dirs: list[tuple[Fraction, ...]] = []
    for i in range(n):
        for s in (1, -1):
            e = [Fraction(0)] * n
            e[i] = Fraction(s)
            dirs.append(tuple(e))
    found = next((u for u in dirs if f.evaluate(u) < 0), None)
    if found is None and n > 1:
        ff = FloatPolynomial(f)
        U = rng.standard_normal((samples, n))
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        vals = ff(U)
        for idx in np.argsort(vals)[:8]:
            if not vals[idx] < 0:
                break
            for k in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24):
                u = _to_fraction_grid(U[idx] * 2, k)
                if any(u) and f.evaluate(u) < 0:
                    found = u
                    break
            if found is not None:
                break
        if found is None and d % 2:  # an odd form is negative at -u wherever it is positive at u
            for idx in range(min(samples, 64)):
                u = _to_fraction_grid(U[idx] * 2, 8)
                fu = f.evaluate(u)
                if fu:
                    found = u if fu < 0 else tuple(-x for x in u)
                    break
    if found is None:
        return None
    hit = _escape_point(p, found)
    if hit is None:
        return None
    reason = "odd total degree" if d % 2 else "the top-degree form is negative along a direction"
    return PointCertificate(hit[0], hit[1], reason)


def find_negative_point(
    p: Polynomial,
    rng: np.random.Generator,
    num_samples: int = 256,
    scales: tuple[float, ...] = (0.1, 0.3, 1.0, 2.0, 5.0),
    descent_starts: int = 12,
    descent_steps: int = 200,
    time_limit: float = 5.0,
) -> PointCertificate | None:
    """0, +-e_i, Gaussian samples at several scales, then local descent (L-BFGS) from the best points; any float
    candidate below zero is rationalised and accepted only if its exact value is negative."""
    t0 = time.perf_counter()
    n = p.nvars
    if p.constant_term() < 0:
        pt = (Fraction(0),) * n
        return PointCertificate(pt, p.evaluate(pt), "the constant term is negative: p(0) < 0")
    fp = FloatPolynomial(p)
    eye = np.eye(n)
    X = [np.zeros((1, n)), eye, -eye]
    for s in scales:
        X.append(rng.standard_normal((num_samples, n)) * s)
    X = np.vstack(X)
    vals = fp(X)
    vals = np.where(np.isfinite(vals), vals, np.inf)
    order = np.argsort(vals)
    for idx in order[:5]:
        if vals[idx] < 0:
            cert = rationalize_negative(p, X[idx], "a sampled point")
            if cert is not None:
                return cert
    from scipy.optimize import minimize

    bound = 10 * max(scales)
    for idx in order[:descent_starts]:
        if time.perf_counter() - t0 > time_limit:
            break
        res = minimize(
            lambda x: float(fp(x[None, :])[0]),
            X[idx],
            jac=fp.grad,
            method="L-BFGS-B",
            bounds=[(-bound, bound)] * n,
            options={"maxiter": descent_steps},
        )
        if np.isfinite(res.fun) and res.fun < 0:
            cert = rationalize_negative(p, res.x, "local minimisation")
            if cert is not None:
                return cert
    return None


def balancing_scales(p: Polynomial, min_shift: int = 4) -> tuple[Fraction, ...] | None:
    """Per-variable scales s_i = 2^k_i that make the coefficients of p(s * x) as even in size as a least-squares fit
    of log2 |c_alpha| + alpha . k allows; None when every |k_i| < `min_shift` (p is already balanced enough for the
    plain search, whose sample scales span 0.1-5). `1e-20*x1^4 + 1e20*x2^4 - 3*x1^2*x2^2` gets s = (2^17, 2^-17)
    and is negative near s * (1, 1); unscaled, its negative region lies beyond x1 ~ 1e9."""
    if p.nvars == 0 or len(p.terms) < 2:
        return None
    E = np.array(list(p.terms), dtype=float).reshape(len(p.terms), p.nvars)
    logs = np.array([math.log2(abs(c.numerator)) - math.log2(c.denominator) for c in p.terms.values()])
    A = np.hstack([E, -np.ones((len(logs), 1))])
    sol = np.linalg.lstsq(A, -logs, rcond=None)[0]
    k = np.rint(sol[: p.nvars]).astype(int)
    if np.abs(k).max() < min_shift:
        return None
    return tuple(Fraction(2) ** int(v) for v in k)


def find_negative_point_balanced(p: Polynomial, rng: np.random.Generator, **kwargs) -> PointCertificate | None:
    """`find_negative_point` on p, then (when `balancing_scales` finds p badly scaled) on p(s * x); a point x found
    there is mapped back to s * x and evaluated exactly on p."""
    cert = find_negative_point(p, rng, **kwargs)
    scales = None if cert is not None else balancing_scales(p)
    if scales is None:
        return cert
    images = [Polynomial.variable(i, p.nvars) * s for i, s in enumerate(scales)]
    inner = find_negative_point(p.substitute(images), rng, **kwargs)
    if inner is None:
        return None
    point = tuple(s * x for s, x in zip(scales, inner.point))
    return PointCertificate(point, p.evaluate(point), inner.reason + " (on the variables rescaled by powers of 2)")
