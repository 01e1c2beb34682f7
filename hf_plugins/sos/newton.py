"""Newton-polytope basis for the Gram SDP, and the exact "not SoS" tests it gives (spec, "Step 1", item 4).

If p = sum q_i^2 then every q_i is supported in the integer points of N(p)/2, N(p) = conv(supp p) (Reznick).
So with B those points: a monomial of p outside B+B, or one reachable only as 2*beta while its coefficient is
negative (Q_beta,beta >= 0), proves p is not SoS.
"""

from __future__ import annotations

import math

import numpy as np

from .certificates import NewtonCertificate
from .polynomial import Exponent, Polynomial


__all__ = ["candidate_box", "half_newton_lattice_points", "newton_certificate", "prune_diagonal"]


def candidate_box(p: Polynomial, limit: int | None = None) -> list[Exponent] | None:
    """Integer beta with ceil(min_i/2) <= beta_i <= floor(max_i/2) per variable and total degree between half the
    lowest and half the highest degree of p. None when there are more than `limit` of them."""
    supp = list(p.terms)
    n = p.nvars
    lo = [math.ceil(min(e[i] for e in supp) / 2) for i in range(n)]
    hi = [max(e[i] for e in supp) // 2 for i in range(n)]
    dmin = math.ceil(min(sum(e) for e in supp) / 2)
    dmax = max(sum(e) for e in supp) // 2
    out: list[Exponent] = []

    def rec(i: int, prefix: list[int], total: int):
        if limit is not None and len(out) > limit:
            return
        if i == n:
            if total >= dmin:
                out.append(tuple(prefix))
            return
        for k in range(lo[i], min(hi[i], dmax - total) + 1):
            prefix.append(k)
            rec(i + 1, prefix, total + k)
            prefix.pop()

    rec(0, [], 0)
    if limit is not None and len(out) > limit:
        return None
    return out


def _in_hull_lp(S: np.ndarray, target: np.ndarray) -> bool:
    from scipy.optimize import linprog

    m = S.shape[0]
    A_eq = np.vstack([S.T, np.ones((1, m))])
    b_eq = np.concatenate([target, [1.0]])
    res = linprog(np.zeros(m), A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    return res.status == 0


def half_newton_lattice_points(p: Polynomial, method: str = "lp", limit: int | None = 20000) -> list[Exponent] | None:
    """Integer points of N(p)/2. `method="lp"`: random separating directions first, then an LP (scipy HiGHS) per
    survivor; `method="enumerate"`: an LP for every box candidate (slow, used to re-verify certificates)."""
    if p.is_zero:
        return []
    cands = candidate_box(p, limit)
    if cands is None:
        return None
    S = np.array(list(p.terms), dtype=float).reshape(len(p.terms), p.nvars)
    supp = set(p.terms)
    C = np.array(cands, dtype=float).reshape(len(cands), p.nvars)
    keep = np.ones(len(cands), dtype=bool)
    if method == "lp" and p.nvars:
        rng = np.random.default_rng(0)
        W = np.vstack([np.eye(p.nvars), -np.eye(p.nvars), rng.standard_normal((64, p.nvars))])
        bound = (S @ W.T).max(axis=0)
        keep = ((2 * C) @ W.T <= bound + 1e-9).all(axis=1)
    out = []
    for b, k in zip(cands, keep):
        if not k:
            continue
        two_b = tuple(2 * x for x in b)
        if (method == "lp" and two_b in supp) or _in_hull_lp(S, np.array(two_b, dtype=float)):
            out.append(b)
    return out


def _pairs(alpha: Exponent, basis_set: set[Exponent]):
    for b in basis_set:
        o = tuple(a - x for a, x in zip(alpha, b))
        if o in basis_set:
            yield b, o


def newton_certificate(p: Polynomial, basis: list[Exponent]) -> NewtonCertificate | None:
    """A monomial of p outside B+B, or only diagonally reachable with a negative coefficient; None if none."""
    bset = set(basis)
    for alpha, c in sorted(p.terms.items()):
        pairs = list(_pairs(alpha, bset))
        if not pairs:
            return NewtonCertificate(alpha, "outside", list(basis))
        if c < 0 and all(b == o for b, o in pairs):
            return NewtonCertificate(alpha, "diagonal", list(basis))
    return None


def prune_diagonal(p: Polynomial, basis: list[Exponent]) -> list[Exponent]:
    """Drop beta whose square 2*beta is not a monomial of p and has no off-diagonal representation in B+B: then
    Q_beta,beta = 0 in every Gram matrix, so its whole row is zero (repeat until stable)."""
    current = set(basis)
    changed = True
    while changed:
        changed = False
        for b in sorted(current):
            two_b = tuple(2 * x for x in b)
            if two_b in p.terms:
                continue
            if any(x != o for x, o in _pairs(two_b, current)):
                continue
            current.discard(b)
            changed = True
    return sorted(current, key=lambda e: (sum(e), tuple(-k for k in e)))
