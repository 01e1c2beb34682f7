"""Dual (moment) certificates that p is not SoS, found by an SDP and rounded to exact rationals.

With B the exact candidate box of half the Newton polytope (`lattice.candidate_box`), any SoS decomposition is
p = z_B^T Q z_B with Q PSD, so a linear functional L with a PSD moment matrix M(y) = [y_{b_i + b_j}] has
L(p) = trace(Q M(y)) >= 0. One with L(p) < 0 proves p is not SoS. On p scaled to max |c| = 1 we solve

    maximise s  s.t.  M(y) - s I PSD,  trace M(y) = 1,  L(p) <= -s

whose optimum s* > 0 exactly when such an L exists with room to spare: M(y) has smallest eigenvalue >= s* and
L(p) <= -s*, so rounding y to rationals with denominator 10^6 (then 10^9, 10^12) keeps both conditions, which are
then checked exactly (`DualCertificate.verify`). A point x with p(x) < 0 is the rank-one case y_alpha = x^alpha;
the certificate matters for nonnegative polynomials that are not SoS (Robinson's and Horn's forms, Lax-Lax,
Motzkin plus a small multiple of x^6 + y^6 + 1), where no point exists. cvxpy (the `sos` extra) is imported lazily.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .certificates import DualCertificate
from .lattice import candidate_box
from .polynomial import Polynomial
from .sdp import DENOMINATORS, gram_classes


__all__ = ["DualResult", "find_dual_certificate"]


@dataclass
class DualResult:
    status: str
    certificate: DualCertificate | None = None
    basis_size: int = 0
    s_star: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _solve(N: int, B, cvec: np.ndarray, diag: np.ndarray, solver: str, time_limit: float):
    import cvxpy as cp

    m = B.shape[1]
    y = cp.Variable(m)
    s = cp.Variable()
    X = cp.Variable((N, N), PSD=True)  # X = M(y) - s I
    eye = np.eye(N).flatten(order="F")
    cons = [cp.vec(X, order="F") == B @ y - s * eye, diag @ y == 1, cvec @ y <= -s]
    prob = cp.Problem(cp.Maximize(s), cons)
    kwargs = {"time_limit": time_limit} if solver == "CLARABEL" else {}
    if solver == "SCS":
        kwargs = {"max_iters": 20000, "eps_abs": 1e-9, "eps_rel": 1e-9, "time_limit_secs": time_limit}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Solution may be inaccurate": the status says it
        prob.solve(solver=solver, **kwargs)
    if y.value is None or s.value is None:
        return prob.status, None, None
    return prob.status, np.array(y.value), float(s.value)


def find_dual_certificate(
    p: Polynomial,
    max_basis: int = 60,
    solvers: tuple[str, ...] = ("CLARABEL", "SCS"),
    time_limit: float = 60.0,
) -> DualResult:
    """Look for a `DualCertificate` of p (see the module docstring). `max_basis` caps the size of the candidate
    box B (the SDP has |B + B| unknowns and a |B| x |B| cone)."""
    t0 = time.perf_counter()
    if p.is_zero or p.degree % 2:
        return DualResult(status="skipped: zero or odd degree (use a point)")
    basis = candidate_box(p, limit=max_basis)
    if basis is None:
        return DualResult(status=f"skipped: more than {max_basis} monomials in the candidate box")
    N = len(basis)
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        return DualResult(status="skipped: cvxpy is not installed (pip install 'hf-plugins[sos]')", basis_size=N)
    classes = gram_classes(basis)
    alphas = sorted(classes)
    if not set(p.terms) <= set(classes):
        return DualResult(status="skipped: a monomial of p lies outside B + B (a Newton certificate applies)")
    index = {a: r for r, a in enumerate(alphas)}
    rows, cols = [], []
    for r, alpha in enumerate(alphas):
        for i, j in classes[alpha]:
            rows.append(i + j * N)  # column-major vec, as cp.vec(order="F")
            cols.append(r)
    from scipy.sparse import coo_matrix

    B = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(N * N, len(alphas))).tocsr()
    scale = p.max_abs_coefficient()
    cvec = np.zeros(len(alphas))
    for e, c in p.terms.items():
        cvec[index[e]] = float(c / scale)
    diag = np.zeros(len(alphas))
    for b in basis:
        diag[index[tuple(2 * x for x in b)]] += 1.0
    result = DualResult(status="not solved", basis_size=N)
    for solver in solvers:
        try:
            status, y, s_star = _solve(N, B, cvec, diag, solver, time_limit)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001  (Clarabel aborts with pyo3's PanicException, a BaseException)
            result.notes.append(f"{solver} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        result.notes.append(f"{solver}: {status}" + ("" if s_star is None else f", s*={s_star:.3g}"))
        result.status, result.s_star = status, s_star
        if y is None or s_star is None or s_star <= 1e-10:
            if s_star is not None and s_star < -1e-6:
                break  # no separating functional: p is numerically SoS, a second solver would not change that
            continue
        for D in DENOMINATORS:
            moments = {a: Fraction(round(float(v) * D), D) for a, v in zip(alphas, y)}
            cert = DualCertificate(list(basis), moments, Fraction(0), note=f"{solver}, moments rounded to 1/{D}")
            cert.value = sum((c * moments[e] for e, c in p.terms.items()), Fraction(0))
            if cert.verify(p):
                result.certificate = cert
                break
        if result.certificate is not None:
            break
    result.seconds = time.perf_counter() - t0
    return result
