"""Evidence objects. Each one can be re-verified on its own, by code separate from the code that found it.

- `PointCertificate`: a rational point with p(point) < 0, evaluated exactly -> p is not nonnegative, not SoS.
- `GramCertificate`: a monomial basis z and a rational Q with z^T Q z = p and Q PSD (exact LDL^T) -> SoS.
- `SquaresCertificate`: weights w_k >= 0 and polynomials q_k with p = sum w_k q_k^2, expanded exactly -> SoS.
- `NewtonCertificate`: a monomial alpha of p that no Gram matrix over the half Newton polytope can produce,
  or can produce only on a diagonal entry while c_alpha < 0 -> not SoS (says nothing about nonnegativity).
- `DualCertificate`: a linear functional L (moments y_alpha) with a PSD moment matrix [y_{b_i + b_j}] over a basis
  that holds every monomial a square in an SoS decomposition of p can use, and L(p) < 0 -> not SoS (says nothing
  about nonnegativity: Robinson's form, for one, is nonnegative).
- `UnivariateCertificate`: an even-degree univariate p with positive leading coefficient and no real root of
  odd multiplicity (sympy's exact root counting) -> p >= 0 -> SoS (Hilbert, n = 1).
- `ConstantCertificate`: p is a constant c; SoS iff c >= 0.
- `TheoryCertificate`: p is a positive multiple of a Motzkin polynomial plus c >= 0 after a diagonal scaling and
  a renaming of variables -> nonnegative (AM-GM) and not SoS (the diagonal x^2 y^2 argument).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from .exact import is_psd, ldl
from .lattice import candidate_box, half_newton_lattice_points
from .parse import parse_polynomial
from .polynomial import Exponent, Polynomial, format_number


__all__ = [
    "ConstantCertificate",
    "DualCertificate",
    "GramCertificate",
    "NewtonCertificate",
    "PointCertificate",
    "SquaresCertificate",
    "TheoryCertificate",
    "UnivariateCertificate",
    "certificate_from_dict",
    "motzkin",
]


def _frac_list(xs) -> list[str]:
    return [str(Fraction(x)) for x in xs]


def _fmt_point(point) -> str:
    return "(" + ", ".join(format_number(Fraction(x)) for x in point) + ")"


@dataclass
class PointCertificate:
    """p(point) = value < 0, exactly. `reason` says how the point was found."""

    point: tuple[Fraction, ...]
    value: Fraction
    reason: str = "point search"
    kind: str = field(default="point", init=False)
    proves: str = field(default="not_sos", init=False)

    def verify(self, p: Polynomial) -> bool:
        if len(self.point) < p.nvars:
            return False
        value = p.evaluate(self.point)
        return value < 0 and value == self.value

    def describe(self) -> str:
        return f"{self.reason}: at x = {_fmt_point(self.point)} the polynomial equals {format_number(self.value)} < 0"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "point": _frac_list(self.point), "value": str(self.value), "reason": self.reason}


@dataclass
class ConstantCertificate:
    value: Fraction
    kind: str = field(default="constant", init=False)

    @property
    def proves(self) -> str:
        return "sos" if self.value >= 0 else "not_sos"

    def verify(self, p: Polynomial) -> bool:
        return p.degree <= 0 and p.constant_term() == self.value

    def describe(self) -> str:
        return f"the polynomial is the constant {format_number(self.value)}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": str(self.value)}


def _gram_polynomial(basis: list[Exponent], Q, nvars: int) -> Polynomial:
    """z^T Q z accumulated entry by entry (no use of the class structure the SDP code relies on)."""
    terms: dict[Exponent, Fraction] = {}
    for i, bi in enumerate(basis):
        row = Q[i]
        for j, bj in enumerate(basis):
            q = row[j]
            if q:
                k = tuple(a + b for a, b in zip(bi, bj))
                terms[k] = terms.get(k, Fraction(0)) + q
    return Polynomial(terms, nvars)


@dataclass
class GramCertificate:
    """p = z^T Q z with z the monomials `basis` and Q a rational PSD matrix."""

    basis: list[Exponent]
    gram: list[list[Fraction]]
    note: str = ""
    kind: str = field(default="gram", init=False)
    proves: str = field(default="sos", init=False)

    def verify(self, p: Polynomial) -> bool:
        n = len(self.basis)
        if any(len(row) != n for row in self.gram) or len(self.gram) != n:
            return False
        if any(self.gram[i][j] != self.gram[j][i] for i in range(n) for j in range(i)):
            return False
        if _gram_polynomial(self.basis, self.gram, p.nvars) != p:
            return False
        return is_psd(self.gram)

    def squares(self, nvars: int) -> list[tuple[Fraction, Polynomial]]:
        """Explicit squares from Q = L D L^T: p = sum_k D_k (sum_j L_jk z_j)^2."""
        res = ldl(self.gram)
        if not res.psd:
            raise ValueError("the Gram matrix is not PSD: no squares")
        out = []
        for k, d in enumerate(res.D):
            if d:
                q = Polynomial({self.basis[j]: res.L[j][k] for j in range(len(self.basis))}, nvars)
                out.append((d, q))
        return out

    def describe(self) -> str:
        return (
            f"a {len(self.basis)}x{len(self.basis)} rational Gram matrix over the monomial basis is PSD (exact LDL^T)"
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "basis": [list(b) for b in self.basis],
            "gram": [_frac_list(row) for row in self.gram],
            "note": self.note,
        }


@dataclass
class SquaresCertificate:
    """p = sum_k weights[k] * squares[k]^2 with weights >= 0."""

    weights: list[Fraction]
    squares: list[Polynomial]
    kind: str = field(default="squares", init=False)
    proves: str = field(default="sos", init=False)

    def verify(self, p: Polynomial) -> bool:
        if len(self.weights) != len(self.squares) or any(w < 0 for w in self.weights):
            return False
        total = Polynomial({}, p.nvars)
        for w, q in zip(self.weights, self.squares):
            total = total + (q * q) * Fraction(w)
        return total == p

    def describe(self) -> str:
        return f"the polynomial is a weighted sum of {len(self.squares)} squares with non-negative weights"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "weights": _frac_list(self.weights), "squares": [q.to_str() for q in self.squares]}


@dataclass
class NewtonCertificate:
    """Monomial `alpha` of p: no pair in the half-Newton-polytope basis sums to it ("outside"), or only the
    diagonal pair 2*beta does while c_alpha < 0 ("diagonal", the Motzkin argument: Q_beta,beta >= 0)."""

    alpha: Exponent
    reason: str  # "outside" | "diagonal"
    basis: list[Exponent]
    kind: str = field(default="newton", init=False)
    proves: str = field(default="not_sos", init=False)

    def verify(self, p: Polynomial) -> bool:
        c = p.coefficient(self.alpha)
        if c == 0:
            return False
        # Recompute the lattice points of N(p)/2 from scratch and check that the claimed basis covers them.
        truth = set(half_newton_lattice_points(p, method="enumerate"))
        if not truth <= set(self.basis):
            return False
        pairs = [(b, tuple(a - x for a, x in zip(self.alpha, b))) for b in truth]
        pairs = [(b, o) for b, o in pairs if o in truth]
        if self.reason == "outside":
            return not pairs
        if self.reason == "diagonal":
            return c < 0 and bool(pairs) and all(b == o for b, o in pairs)
        return False

    def describe(self) -> str:
        mono = "*".join(f"x{i + 1}^{k}" for i, k in enumerate(self.alpha) if k) or "1"
        if self.reason == "outside":
            return (
                f"the monomial {mono} cannot be written as a product of two monomials from the half Newton polytope "
                "(the only monomials a square can use), so no sum of squares produces it"
            )
        return (
            f"the monomial {mono} has a negative coefficient but can only come from the square of a single monomial, "
            "i.e. a diagonal Gram entry, which must be >= 0"
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "alpha": list(self.alpha),
            "reason": self.reason,
            "basis": [list(b) for b in self.basis],
        }


@dataclass
class DualCertificate:
    """A separating moment functional: moments y_alpha (alpha in B + B) with

    - B containing every integer point of `candidate_box(p)`, a superset of N(p)/2, so any SoS decomposition of p
      is p = z_B^T Q z_B with Q PSD (Reznick);
    - the moment matrix M = [y_{b_i + b_j}] PSD;
    - L(p) = sum_alpha c_alpha y_alpha < 0.

    Then p is not SoS: L(z_B^T Q z_B) = trace(Q M) >= 0 for every PSD Q. `verify` checks the three conditions in
    exact rational arithmetic (PSD by exact elimination)."""

    basis: list[Exponent]
    moments: dict[Exponent, Fraction]
    value: Fraction  # L(p)
    note: str = ""
    kind: str = field(default="dual", init=False)
    proves: str = field(default="not_sos", init=False)

    def moment_matrix(self) -> list[list[Fraction]]:
        add = lambda a, b: tuple(x + y for x, y in zip(a, b))  # noqa: E731
        return [[self.moments[add(a, b)] for b in self.basis] for a in self.basis]

    def verify(self, p: Polynomial) -> bool:
        if p.is_zero or any(len(b) != p.nvars for b in self.basis):
            return False
        if not set(candidate_box(p)) <= set(self.basis):
            return False
        pairs = {tuple(x + y for x, y in zip(a, b)) for a in self.basis for b in self.basis}
        if not (pairs | set(p.terms)) <= set(self.moments):
            return False
        value = sum((c * self.moments[e] for e, c in p.terms.items()), Fraction(0))
        return value < 0 and value == self.value and is_psd(self.moment_matrix())

    def describe(self) -> str:
        return (
            f"a linear functional L on the monomials has a positive semidefinite {len(self.basis)}x{len(self.basis)} "
            f"moment matrix over every monomial a square in a decomposition of p could use, and L(p) = "
            f"{format_number(self.value)} < 0, while L(q) >= 0 for every sum of squares q"
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "basis": [list(b) for b in self.basis],
            "moments": [[list(e), str(v)] for e, v in sorted(self.moments.items())],
            "value": str(self.value),
            "note": self.note,
        }


@dataclass
class UnivariateCertificate:
    """Even-degree univariate p (in variable `var`) with positive leading coefficient and no real root of odd
    multiplicity, checked with sympy's exact real-root counting."""

    var: int
    kind: str = field(default="univariate", init=False)
    proves: str = field(default="sos", init=False)

    def verify(self, p: Polynomial) -> bool:
        return univariate_nonnegative(p, self.var)

    def describe(self) -> str:
        return (
            "a univariate polynomial of even degree with a positive leading coefficient and no real root of odd "
            "multiplicity is nonnegative, and for one variable nonnegative means SoS (Hilbert)"
        )

    def to_dict(self) -> dict:
        return {"kind": self.kind, "var": self.var}


def univariate_nonnegative(p: Polynomial, var: int) -> bool:
    import sympy

    if any(any(k for i, k in enumerate(e) if i != var) for e in p.terms):
        return False
    x = sympy.Symbol("x")
    expr = sum(sympy.Rational(c.numerator, c.denominator) * x ** e[var] for e, c in p.terms.items())
    poly = sympy.Poly(expr, x)
    if poly.degree() % 2 or poly.LC() <= 0:
        return False
    _, factors = poly.sqf_list()
    return all(mult % 2 == 0 or f.count_roots() == 0 for f, mult in factors)


def motzkin(c: Fraction = Fraction(0)) -> Polynomial:
    """x1^4 x2^2 + x1^2 x2^4 - 3 x1^2 x2^2 + 1 + c: nonnegative by AM-GM for c >= 0, never SoS."""
    return Polynomial({(4, 2): 1, (2, 4): 1, (2, 2): -3, (0, 0): 1 + Fraction(c)}, 2)


@dataclass
class TheoryCertificate:
    """p(x) = scale * M(a * x_i, b * x_j) + scale * shift with M the Motzkin polynomial (i != j 0-based variables),
    shift >= 0 and scale > 0. Nonnegative by AM-GM and not SoS by the diagonal argument, both invariant under this
    map; `verify` rebuilds p from the parameters."""

    family: str
    variables: tuple[int, int]
    scalings: tuple[Fraction, Fraction]
    scale: Fraction
    shift: Fraction
    kind: str = field(default="theory", init=False)
    proves: str = field(default="nonneg_not_sos", init=False)

    def rebuild(self, nvars: int) -> Polynomial:
        if self.family != "motzkin":
            raise ValueError(f"unknown family {self.family!r}")
        i, j = self.variables
        a, b = self.scalings
        images = [Polynomial.variable(i, nvars) * Fraction(a), Polynomial.variable(j, nvars) * Fraction(b)]
        return motzkin(self.shift).substitute(images) * Fraction(self.scale)

    def verify(self, p: Polynomial) -> bool:
        if self.scale <= 0 or self.shift < 0 or 0 in self.scalings or self.variables[0] == self.variables[1]:
            return False
        return self.rebuild(max(p.nvars, max(self.variables) + 1)) == p

    def describe(self) -> str:
        return "a rescaled Motzkin polynomial plus a non-negative constant: nonnegative (AM-GM) but not SoS"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "family": self.family,
            "variables": list(self.variables),
            "scalings": _frac_list(self.scalings),
            "scale": str(self.scale),
            "shift": str(self.shift),
        }


def certificate_from_dict(d: dict):
    """Inverse of `to_dict` (JSON round trip of generated items)."""
    kind = d["kind"]
    F = Fraction
    if kind == "point":
        return PointCertificate(tuple(F(x) for x in d["point"]), F(d["value"]), d.get("reason", "point search"))
    if kind == "constant":
        return ConstantCertificate(F(d["value"]))
    if kind == "gram":
        return GramCertificate(
            [tuple(b) for b in d["basis"]], [[F(x) for x in row] for row in d["gram"]], d.get("note", "")
        )
    if kind == "squares":
        return SquaresCertificate([F(w) for w in d["weights"]], [parse_polynomial(q) for q in d["squares"]])
    if kind == "newton":
        return NewtonCertificate(tuple(d["alpha"]), d["reason"], [tuple(b) for b in d["basis"]])
    if kind == "univariate":
        return UnivariateCertificate(d["var"])
    if kind == "dual":
        return DualCertificate(
            [tuple(b) for b in d["basis"]], {tuple(e): F(v) for e, v in d["moments"]}, F(d["value"]), d.get("note", "")
        )
    if kind == "theory":
        return TheoryCertificate(
            d["family"], tuple(d["variables"]), tuple(F(x) for x in d["scalings"]), F(d["scale"]), F(d["shift"])
        )
    raise ValueError(f"unknown certificate kind {kind!r}")
