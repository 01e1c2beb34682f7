"""Exact polynomials over the rationals: a sparse `{exponent tuple: Fraction}` map with arithmetic, exact
evaluation and a canonical printer. Text is read by `hf_plugins.sos.parse.parse_polynomial`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction


__all__ = ["Exponent", "Polynomial", "format_number", "polynomial_from_terms"]


Exponent = tuple[int, ...]


def _pad(e: Sequence[int], n: int) -> Exponent:
    return tuple(e) + (0,) * (n - len(e))


class Polynomial:
    """A real polynomial with exact rational coefficients in variables x1..x{nvars}.

    Stored as `terms`: `{exponent tuple of length nvars: nonzero Fraction}`. Immutable by convention; arithmetic
    returns new objects. Two polynomials compare equal when their nonzero terms agree (trailing unused variables
    do not matter).

    Example:

        >>> p = Polynomial({(2, 0): 1, (1, 1): -2, (0, 2): 1, (0, 0): 1})
        >>> p.degree, p.nvars, str(p)
        (2, 2, '1 + x1^2 - 2*x1*x2 + x2^2')
    """

    __slots__ = ("_hash", "nvars", "terms")

    def __init__(self, terms: Mapping[Sequence[int], object] | None = None, nvars: int | None = None):
        clean: dict[Exponent, Fraction] = {}
        width = max((len(e) for e in terms), default=0) if terms else 0
        n = width if nvars is None else nvars
        if n < width:
            raise ValueError(f"`nvars`={nvars} is smaller than the exponent length {width}")
        for e, c in (terms or {}).items():
            if any((not isinstance(k, int)) or k < 0 for k in e):
                raise ValueError(f"exponents must be non-negative integers, got {tuple(e)}")
            c = c if isinstance(c, Fraction) else Fraction(c)
            if c:
                key = _pad(e, n)
                clean[key] = clean.get(key, Fraction(0)) + c
                if not clean[key]:
                    del clean[key]
        self.terms: dict[Exponent, Fraction] = clean
        self.nvars: int = n
        self._hash = None

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def _from_clean(cls, terms: dict[Exponent, Fraction], nvars: int) -> Polynomial:
        """Wrap a dict whose keys already have length `nvars` and whose values are nonzero Fractions."""
        obj = cls.__new__(cls)
        obj.terms, obj.nvars, obj._hash = terms, nvars, None
        return obj

    @classmethod
    def constant(cls, c, nvars: int = 0) -> Polynomial:
        return cls({(0,) * nvars: c}, nvars)

    @classmethod
    def variable(cls, i: int, nvars: int) -> Polynomial:
        """x_{i+1} (0-based index `i`) in `nvars` variables."""
        e = [0] * nvars
        e[i] = 1
        return cls({tuple(e): 1}, nvars)

    @classmethod
    def monomial(cls, exponent: Sequence[int], coeff=1) -> Polynomial:
        return cls({tuple(exponent): coeff}, len(exponent))

    def with_nvars(self, n: int) -> Polynomial:
        if n < self.nvars and any(any(e[n:]) for e in self.terms):
            raise ValueError(f"cannot drop variables beyond x{n}: they occur in the polynomial")
        return Polynomial({e[:n] if n < self.nvars else e: c for e, c in self.terms.items()}, n)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def degree(self) -> int:
        """Total degree; -1 for the zero polynomial."""
        return max((sum(e) for e in self.terms), default=-1)

    @property
    def is_zero(self) -> bool:
        return not self.terms

    def coefficient(self, exponent: Sequence[int]) -> Fraction:
        return self.terms.get(_pad(exponent, self.nvars), Fraction(0))

    def constant_term(self) -> Fraction:
        return self.terms.get((0,) * self.nvars, Fraction(0))

    def occurring_variables(self) -> list[int]:
        """0-based indices of the variables that occur with a nonzero exponent."""
        return [i for i in range(self.nvars) if any(e[i] for e in self.terms)]

    def top_form(self) -> Polynomial:
        """The homogeneous part of highest degree."""
        d = self.degree
        return Polynomial({e: c for e, c in self.terms.items() if sum(e) == d}, self.nvars)

    def is_homogeneous(self) -> bool:
        return len({sum(e) for e in self.terms}) <= 1

    def max_abs_coefficient(self) -> Fraction:
        return max((abs(c) for c in self.terms.values()), default=Fraction(0))

    # ----------------------------------------------------------------------------------------------- arithmetic
    def _coerce(self, other) -> Polynomial:
        if isinstance(other, Polynomial):
            return other
        if isinstance(other, int | Fraction):
            return Polynomial.constant(other, self.nvars)
        return NotImplemented

    def __add__(self, other):
        other = self._coerce(other)
        if other is NotImplemented:
            return other
        n = max(self.nvars, other.nvars)
        out = {_pad(e, n): c for e, c in self.terms.items()}
        for e, c in other.terms.items():
            k = _pad(e, n)
            out[k] = out.get(k, Fraction(0)) + c
        return Polynomial(out, n)

    __radd__ = __add__

    def __neg__(self):
        return Polynomial({e: -c for e, c in self.terms.items()}, self.nvars)

    def __sub__(self, other):
        other = self._coerce(other)
        if other is NotImplemented:
            return other
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if isinstance(other, int | Fraction):
            return Polynomial({e: c * other for e, c in self.terms.items()}, self.nvars)
        if not isinstance(other, Polynomial):
            return NotImplemented
        n = max(self.nvars, other.nvars)
        out: dict[Exponent, Fraction] = {}
        b_terms = [(_pad(e, n), c) for e, c in other.terms.items()]
        for ea, ca in self.terms.items():
            ea = _pad(ea, n)
            for eb, cb in b_terms:
                k = tuple(x + y for x, y in zip(ea, eb))
                out[k] = out.get(k, Fraction(0)) + ca * cb
        return Polynomial(out, n)

    __rmul__ = __mul__

    def __pow__(self, k: int):
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"polynomial powers must be non-negative integers, got {k!r}")
        result, base = Polynomial.constant(1, self.nvars), self
        while k:
            if k & 1:
                result = result * base
            k >>= 1
            if k:
                base = base * base
        return result

    def __eq__(self, other) -> bool:
        if isinstance(other, int | Fraction):
            other = Polynomial.constant(other, self.nvars)
        if not isinstance(other, Polynomial):
            return NotImplemented
        n = max(self.nvars, other.nvars)
        return {_pad(e, n): c for e, c in self.terms.items()} == {_pad(e, n): c for e, c in other.terms.items()}

    def __hash__(self):
        if self._hash is None:
            n = max((max((i + 1 for i, k in enumerate(e) if k), default=0) for e in self.terms), default=0)
            self._hash = hash(frozenset((e[:n], c) for e, c in self.terms.items()))
        return self._hash

    # ----------------------------------------------------------------------------------------------- evaluation
    def __call__(self, point: Sequence) -> Fraction:
        return self.evaluate(point)

    def evaluate(self, point: Sequence) -> Fraction:
        """Exact value at a rational point (ints, Fractions, or decimal strings; floats are converted exactly)."""
        if len(point) < self.nvars:
            raise ValueError(f"the point has {len(point)} coordinates, the polynomial has {self.nvars} variables")
        x = [v if isinstance(v, Fraction) else Fraction(v) for v in point[: self.nvars]]
        powers: list[dict[int, Fraction]] = [{0: Fraction(1), 1: xi} for xi in x]

        def pw(i: int, k: int) -> Fraction:
            cache = powers[i]
            if k not in cache:
                cache[k] = x[i] ** k
            return cache[k]

        total = Fraction(0)
        for e, c in self.terms.items():
            v = c
            for i, k in enumerate(e):
                if k:
                    v *= pw(i, k)
            total += v
        return total

    def substitute(self, images: Sequence[Polynomial]) -> Polynomial:
        """p(images[0], ..., images[n-1]): compose with polynomial maps (used for affine changes of variables)."""
        if len(images) < self.nvars:
            raise ValueError(f"need {self.nvars} images, got {len(images)}")
        n = max((q.nvars for q in images), default=0)
        out = Polynomial({}, n)
        cache: dict[tuple[int, int], Polynomial] = {}
        for e, c in self.terms.items():
            term = Polynomial.constant(c, n)
            for i, k in enumerate(e):
                if k:
                    if (i, k) not in cache:
                        cache[(i, k)] = images[i] ** k
                    term = term * cache[(i, k)]
            out = out + term
        return out

    # ----------------------------------------------------------------------------------------------- printing
    def to_str(self, style: str = "x1", spaces: bool = True) -> str:
        """Canonical text: terms by total degree, then graded-lexicographically; exact coefficients (integers,
        terminating decimals, or `a/b`). `style` is "x1" (`x3^2`) or "x(1)" (`x(3)^2`)."""
        if style not in ("x1", "x(1)"):
            raise ValueError(f"`style` must be 'x1' or 'x(1)', got {style!r}")
        if not self.terms:
            return "0"
        sep = " " if spaces else ""
        parts: list[str] = []
        for e in sorted(self.terms, key=lambda e: (sum(e), tuple(-k for k in e))):
            c = self.terms[e]
            mono = "*".join(_var(i, k, style) for i, k in enumerate(e) if k)
            mag = abs(c)
            if mono:
                body = mono if mag == 1 else f"{format_number(mag)}*{mono}"
            else:
                body = format_number(mag)
            if not parts:
                parts.append(("-" if c < 0 else "") + body)
            else:
                parts.append(f"{sep}{'-' if c < 0 else '+'}{sep}{body}")
        return "".join(parts)

    def __str__(self) -> str:
        return self.to_str()

    def __repr__(self) -> str:
        return f"Polynomial({self.to_str()!r}, nvars={self.nvars})"

    def sort_key(self):
        return self.to_str(spaces=False)


def _var(i: int, k: int, style: str) -> str:
    name = f"x{i + 1}" if style == "x1" else f"x({i + 1})"
    return name if k == 1 else f"{name}^{k}"


def format_number(q: Fraction) -> str:
    """Exact text of a non-negative-or-negative rational: `3`, `0.25`, `1e-12` style is avoided; terminating
    decimals are written in positional notation, anything else as `a/b`."""
    q = Fraction(q)
    if q.denominator == 1:
        return str(q.numerator)
    d, twos, fives = q.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1 or max(twos, fives) > 12:
        return f"{q.numerator}/{q.denominator}"
    digits = max(twos, fives)
    scaled = abs(q.numerator) * (10**digits // q.denominator)
    sign = "-" if q < 0 else ""
    whole, frac = divmod(scaled, 10**digits)
    return f"{sign}{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"


def polynomial_from_terms(terms: Iterable[tuple[Sequence[int], object]], nvars: int) -> Polynomial:
    out: dict[Exponent, Fraction] = {}
    for e, c in terms:
        k = _pad(e, nvars)
        out[k] = out.get(k, Fraction(0)) + Fraction(c)
    return Polynomial(out, nvars)
