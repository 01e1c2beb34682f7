"""Reading SoS-1K polynomial text exactly, at a bounded cost.

Accepted text: variables `x1..xn` or `x(1)..x(n)` (1-based), `^` or `**` powers, `*` or `/` by a number, unary
signs, parentheses (our squared-form items print `(...)^2`), and decimals with exponents. Every coefficient is
converted from its decimal *string* with `Fraction(str)` (`"4.9e-3"` -> 49/10000), never through a float.

Every input has a bounded cost: `ParseLimits` caps the text length, the variable index, the digits and the decimal
exponent of a number, the nesting depth, the exponent of `^`, the total degree, the number of terms of any
intermediate result, the term-by-term products of the whole parse and the size of any coefficient. Each limit is
checked *before* the work it bounds, so hostile text (200 nested parentheses, `(x1+...+x8)^16`, `1e20000000`,
`x100000^2+1`) fails at once with a `PolynomialParseError` naming the limit. Only ASCII is accepted: `x١` or `x１`
(Arabic-Indic or full-width digits, which Python's `int` would read as 1) are rejected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from fractions import Fraction

from .polynomial import Exponent, Polynomial


__all__ = [
    "SPREADSHEET_CELL_LIMIT",
    "ParseLimits",
    "PolynomialParseError",
    "TruncatedPolynomialError",
    "parse_polynomial",
]

# The released SoS1 file has six rows cut at exactly this length, the spreadsheet cell limit.
SPREADSHEET_CELL_LIMIT = 32767


class PolynomialParseError(ValueError):
    """The text is not a polynomial in the accepted format, or exceeds a `ParseLimits` bound; the message names the
    position or the limit."""


class TruncatedPolynomialError(PolynomialParseError):
    """The text looks cut off (spreadsheet cell limit, or it ends in an operator or a bare variable stem)."""


@dataclass(frozen=True)
class ParseLimits:
    """Bounds that keep parsing cheap on any input (each well above what the SoS1 file and our generator need: at
    most 11 variables, degree 12, 32,767 characters, ~2,000 terms).

    Args:
        max_chars (`int`, defaults to `1_000_000`): longest text.
        max_variables (`int`, defaults to `100`): largest variable index (`x100`); a term stores one exponent per
            variable, so `x100000` would cost 100,000 integers per term.
        max_power (`int`, defaults to `64`): largest exponent after `^`.
        max_degree (`int`, defaults to `256`): largest total degree of any intermediate result.
        max_terms (`int`, defaults to `100_000`): most terms of any intermediate result; a power `(...)^k` of m
            terms is refused when it could reach more (at most C(m + k - 1, k) terms).
        max_work (`int`, defaults to `300_000`): most term-by-term products in one parse (well under a second).
        max_digits (`int`, defaults to `1000`): most digits in one number.
        max_decimal_exponent (`int`, defaults to `1000`): largest |e| in `1.5e-7` style numbers.
        max_coefficient_bits (`int`, defaults to `100_000`): largest numerator or denominator of any coefficient,
            in bits (about 30,000 decimal digits).
        max_nesting (`int`, defaults to `64`): deepest nesting of parentheses.
    """

    max_chars: int = 1_000_000
    max_variables: int = 100
    max_power: int = 64
    max_degree: int = 256
    max_terms: int = 100_000
    max_work: int = 300_000
    max_digits: int = 1000
    max_decimal_exponent: int = 1000
    max_coefficient_bits: int = 100_000
    max_nesting: int = 64

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{f.name}` must be a positive integer, got {value!r}")


_DEFAULT_LIMITS = ParseLimits()

_NUM = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_TOKEN = re.compile(
    r"[ \t\r\n]*(?:"
    rf"(?P<num>{_NUM})"
    r"|(?P<var>x[ \t]*\([ \t]*(?P<pidx>[0-9]+)[ \t]*\)|x(?P<idx>[0-9]+))"
    r"|(?P<pow>\*\*|\^)"
    r"|(?P<op>[-+*/()])"
    r")"
)
_NUM_PARTS = re.compile(r"([0-9]*)\.?([0-9]*)(?:[eE]([+-]?)([0-9]+))?")


def _number(lit: str, pos: int, limits: ParseLimits) -> Fraction:
    """`Fraction(lit)` once its digits and decimal exponent are within the limits."""
    m = _NUM_PARTS.fullmatch(lit)
    whole, frac, _, exp = m.groups()
    if len(whole) + len(frac) > limits.max_digits:
        raise PolynomialParseError(
            f"the number at position {pos} has {len(whole) + len(frac)} digits; the limit is {limits.max_digits} "
            "(ParseLimits.max_digits)"
        )
    if exp and (len(exp) > 9 or int(exp) > limits.max_decimal_exponent):
        raise PolynomialParseError(
            f"the decimal exponent of the number at position {pos} ({lit[:20]!r}...) exceeds "
            f"{limits.max_decimal_exponent} (ParseLimits.max_decimal_exponent)"
        )
    return Fraction(lit)


def _variable(idx_text: str, pos: int, limits: ParseLimits) -> int:
    if len(idx_text) > 9 or int(idx_text) > limits.max_variables:
        raise PolynomialParseError(
            f"variable index x{idx_text[:12]} at position {pos} exceeds {limits.max_variables} "
            "(ParseLimits.max_variables)"
        )
    idx = int(idx_text)
    if idx < 1:
        raise PolynomialParseError(f"variable index {idx} at position {pos}: variables are numbered from 1")
    return idx


def _tokenize(text: str, limits: ParseLimits) -> list[tuple[str, object, int]]:
    tokens: list[tuple[str, object, int]] = []
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] in " \t\r\n":
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos] == "x":
                if re.fullmatch(r"x[ \t]*(\([ \t]*[0-9]*[ \t]*)?[ \t\r\n]*", text[pos:]):
                    raise TruncatedPolynomialError(
                        f"the text ends in a bare variable stem {text[pos:]!r} at position {pos}: it looks truncated"
                    )
                raise PolynomialParseError(
                    f"bad variable at position {pos}: {text[pos : pos + 12]!r}; write x1..xn or x(1)..x(n)"
                )
            raise PolynomialParseError(
                f"unexpected character {text[pos]!r} at position {pos} (context "
                f"{text[max(0, pos - 10) : pos + 10]!r}); a polynomial uses numbers, x1..xn or x(1)..x(n), "
                "+ - * / ^ ** and parentheses"
            )
        start = m.start() + (len(m.group(0)) - len(m.group(0).lstrip()))
        if m.group("num") is not None:
            tokens.append(("num", m.group("num"), start))
        elif m.group("var") is not None:
            tokens.append(("var", _variable(m.group("pidx") or m.group("idx"), start, limits), start))
        elif m.group("pow") is not None:
            tokens.append(("pow", "^", start))
        else:
            tokens.append(("op", m.group("op"), start))
        pos = m.end()
    return tokens


Terms = dict[Exponent, Fraction]


def _bits(a: Terms) -> int:
    return max((max(c.numerator.bit_length(), c.denominator.bit_length()) for c in a.values()), default=0)


def _degree(a: Terms) -> int:
    return max((sum(e) for e in a), default=0)


class _Parser:
    """Recursive descent over the tokens; values are plain `{exponent: Fraction}` dicts. Recursion happens only at
    parentheses, whose depth is capped, and every product is costed before it is computed."""

    def __init__(self, text: str, tokens: list, nvars: int, limits: ParseLimits):
        self.text, self.tokens, self.i, self.n, self.limits = text, tokens, 0, nvars, limits
        self.zero = (0,) * nvars
        self.work = 0
        self.depth = 0

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

    def limit(self, what: str, value: int, bound: int, field: str, pos: int):
        if value > bound:
            raise PolynomialParseError(
                f"{what} at position {pos} would be {value:,}, over the limit {bound:,} (ParseLimits.{field})"
            )

    def cost(self, a: Terms, b: Terms, pos: int):
        """Refuse a product a * b that would exceed the work, degree, term-count or coefficient-size limits. Its
        terms are at most len(a) * len(b), and at most the C(v + D, v) monomials of degree <= D in its v variables."""
        lim = self.limits
        self.work += len(a) * len(b)
        self.limit("the parse's term-by-term products", self.work, lim.max_work, "max_work", pos)
        degree = _degree(a) + _degree(b)
        self.limit("the total degree", degree, lim.max_degree, "max_degree", pos)
        v = sum(any(e[i] for e in a) or any(e[i] for e in b) for i in range(self.n))
        bound = min(len(a) * len(b), math.comb(v + degree, v))
        self.limit("the number of terms of a product", bound, lim.max_terms, "max_terms", pos)
        self.limit("the coefficient size in bits", _bits(a) + _bits(b), lim.max_coefficient_bits,
                   "max_coefficient_bits", pos)  # fmt: skip

    def mul(self, a: Terms, b: Terms, pos: int) -> Terms:
        self.cost(a, b, pos)
        out: Terms = {}
        for ea, ca in a.items():
            for eb, cb in b.items():
                k = tuple(x + y for x, y in zip(ea, eb))
                v = out.get(k, 0) + ca * cb
                if v:
                    out[k] = v
                else:
                    out.pop(k, None)
        self.limit("the number of terms", len(out), self.limits.max_terms, "max_terms", pos)
        return out

    def expr(self) -> Terms:
        acc: Terms = {}
        sign = 1
        while True:
            pos = self.peek()[2]
            for e, c in self.term().items():
                v = acc.get(e, 0) + sign * c
                if v:
                    acc[e] = v
                else:
                    acc.pop(e, None)
            self.limit("the number of terms", len(acc), self.limits.max_terms, "max_terms", pos)
            kind, val, _ = self.peek()
            if kind == "op" and val in "+-":
                self.take()
                sign = 1 if val == "+" else -1
            else:
                return acc

    def term(self) -> Terms:
        out = self.unary()
        while self.peek()[0] == "op" and self.peek()[1] in "*/":
            _, op, pos = self.take()
            rhs = self.unary()
            if op == "*":
                out = self.mul(out, rhs, pos)
            else:
                if any(e != self.zero for e in rhs):
                    raise PolynomialParseError(f"division by a non-constant at position {pos}")
                if not rhs:
                    raise PolynomialParseError(f"division by zero at position {pos}")
                inv = 1 / rhs[self.zero]
                self.limit("the coefficient size in bits", _bits(out) + _bits({self.zero: inv}),
                           self.limits.max_coefficient_bits, "max_coefficient_bits", pos)  # fmt: skip
                out = {e: c * inv for e, c in out.items()}
        return out

    def unary(self) -> Terms:
        negative = False
        while self.peek()[0] == "op" and self.peek()[1] in "+-":  # a loop, not recursion: `- - - ... x1` is cheap
            negative ^= self.take()[1] == "-"
        inner = self.power()
        return {e: -c for e, c in inner.items()} if negative else inner

    def power(self) -> Terms:
        base = self.atom()
        if self.peek()[0] != "pow":
            return base
        self.take()
        kind, val, pos = self.peek()
        if kind != "num":
            self.fail("an integer exponent")
        self.take()
        if not val.isdigit():
            raise PolynomialParseError(f"the exponent at position {pos} must be a non-negative integer, got {val!r}")
        lim = self.limits
        if len(val) > 9 or int(val) > lim.max_power:
            raise PolynomialParseError(f"exponent {val[:12]} at position {pos} exceeds {lim.max_power} "
                                       "(ParseLimits.max_power)")  # fmt: skip
        k = int(val)
        if self.peek()[0] == "pow":
            raise PolynomialParseError(f"chained powers at position {self.peek()[2]} are ambiguous; use parentheses")
        self.limit("the total degree", _degree(base) * k, lim.max_degree, "max_degree", pos)
        self.limit("the coefficient size in bits", _bits(base) * k, lim.max_coefficient_bits,
                   "max_coefficient_bits", pos)  # fmt: skip
        if len(base) == 1:
            ((e, c),) = base.items()
            return {tuple(k * x for x in e): c**k}
        if k > 1:  # a power of m terms has at most C(m + k - 1, k) terms: refuse before expanding
            self.limit(f"the number of terms of a power of {len(base)} terms", math.comb(len(base) + k - 1, k),
                       lim.max_terms, "max_terms", pos)  # fmt: skip
        result: Terms = {self.zero: Fraction(1)}
        for _ in range(k):
            result = self.mul(result, base, pos)
        return result

    def atom(self) -> Terms:
        kind, val, pos = self.peek()
        if kind == "num":
            self.take()
            c = _number(val, pos, self.limits)
            return {self.zero: c} if c else {}
        if kind == "var":
            self.take()
            e = [0] * self.n
            e[val - 1] = 1
            return {tuple(e): Fraction(1)}
        if kind == "op" and val == "(":
            self.take()
            self.depth += 1
            self.limit("the nesting depth of parentheses", self.depth, self.limits.max_nesting, "max_nesting", pos)
            inner = self.expr()
            kind, val, _ = self.peek()
            if (kind, val) != ("op", ")"):
                self.fail("')'")
            self.take()
            self.depth -= 1
            return inner
        self.fail("a number, a variable or '('")


_FLAT_SPLIT = re.compile(r"(?<![eE])(?=[+-])")
_FLAT_NUM = re.compile(_NUM)
_FLAT_VAR = re.compile(r"x([0-9]+)(?:\^([0-9]+))?")
_PAREN_VAR = re.compile(r"x\(([0-9]+)\)")


def _parse_flat(text: str, nvars: int | None, limits: ParseLimits) -> Polynomial | None:
    """Fast path for expanded text (a flat sum of `coef*var^k*...` terms, the released file's only shape).
    Returns None on anything unusual or over a limit, and the general parser then produces the result or a precise
    error."""
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
        coef, powers, degree = Fraction(sign), [], 0
        for factor in body.split("*"):
            if _FLAT_NUM.fullmatch(factor):
                try:
                    coef *= _number(factor, 0, limits)
                except PolynomialParseError:
                    return None
                continue
            m = _FLAT_VAR.fullmatch(factor)
            if not m or len(m.group(1)) > 9 or (m.group(2) and len(m.group(2)) > 9):
                return None
            idx, k = int(m.group(1)), int(m.group(2) or 1)
            if idx < 1 or idx > limits.max_variables or k > limits.max_power:
                return None
            degree += k
            powers.append((idx - 1, k))
            width = max(width, idx)
        if degree > limits.max_degree or max(coef.numerator.bit_length(), coef.denominator.bit_length()) > (
            limits.max_coefficient_bits
        ):
            return None
        raw.append((powers, coef))
    if not raw or len(raw) > limits.max_terms or (nvars is not None and nvars < width):
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


def parse_polynomial(text: str, nvars: int | None = None, limits: ParseLimits | None = None) -> Polynomial:
    """Parse SoS-1K polynomial text exactly, at a bounded cost.

    Args:
        text (`str`): e.g. `"3.2*x1^2*x2^2 - 4.9e-3*x3 + 1"` or `"-9.04+0.548*x(1)+492.9*x(1)^2"`.
        nvars (`int`, *optional*): number of variables; defaults to the largest index that occurs.
        limits (`ParseLimits`, *optional*): the cost bounds; defaults to `ParseLimits()`.

    Raises:
        TruncatedPolynomialError: the text has exactly 32,767 characters (the spreadsheet cell limit that cut six
            rows of the released file), or ends in an operator or a bare variable stem.
        PolynomialParseError: anything else that is not a polynomial, or exceeds a limit, with the position.

    Example:

        >>> str(parse_polynomial("(x1 - x2)^2 + 1"))
        '1 + x1^2 - 2*x1*x2 + x2^2'
    """
    limits = limits or _DEFAULT_LIMITS
    if not isinstance(text, str):
        raise PolynomialParseError(f"expected polynomial text, got {type(text).__name__}")
    if len(text) > limits.max_chars:
        raise PolynomialParseError(
            f"the text has {len(text):,} characters, over the limit {limits.max_chars:,} (ParseLimits.max_chars)"
        )
    if not text.isascii():
        pos = next(i for i, ch in enumerate(text) if ord(ch) > 127)
        raise PolynomialParseError(
            f"non-ASCII character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos}: write digits 0-9, "
            "x1..xn or x(1)..x(n), + - * / ^ ** and parentheses in ASCII"
        )
    if nvars is not None and not 0 <= nvars <= limits.max_variables:
        raise PolynomialParseError(
            f"`nvars`={nvars} must lie in [0, {limits.max_variables}] (ParseLimits.max_variables)"
        )
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
    fast = _parse_flat(text, nvars, limits)
    if fast is not None:
        return fast
    tokens = _tokenize(text, limits)
    width = max((v for k, v, _ in tokens if k == "var"), default=0)
    if nvars is not None and nvars < width:
        raise PolynomialParseError(f"x{width} occurs but `nvars`={nvars}")
    n = width if nvars is None else nvars
    parser = _Parser(text, tokens, n, limits)
    terms = parser.expr()
    if parser.i != len(tokens):
        pos = parser.peek()[2]
        raise PolynomialParseError(f"unexpected {text[pos : pos + 10]!r} at position {pos} (a missing operator?)")
    return Polynomial._from_clean(terms, n)
