"""Exact polynomials over the rationals: a sparse `{exponent tuple: Fraction}` map, a parser for the SoS-1K text
formats and a canonical printer.

Accepted text (spec `sos.md`, "Step 0"): variables `x1..xn` or `x(1)..x(n)` (1-based), `^` or `**` powers,
`*` or `/` by a number, unary signs, parentheses (our squared-form items print `(...)^2`), and decimals with
exponents. Every coefficient is converted from its decimal *string* with `Fraction(str)` (`"4.9e-3"` -> 49/10000),
never through a float. Truncated or malformed input raises `PolynomialParseError` naming the position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction


__all__ = [
    "SPREADSHEET_CELL_LIMIT",
    "Polynomial",
    "PolynomialParseError",
    "TruncatedPolynomialError",
    "format_number",
    "parse_polynomial",
]

# The released SoS1 file has six rows cut at exactly this length, the spreadsheet cell limit (spec, defect 1).
SPREADSHEET_CELL_LIMIT = 32767
_MAX_POWER = 64  # largest exponent the parser expands; guards `(...)^100000` from eating the machine


class PolynomialParseError(ValueError):
    """The text is not a polynomial in the accepted format; the message names the position."""


class TruncatedPolynomialError(PolynomialParseError):
    """The text looks cut off (spreadsheet cell limit, or it ends in an operator or a bare variable stem)."""


Exponent = tuple[int, ...]


def _pad(e: Sequence[int], n: int) -> Exponent:
    return tuple(e) + (0,) * (n - len(e))


class Polynomial:
    """A real polynomial with exact rational coefficients in variables x1..x{nvars}.

    Stored as `terms`: `{exponent tuple of length nvars: nonzero Fraction}`. Immutable by convention; arithmetic
    returns new objects. Two polynomials compare equal when their nonzero terms agree (trailing unused variables
    do not matter).

    Example:

        >>> p = parse_polynomial("(x1 - x2)^2 + 1")
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


# ------------------------------------------------------------------------------------------------------- parser
_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<var>x\s*\(\s*(?P<pidx>\d+)\s*\)|x(?P<idx>\d+))"
    r"|(?P<pow>\*\*|\^)"
    r"|(?P<op>[-+*/()])"
    r")"
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos, n = 0, len(text)
    while pos < n:
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos] == "x":
                if text[pos:].strip() in ("x", "x(") or re.fullmatch(r"x\s*\(\s*\d*\s*", text[pos:]):
                    raise TruncatedPolynomialError(
                        f"the text ends in a bare variable stem {text[pos:]!r} at position {pos}: it looks truncated"
                    )
                raise PolynomialParseError(
                    f"bad variable at position {pos}: {text[pos : pos + 12]!r}; write x1..xn or x(1)..x(n)"
                )
            raise PolynomialParseError(
                f"unexpected character {text[pos]!r} at position {pos} (context {text[max(0, pos - 10) : pos + 10]!r}); "
                "a polynomial uses numbers, x1..xn or x(1)..x(n), + - * / ^ ** and parentheses"
            )
        start = m.start() + (len(m.group(0)) - len(m.group(0).lstrip()))
        if m.group("num") is not None:
            tokens.append(("num", m.group("num"), start))
        elif m.group("var") is not None:
            idx = int(m.group("pidx") or m.group("idx"))
            if idx < 1:
                raise PolynomialParseError(f"variable index {idx} at position {start}: variables are numbered from 1")
            tokens.append(("var", str(idx), start))
        elif m.group("pow") is not None:
            tokens.append(("pow", "^", start))
        else:
            tokens.append(("op", m.group("op"), start))
        pos = m.end()
    return tokens


Terms = dict[Exponent, Fraction]


def _dmul(a: Terms, b: Terms) -> Terms:
    out: Terms = {}
    for ea, ca in a.items():
        for eb, cb in b.items():
            k = tuple(x + y for x, y in zip(ea, eb))
            v = out.get(k, 0) + ca * cb
            if v:
                out[k] = v
            else:
                out.pop(k, None)
    return out


def _dpow(a: Terms, k: int, n: int) -> Terms:
    result: Terms = {(0,) * n: Fraction(1)}
    for _ in range(k):
        result = _dmul(result, a)
    return result


class _Parser:
    """Recursive descent over the tokens; values are plain `{exponent: Fraction}` dicts (fast on 30k-char rows)."""

    def __init__(self, text: str, tokens: list[tuple[str, str, int]], nvars: int):
        self.text, self.tokens, self.i, self.n = text, tokens, 0, nvars
        self.zero = (0,) * nvars

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "", len(self.text))

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, what: str):
        kind, val, pos = self.peek()
        if kind == "end":
            raise TruncatedPolynomialError(
                f"the text ends where {what} was expected (position {pos}): it looks truncated"
            )
        raise PolynomialParseError(f"expected {what} at position {pos}, found {val!r}")

    def expr(self) -> Terms:
        acc: Terms = {}
        sign = 1
        while True:
            for e, c in self.term().items():
                v = acc.get(e, 0) + sign * c
                if v:
                    acc[e] = v
                else:
                    acc.pop(e, None)
            kind, val, _ = self.peek()
            if kind == "op" and val in "+-":
                self.take()
                sign = 1 if val == "+" else -1
            else:
                return acc

    def term(self) -> Terms:
        out = self.unary()
        while self.peek()[0] == "op" and self.peek()[1] in "*/":
            op = self.take()[1]
            rhs = self.unary()
            if op == "*":
                out = _dmul(out, rhs)
            else:
                pos = self.tokens[self.i - 1][2]
                if any(e != self.zero for e in rhs):
                    raise PolynomialParseError(f"division by a non-constant at position {pos}")
                if not rhs:
                    raise PolynomialParseError(f"division by zero at position {pos}")
                inv = 1 / rhs[self.zero]
                out = {e: c * inv for e, c in out.items()}
        return out

    def unary(self) -> Terms:
        kind, val, _ = self.peek()
        if kind == "op" and val in "+-":
            self.take()
            inner = self.unary()
            return {e: -c for e, c in inner.items()} if val == "-" else inner
        return self.power()

    def power(self) -> Terms:
        base = self.atom()
        if self.peek()[0] == "pow":
            self.take()
            kind, val, pos = self.peek()
            if kind != "num":
                self.fail("an integer exponent")
            self.take()
            if not val.isdigit():
                raise PolynomialParseError(
                    f"the exponent at position {pos} must be a non-negative integer, got {val!r}"
                )
            k = int(val)
            if k > _MAX_POWER:
                raise PolynomialParseError(f"exponent {k} at position {pos} exceeds the limit {_MAX_POWER}")
            if self.peek()[0] == "pow":
                raise PolynomialParseError(
                    f"chained powers at position {self.peek()[2]} are ambiguous; use parentheses"
                )
            if len(base) == 1:
                ((e, c),) = base.items()
                return {tuple(k * x for x in e): c**k}
            return _dpow(base, k, self.n)
        return base

    def atom(self) -> Terms:
        kind, val, _ = self.peek()
        if kind == "num":
            self.take()
            c = Fraction(val)
            return {self.zero: c} if c else {}
        if kind == "var":
            self.take()
            e = [0] * self.n
            e[int(val) - 1] = 1
            return {tuple(e): Fraction(1)}
        if kind == "op" and val == "(":
            self.take()
            inner = self.expr()
            kind, val, _ = self.peek()
            if (kind, val) != ("op", ")"):
                self.fail("')'")
            self.take()
            return inner
        self.fail("a number, a variable or '('")


_FLAT_SPLIT = re.compile(r"(?<![eE])(?=[+-])")
_FLAT_NUM = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FLAT_VAR = re.compile(r"x(\d+)(?:\^(\d+))?")
_PAREN_VAR = re.compile(r"x\((\d+)\)")


def _parse_flat(text: str, nvars: int | None) -> Polynomial | None:
    """Fast path for expanded text (a flat sum of `coef*var^k*...` terms, the released file's only shape).
    Returns None on anything unusual, and the general parser then produces the result or a precise error."""
    s = _PAREN_VAR.sub(r"x\1", "".join(text.split())).replace("**", "^")
    if "(" in s or ")" in s or "/" in s:
        return None
    raw: list[tuple[list[tuple[int, int]], Fraction]] = []
    width = 0
    for piece in _FLAT_SPLIT.split(s):
        if not piece:
            continue
        sign = -1 if piece[0] == "-" else 1
        body = piece[1:] if piece[0] in "+-" else piece
        if not body:
            return None
        coef, powers = Fraction(sign), []
        for factor in body.split("*"):
            if _FLAT_NUM.fullmatch(factor):
                coef *= Fraction(factor)
                continue
            m = _FLAT_VAR.fullmatch(factor)
            if not m:
                return None
            idx, k = int(m.group(1)), int(m.group(2) or 1)
            if idx < 1 or k > _MAX_POWER:
                return None
            powers.append((idx - 1, k))
            width = max(width, idx)
        raw.append((powers, coef))
    if not raw or (nvars is not None and nvars < width):
        return None
    n = width if nvars is None else nvars
    terms: dict[Exponent, Fraction] = {}
    for powers, coef in raw:
        e = [0] * n
        for i, k in powers:
            e[i] += k
        key = tuple(e)
        v = terms.get(key, 0) + coef
        if v:
            terms[key] = v
        else:
            terms.pop(key, None)
    return Polynomial._from_clean(terms, n)


def parse_polynomial(text: str, nvars: int | None = None) -> Polynomial:
    """Parse SoS-1K polynomial text exactly.

    Args:
        text (`str`): e.g. `"3.2*x1^2*x2^2 - 4.9e-3*x3 + 1"` or `"-9.04+0.548*x(1)+492.9*x(1)^2"`.
        nvars (`int`, *optional*): number of variables; defaults to the largest index that occurs.

    Raises:
        TruncatedPolynomialError: the text has exactly 32,767 characters (the spreadsheet cell limit that cut six
            rows of the released file), or ends in an operator or a bare variable stem.
        PolynomialParseError: anything else that is not a polynomial, with the position.
    """
    if not isinstance(text, str):
        raise PolynomialParseError(f"expected polynomial text, got {type(text).__name__}")
    if len(text) == SPREADSHEET_CELL_LIMIT:
        raise TruncatedPolynomialError(
            f"the text has exactly {SPREADSHEET_CELL_LIMIT} characters, the spreadsheet cell limit: it was most "
            "likely cut off, so it is rejected rather than read as a different polynomial"
        )
    stripped = text.rstrip()
    if not stripped:
        raise PolynomialParseError("empty polynomial text")
    if stripped[-1] in "+-*/^(" or stripped.endswith("**"):
        raise TruncatedPolynomialError(
            f"the text ends in the operator {stripped[-1]!r} at position {len(stripped) - 1}: it looks truncated"
        )
    fast = _parse_flat(text, nvars)
    if fast is not None:
        return fast
    tokens = _tokenize(text)
    width = max((int(v) for k, v, _ in tokens if k == "var"), default=0)
    if nvars is not None and nvars < width:
        raise PolynomialParseError(f"x{width} occurs but `nvars`={nvars}")
    n = width if nvars is None else nvars
    parser = _Parser(text, tokens, n)
    terms = parser.expr()
    if parser.i != len(tokens):
        pos = parser.peek()[2]
        raise PolynomialParseError(f"unexpected {text[pos : pos + 10]!r} at position {pos} (a missing operator?)")
    return Polynomial._from_clean(terms, n)


def polynomial_from_terms(terms: Iterable[tuple[Sequence[int], object]], nvars: int) -> Polynomial:
    out: dict[Exponent, Fraction] = {}
    for e, c in terms:
        k = _pad(e, nvars)
        out[k] = out.get(k, Fraction(0)) + Fraction(c)
    return Polynomial(out, nvars)
