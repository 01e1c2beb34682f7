"""The SoS checker: a verdict with its evidence, never more than the evidence shows.

Order, cheapest first: constant; odd degree or a direction where the top form is negative (exact point);
quadratics (unique Gram matrix, exact LDL^T); univariate (exact root counting); point search, also in rescaled
variables (exact point); Newton polytope (support / diagonal argument); Gram SDP with exact rounding; when it
gives no certificate, a harder point search, then a dual (moment) SDP with exact rounding; else a numerical
certificate, else "unknown" with the solver status.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .certificates import (
    ConstantCertificate,
    GramCertificate,
    PointCertificate,
    UnivariateCertificate,
    univariate_nonnegative,
)
from .dual import find_dual_certificate
from .exact import ldl
from .lattice import half_newton_lattice_points
from .newton import newton_certificate, prune_diagonal
from .parse import PolynomialParseError, parse_polynomial
from .polynomial import Polynomial
from .sdp import solve_gram_sdp
from .search import find_negative_point, find_negative_point_balanced, negative_direction_point


__all__ = ["CheckerConfig", "SosLabel", "Verdict", "check_polynomial", "quadratic_gram"]


class SosLabel:
    SOS = "sos"  # exact certificate
    SOS_NUMERICAL = "sos_numerical"  # solver output within tolerance; never a proof
    NOT_SOS = "not_sos"
    NONNEG_NOT_SOS = "nonneg_not_sos"  # only from theory certificates (the generator's Motzkin family)
    UNKNOWN = "unknown"
    REJECTED = "rejected"  # truncated, malformed or over-limit text (`ParseLimits`)
    ERROR = "error"  # the check itself failed on this input; the message says why


@dataclass
class CheckerConfig:
    """Knobs of `check_polynomial`.

    Args:
        seed (`int`, defaults to `0`): seed of the point and direction searches.
        max_basis (`int`, defaults to `150`): largest Gram basis sent to the SDP; larger gives UNKNOWN with the
            size (N = 150 keeps one solve under about a minute on 2 CPU cores).
        max_candidates (`int`, defaults to `20000`): largest box of candidate monomials for the Newton basis.
        point_samples (`int`, defaults to `512`): Gaussian samples per scale in the first point search.
        point_time_limit (`float`, defaults to `0.5`): seconds of local descent in the first point search (the
            second search, after a failed SDP, has its own limit).
        use_sdp (`bool`, defaults to `True`): run the Gram SDP (needs the `sos` extra).
        solvers (`tuple` or `"auto"`, defaults to `"auto"`): SDP solvers, tried in order until one gives an exact
            certificate; "auto" puts Clarabel first up to N = 40 and SCS first above (measured, see `sdp.py`).
        sdp_time_limit (`float`, defaults to `60.0`): seconds per SDP solve.
        hard_point_samples (`int`, defaults to `4096`): samples per scale of the second, harder point search that
            runs when the SDP gives no certificate.
        hard_point_time_limit (`float`, defaults to `10.0`): seconds of local descent in that second search.
        dual (`bool`, defaults to `True`): when the Gram SDP finds no certificate and no point is found, look for a
            dual (moment) certificate that p is not SoS.
        max_dual_basis (`int`, defaults to `60`): largest candidate box for the dual SDP.
        verify (`bool`, defaults to `True`): re-verify every certificate with the independent verifier before
            returning it.
    """

    seed: int = 0
    max_basis: int = 150
    max_candidates: int = 20000
    point_samples: int = 512
    point_time_limit: float = 0.5
    use_sdp: bool = True
    solvers: tuple[str, ...] | str = "auto"
    sdp_time_limit: float = 60.0
    hard_point_samples: int = 4096
    hard_point_time_limit: float = 10.0
    dual: bool = True
    max_dual_basis: int = 60
    verify: bool = True

    def __post_init__(self):
        if self.max_basis < 1:
            raise ValueError(f"`max_basis` must be >= 1, got {self.max_basis}")
        if self.max_candidates < 1:
            raise ValueError(f"`max_candidates` must be >= 1, got {self.max_candidates}")
        if self.max_dual_basis < 1:
            raise ValueError(f"`max_dual_basis` must be >= 1, got {self.max_dual_basis}")
        if self.point_samples < 0:
            raise ValueError(f"`point_samples` must be >= 0, got {self.point_samples}")
        if not (self.point_time_limit >= 0 and self.hard_point_time_limit >= 0):  # NaN too
            raise ValueError(
                f"`point_time_limit` and `hard_point_time_limit` must be >= 0, got {self.point_time_limit} and "
                f"{self.hard_point_time_limit}"
            )
        if self.hard_point_samples < 0:
            raise ValueError(f"`hard_point_samples` must be >= 0, got {self.hard_point_samples}")
        if not self.sdp_time_limit > 0:  # NaN too
            raise ValueError(f"`sdp_time_limit` must be > 0 seconds, got {self.sdp_time_limit}")
        if self.solvers != "auto" and (isinstance(self.solvers, str) or not self.solvers):
            raise ValueError(
                f"`solvers` must be 'auto' or a non-empty tuple such as ('CLARABEL', 'SCS'), got {self.solvers!r}"
            )


@dataclass
class Verdict:
    """`label` is one of `SosLabel`; `evidence` a certificate object (re-verify with `evidence.verify(p)`);
    `nonnegative` is True/False only when proved; `method` names the step that decided."""

    label: str
    evidence: object = None
    method: str = ""
    nonnegative: bool | None = None
    message: str = ""
    solver_status: str | None = None
    basis_size: int | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def proved_label(self) -> int | None:
        """1 (SoS) or 0 (not SoS) when proved exactly, else None. Numerical certificates give None."""
        if self.label == SosLabel.SOS:
            return 1
        if self.label in (SosLabel.NOT_SOS, SosLabel.NONNEG_NOT_SOS):
            return 0
        return None

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "proved_label": self.proved_label,
            "method": self.method,
            "nonnegative": self.nonnegative,
            "message": self.message,
            "solver_status": self.solver_status,
            "basis_size": self.basis_size,
            "seconds": round(self.seconds, 4),
            "evidence": None if self.evidence is None else self.evidence.to_dict(),
            "details": self.details,
        }


def _not_sos(cert, method: str) -> Verdict:
    nonneg = False if isinstance(cert, PointCertificate) else None
    return Verdict(SosLabel.NOT_SOS, cert, method, nonnegative=nonneg, message=cert.describe())


def _odd_degree(p: Polynomial) -> Verdict:
    """Odd degree without a point (reached only if no direction with f(u) != 0 was found): the text says why."""
    return Verdict(
        SosLabel.NOT_SOS,
        None,
        "odd degree",
        nonnegative=False,
        message=f"odd total degree {p.degree}: p(t u) and p(-t u) have opposite signs for large t along any direction "
        "u where the top-degree form is nonzero, so p takes negative values",
    )


def quadratic_gram(p: Polynomial) -> list[list[Fraction]]:
    """G = [[c, b^T/2], [b/2, H]] with p = [1; x]^T G [1; x]; unique for a quadratic."""
    n = p.nvars
    G = [[Fraction(0)] * (n + 1) for _ in range(n + 1)]
    for e, c in p.terms.items():
        idx = [i for i, k in enumerate(e) for _ in range(k)]
        if len(idx) == 0:
            G[0][0] += c
        elif len(idx) == 1:
            G[0][idx[0] + 1] += c / 2
            G[idx[0] + 1][0] += c / 2
        elif idx[0] == idx[1]:
            G[idx[0] + 1][idx[0] + 1] += c
        else:
            G[idx[0] + 1][idx[1] + 1] += c / 2
            G[idx[1] + 1][idx[0] + 1] += c / 2
    return G


def _quadratic(p: Polynomial) -> Verdict:
    n = p.nvars
    G = quadratic_gram(p)
    res = ldl(G, want_direction=True)
    if res.psd:
        basis = [(0,) * n] + [tuple(int(i == j) for j in range(n)) for i in range(n)]
        cert = GramCertificate(basis, G, note="the unique Gram matrix of a quadratic")
        return Verdict(SosLabel.SOS, cert, "quadratic: exact LDL^T", nonnegative=True, message=cert.describe())
    # A readable point first: the stationary point H x = -b/2 rounded to 1/100 (row 309 of the SoS1 file).
    H = np.array([[float(G[i][j]) for j in range(1, n + 1)] for i in range(1, n + 1)])
    b2 = np.array([float(G[0][j]) for j in range(1, n + 1)])
    try:
        x = np.linalg.lstsq(H, -b2, rcond=None)[0]
        for d in (1, 100, 10**4, 10**6):
            pt = tuple(Fraction(round(float(v) * d), d) for v in x)
            value = p.evaluate(pt)
            if value < 0:
                return _not_sos(PointCertificate(pt, value, "quadratic: rounded stationary point"), "quadratic")
    except np.linalg.LinAlgError:
        pass
    v = res.direction
    if v[0] != 0:
        pt = tuple(vi / v[0] for vi in v[1:])
        return _not_sos(PointCertificate(pt, p.evaluate(pt), "quadratic: negative LDL^T pivot"), "quadratic")
    t = Fraction(1)
    for _ in range(400):
        pt = tuple(t * vi for vi in v[1:])
        value = p.evaluate(pt)
        if value < 0:
            return _not_sos(PointCertificate(pt, value, "quadratic: indefinite quadratic part"), "quadratic")
        t *= 2
    raise AssertionError("an indefinite quadratic form must give a negative value along its direction")


def _univariate_point(p: Polynomial, var: int) -> PointCertificate | None:
    import sympy

    x = sympy.Symbol("x")
    expr = sum(sympy.Rational(c.numerator, c.denominator) * x ** e[var] for e, c in p.terms.items())
    poly = sympy.Poly(expr, x)
    pts = [Fraction(0)]
    ends = []
    for (a, b), _ in poly.intervals():
        ends += [
            Fraction(int(sympy.numer(a)), int(sympy.denom(a))),
            Fraction(int(sympy.numer(b)), int(sympy.denom(b))),
        ]
    ends = sorted(set(ends))
    pts += ends + [(u + w) / 2 for u, w in itertools.pairwise(ends)]
    big = max([abs(e) for e in ends] + [Fraction(1)]) * 2 + 1
    pts += [big, -big]
    for t in pts:
        pt = [Fraction(0)] * p.nvars
        pt[var] = t
        value = p.evaluate(pt)
        if value < 0:
            return PointCertificate(tuple(pt), value, "univariate: a point between real roots")
    return None


def _check(p: Polynomial, config: CheckerConfig) -> Verdict:
    rng = np.random.default_rng(config.seed)
    if p.degree <= 0:
        cert = ConstantCertificate(p.constant_term())
        label = SosLabel.SOS if cert.value >= 0 else SosLabel.NOT_SOS
        return Verdict(label, cert, "constant", nonnegative=cert.value >= 0, message=cert.describe())
    cert = negative_direction_point(p, rng)
    if cert is not None:
        return _not_sos(cert, "degree / top form")
    if p.degree % 2:
        return _odd_degree(p)
    if p.degree == 2:
        return _quadratic(p)
    occurring = p.occurring_variables()
    if len(occurring) == 1:
        var = occurring[0]
        try:
            nonneg = univariate_nonnegative(p, var)
        except ImportError:
            nonneg = None
        if nonneg:
            cert = UnivariateCertificate(var)
            return Verdict(SosLabel.SOS, cert, "univariate", nonnegative=True, message=cert.describe())
        if nonneg is False:
            cert = _univariate_point(p, var)
            if cert is not None:
                return _not_sos(cert, "univariate")
    cert = find_negative_point_balanced(p, rng, num_samples=config.point_samples, time_limit=config.point_time_limit)
    if cert is not None:
        return _not_sos(cert, "point search")
    lattice = half_newton_lattice_points(p, limit=config.max_candidates)
    if lattice is None:
        return Verdict(
            SosLabel.UNKNOWN,
            method="newton",
            message=f"more than {config.max_candidates} candidate monomials for the Gram basis; SDP not attempted",
        )
    cert = newton_certificate(p, lattice)
    if cert is not None:
        return _not_sos(cert, "newton polytope")
    basis = prune_diagonal(p, lattice)
    if len(basis) > config.max_basis or not config.use_sdp:
        cert = find_negative_point(
            p, rng, num_samples=config.hard_point_samples, descent_starts=40, time_limit=config.hard_point_time_limit
        )
        if cert is not None:
            return _not_sos(cert, "point search (second pass)")
        why = (
            "SDP disabled"
            if not config.use_sdp
            else f"Gram basis of {len(basis)} monomials exceeds max_basis={config.max_basis}"
        )
        return Verdict(SosLabel.UNKNOWN, method="gram sdp", basis_size=len(basis), message=f"{why}; SDP not attempted")
    res = solve_gram_sdp(p, basis, solvers=config.solvers, time_limit=config.sdp_time_limit)
    details = {
        "t_star": res.t_star,
        "residual": res.residual,
        "lambda_min": res.lambda_min,
        "solver": res.solver,
        "sdp_seconds": round(res.seconds, 3),
        "notes": res.notes,
    }
    if res.certificate is not None:
        return Verdict(
            SosLabel.SOS,
            res.certificate,
            "gram sdp + exact rounding",
            nonnegative=True,
            message=res.certificate.describe() + f" ({res.certificate.note})",
            solver_status=res.status,
            basis_size=len(basis),
            details=details,
        )
    # No certificate: before reporting "unknown", search harder for a negative point (Test_Set_2 row 238 needs
    # more samples than the first pass uses).
    cert = find_negative_point(
        p, rng, num_samples=config.hard_point_samples, descent_starts=40, time_limit=config.hard_point_time_limit
    )
    if cert is not None:
        v = _not_sos(cert, "point search (after the SDP)")
        v.basis_size, v.solver_status, v.details = len(basis), res.status, details
        return v
    if config.dual and not res.numerical_ok:
        dual = find_dual_certificate(p, max_basis=config.max_dual_basis, time_limit=config.sdp_time_limit)
        details["dual"] = {"status": dual.status, "s_star": dual.s_star, "seconds": round(dual.seconds, 3),
                           "notes": dual.notes}  # fmt: skip
        if dual.certificate is not None:
            v = _not_sos(dual.certificate, "dual sdp + exact rounding")
            v.message += f" ({dual.certificate.note})"
            v.basis_size, v.solver_status, v.details = dual.basis_size, dual.status, details
            return v
    if res.numerical_ok:
        return Verdict(
            SosLabel.SOS_NUMERICAL,
            None,
            "gram sdp (numerical only)",
            message=(
                f"the solver found a Gram matrix with relative coefficient residual {res.residual:.1e} and smallest "
                f"eigenvalue "
                f"{res.lambda_min:.1e}, but exact rounding failed: not a proof"
            ),
            solver_status=res.status,
            basis_size=len(basis),
            details=details,
        )
    t_text = "" if res.t_star is None else f", best smallest eigenvalue t* = {res.t_star:.3g}"
    return Verdict(
        SosLabel.UNKNOWN,
        None,
        "gram sdp",
        message=f"no certificate found (solver status {res.status}{t_text}); this is not a proof of 'not SoS'",
        solver_status=res.status,
        basis_size=len(basis),
        details=details,
    )


def _verified(p: Polynomial, config: CheckerConfig) -> Verdict:
    verdict = _check(p, config)
    if config.verify and verdict.evidence is not None and not verdict.evidence.verify(p):
        raise AssertionError(
            f"internal error: the {verdict.method} certificate does not verify; please report this polynomial: {p}"
        )
    return verdict


def check_polynomial(poly: Polynomial | str, config: CheckerConfig | None = None) -> Verdict:
    """Decide SoS for `poly` (a `Polynomial` or its text) with evidence.

    Text never raises: malformed, truncated or over-limit text (`ParseLimits`) gives a `rejected` verdict, and any
    failure of the check itself an `error` verdict whose message names the exception, so a batch goes on with the
    next row. A `Polynomial` is checked as is and internal errors propagate.

    Example:

        >>> v = check_polynomial("(x1 - x2)^2 + 1")
        >>> v.label, v.proved_label
        ('sos', 1)
    """
    config = config or CheckerConfig()
    if not isinstance(config, CheckerConfig):
        raise TypeError(f"`config` must be a CheckerConfig, got {type(config).__name__}")
    t0 = time.perf_counter()
    if isinstance(poly, Polynomial):
        verdict = _verified(poly, config)
    elif isinstance(poly, str):
        try:
            p = parse_polynomial(poly)
        except PolynomialParseError as exc:
            return Verdict(SosLabel.REJECTED, method="parser", message=str(exc), seconds=time.perf_counter() - t0)
        try:
            verdict = _verified(p, config)
        except Exception as exc:  # noqa: BLE001  (text input: report, never raise)
            message = f"the check failed with {type(exc).__name__}: {str(exc)[:300]}"
            return Verdict(SosLabel.ERROR, method="checker", message=message, seconds=time.perf_counter() - t0)
    else:
        raise TypeError(f"`poly` must be a Polynomial or its text, got {type(poly).__name__}")
    verdict.seconds = time.perf_counter() - t0
    return verdict
