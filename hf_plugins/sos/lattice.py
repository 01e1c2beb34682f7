"""Integer points of half the Newton polytope, N(p)/2 with N(p) = conv(supp p): the only exponents a square in an
SoS decomposition of p can use (Reznick, "Extremal PSD forms with few terms", Duke Math. J. 45 (1978), Thm. 1).

`candidate_box` is an exact superset (per-variable and total-degree bounds, integer arithmetic only);
`half_newton_lattice_points` keeps the candidates inside N(p)/2 (a scipy HiGHS LP per candidate).
"""

from __future__ import annotations

import math

import numpy as np

from .polynomial import Exponent, Polynomial


__all__ = ["candidate_box", "half_newton_lattice_points"]


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
