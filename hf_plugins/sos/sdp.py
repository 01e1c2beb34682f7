"""The Gram-matrix SDP, its numerical check, and Peyrl-Parrilo rounding to an exact certificate.

    maximise t  s.t.  Q - t I PSD,  sum_{beta_i + beta_j = alpha} Q_ij = c_alpha for every alpha in B+B,  t <= 1

on p scaled to max|c| = 1 (SoS is invariant under positive scaling; unscaled, Clarabel called the 10^11-sized
Set 5.4 rows infeasible). Maximising t centres Q, which is what makes exact rounding succeed. t* < 0 means no
PSD Gram matrix *numerically*; that is never reported as a proof. cvxpy, Clarabel and SCS (the `sos` extra) are
imported lazily.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .certificates import GramCertificate
from .exact import is_psd
from .polynomial import Exponent, Polynomial


__all__ = ["SdpResult", "gram_classes", "numerical_check", "round_gram", "solve_gram_sdp"]

# Numerical-certificate tolerances and the rounding denominators (docs/sos.md, "Defaults and their sources").
RESIDUAL_TOL = 1e-8
EIG_TOL = 1e-9
DENOMINATORS = (10**6, 10**9, 10**12)


@dataclass
class SdpResult:
    status: str  # solver status, or "skipped: ..." / "error: ..."
    solver: str | None = None
    basis_size: int = 0
    t_star: float | None = None
    residual: float | None = None
    lambda_min: float | None = None
    numerical_ok: bool = False
    certificate: GramCertificate | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def gram_classes(basis: list[Exponent]) -> dict[Exponent, list[tuple[int, int]]]:
    """alpha -> every ordered index pair (i, j) with basis[i] + basis[j] = alpha."""
    classes: dict[Exponent, list[tuple[int, int]]] = {}
    for i, bi in enumerate(basis):
        for j, bj in enumerate(basis):
            classes.setdefault(tuple(a + b for a, b in zip(bi, bj)), []).append((i, j))
    return classes


def _solve(N, A, c, solver, time_limit):
    import cvxpy as cp

    # Q = P + t I with P PSD: the same size as the plain feasibility problem (a constraint `Q - t I >> 0` would
    # add a second N x N cone and doubled Clarabel's time).
    P = cp.Variable((N, N), PSD=True)
    t = cp.Variable()
    trace_part = A @ np.eye(N).flatten(order="F")
    cons = [A @ cp.vec(P, order="F") + t * trace_part == c, t <= 1]
    prob = cp.Problem(cp.Maximize(t), cons)
    if solver == "SCS":
        kwargs = {"max_iters": 10000, "eps_abs": 1e-8, "eps_rel": 1e-8, "time_limit_secs": time_limit}
    elif solver == "CLARABEL":
        kwargs = {"time_limit": time_limit}
    else:
        kwargs = {}
    with warnings.catch_warnings():
        # cvxpy warns "Solution may be inaccurate" and reports the same as status "optimal_inaccurate", which we
        # return; the warning itself would be attributed to this file and fail our -W error test config.
        warnings.simplefilter("ignore", UserWarning)
        prob.solve(solver=solver, **kwargs)
    if P.value is None or t.value is None:
        return prob.status, None, None
    return prob.status, np.array(P.value) + float(t.value) * np.eye(N), float(t.value)


def numerical_check(S: np.ndarray, A, c: np.ndarray) -> tuple[bool, float, float]:
    """Is the float Gram matrix S a numerical certificate for the coefficients c (scaled to max |c| = 1)?

    Scale-aware: S is first clipped to its PSD part V max(lambda, 0) V^T, and the clipped matrix must reproduce
    *every* coefficient to `RESIDUAL_TOL` relative to that coefficient's own size (monomials absent from p: relative
    to the smallest nonzero |c|). An absolute tolerance on p / max|c| accepted `1e-20*x1^4 + 1e20*x2^4 - 3*x1^2*x2^2`,
    whose Gram matrices all miss its 1e-40 and 3e-20 scaled coefficients by about their own size; it is -1e20 at
    (1e10, 1). Returns (ok, max relative residual, lambda_min(S))."""
    lam, V = np.linalg.eigh(S)
    clipped = (V * np.maximum(lam, 0.0)) @ V.T
    residual = np.abs(A @ clipped.flatten(order="F") - c)
    nonzero = np.abs(c[c != 0])
    floor = float(nonzero.min()) if nonzero.size else 1.0
    rel = residual / np.where(c != 0, np.abs(c), floor)
    worst = float(rel.max()) if rel.size else 0.0
    ok = worst <= RESIDUAL_TOL and lam[0] >= -EIG_TOL * max(1.0, float(np.abs(lam).max()))
    return bool(ok), worst, float(lam[0])


def round_gram(
    Qf: np.ndarray, classes: dict[Exponent, list[tuple[int, int]]], coeffs: dict[Exponent, Fraction], D: int
) -> list[list[Fraction]] | None:
    """Round to denominator D, project exactly onto {Q : class sums = c_alpha} (classes partition the entries, so
    the orthogonal projection adds (c_alpha - s_alpha)/w_alpha to each entry of the class), then test PSD exactly.
    Returns the rational PSD Gram matrix, or None."""
    N = Qf.shape[0]
    S = (Qf + Qf.T) / 2
    Q = [[Fraction(round(float(S[i, j]) * D), D) for j in range(N)] for i in range(N)]
    for alpha, pairs in classes.items():
        s = sum((Q[i][j] for i, j in pairs), Fraction(0))
        delta = (coeffs.get(alpha, Fraction(0)) - s) / len(pairs)
        if delta:
            for i, j in pairs:
                Q[i][j] += delta
    # Cheap float screen first: a clearly negative eigenvalue means the exact test would fail too.
    lam = np.linalg.eigvalsh(np.array([[float(x) for x in row] for row in Q]))
    if lam[0] < -1e-7 * max(1.0, abs(lam[-1])):
        return None
    return Q if is_psd(Q) else None


def solve_gram_sdp(
    p: Polynomial,
    basis: list[Exponent],
    solvers: tuple[str, ...] | str = "auto",
    exact: bool = True,
    time_limit: float = 60.0,
) -> SdpResult:
    """Solve the Gram SDP of `p` over `basis` and try to round it to an exact certificate.

    `solvers="auto"` tries Clarabel first up to N = 40 and SCS first above: measured on this project's 2-core CPU
    over the SoS1 file, Clarabel took 0.3 s / 1.8 s at N = 20 / 35 where SCS needed 8.5 s / 27 s (max iterations),
    while at N = 55 / 84 SCS took 1.9 s / 5.2 s against Clarabel's 10.5 s / 68 s. The other solver is the fallback.
    """
    t0 = time.perf_counter()
    N = len(basis)
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        return SdpResult(status="skipped: cvxpy is not installed (pip install 'hf-plugins[sos]')", basis_size=N)
    from scipy.sparse import coo_matrix

    scale = p.max_abs_coefficient()
    coeffs = {e: c / scale for e, c in p.terms.items()}
    classes = gram_classes(basis)
    alphas = sorted(classes)
    rows, cols = [], []
    for r, alpha in enumerate(alphas):
        for i, j in classes[alpha]:
            rows.append(r)
            cols.append(i + j * N)  # column-major vec, as cp.vec(order="F")
    A = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(alphas), N * N)).tocsr()
    c = np.array([float(coeffs.get(a, 0)) for a in alphas])
    result = SdpResult(status="not solved", basis_size=N)
    if solvers == "auto":
        solvers = ("CLARABEL", "SCS") if N <= 40 else ("SCS", "CLARABEL")
    for solver in solvers:
        try:
            status, Qf, t_star = _solve(N, A, c, solver, time_limit)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001  (Clarabel aborts with pyo3's PanicException, a BaseException)
            result.notes.append(f"{solver} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        result.notes.append(f"{solver}: {status}" + ("" if t_star is None else f", t*={t_star:.3g}"))
        if Qf is None or status not in ("optimal", "optimal_inaccurate"):
            if result.solver is None:
                result.status = status
            continue
        S = (Qf + Qf.T) / 2
        numerical_ok, residual, lam_min = numerical_check(S, A, c)
        if result.solver is None or numerical_ok or (t_star is not None and t_star > (result.t_star or -np.inf)):
            result.status, result.solver, result.t_star = status, solver, t_star
            result.residual, result.lambda_min, result.numerical_ok = residual, lam_min, numerical_ok
        if exact and t_star is not None and t_star > -1e-6:
            for D in DENOMINATORS:
                Q = round_gram(S, classes, coeffs, D)
                if Q is not None:
                    Q = [[x * scale for x in row] for row in Q]
                    result.certificate = GramCertificate(
                        list(basis), Q, note=f"{solver}, rounded to 1/{D} and projected"
                    )
                    result.status, result.solver, result.t_star = status, solver, t_star
                    result.residual, result.lambda_min, result.numerical_ok = residual, lam_min, numerical_ok
                    break
        if result.certificate is not None or (t_star is not None and t_star < -1e-3):
            break  # proved, or clearly no PSD Gram matrix: a second solver would not change the verdict
    result.seconds = time.perf_counter() - t0
    return result
