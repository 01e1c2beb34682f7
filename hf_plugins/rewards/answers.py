"""Final-answer extraction and exact grading, one extractor for evaluation (`hf_plugins.evaluation`) and for the
reward functions (`hf_plugins.rewards.math`).

Which answer a text gives (`extract_answer`), first rule that applies:

1. **The last final-answer marker**, `\\boxed{...}` or `#### ...`, whichever starts later in the text. Of several
   boxes the last one counts. A box holds the answer exactly (balanced braces, so `\\boxed{{1}}` is 1): its whole
   content must be one number, optionally with words around it (`\\boxed{5 \\text{ apples}}`) or after an `=`
   (`\\boxed{x = 5}` is 5); `\\boxed{3 + 4}` or `\\boxed{5 or 6}` hold no number. A `####` line's answer is the
   number that starts it (`#### 12 apples` is 12), or follows its last `=`. If that last marker holds no single
   number, or is a box the text never closes (a truncated answer), the text has **no** answer: the grader does
   not fall back to an earlier marker or number. `#### Step 1` (`####` before a word) is a markdown heading, no
   marker.
2. The last "answer is / answer: / answer =" phrase followed by a number.
3. The last number in the text.

Rules 1 ("boxed", "hash") are the *marked* answers that strict accuracy counts; rules 2-3 are lenient.

Numbers: a sign (also the Unicode minus), thousands separators (`1,000`, `1{,}000`, `1\\,000`, a thin space),
decimals (`.5`, `2.50`), scientific notation (`2.5e3`, `2.5 \\times 10^{3}`), fractions `3/4`, `3 / 4`,
`\\frac{3}{4}`, `\\dfrac34`, `-\\frac{3}{4}`; currency, `%`, degrees and LaTeX wrappers (`$...$`, `\\(...\\)`,
`\\text{}`, `\\mathrm{}`, `\\left( \\right)`) are dropped. A mixed number such as `1\\frac{1}{2}` is not read as one
number. Values are compared exactly, as fractions. When the marked answer or the reference is LaTeX that is not
a plain number (`\\sqrt{2}`, `\\frac{\\pi}{2}`), the optional `math-verify` package (`pip install
hf-plugins[math]`) decides if it is installed; without it such answers count as wrong, never as right.
"""

from __future__ import annotations

import math
import numbers
import re
import threading
from fractions import Fraction
from functools import cache
from typing import NamedTuple


__all__ = [
    "MARKED_RULES",
    "NUMBER_PATTERN",
    "RULES",
    "AnswerMatch",
    "answer_matches",
    "as_reference",
    "extract_answer",
    "extract_final_number",
    "final_markers",
    "math_verify_available",
    "numbers_equal",
    "parse_number",
]

RULES = ("boxed", "hash", "answer_is", "last_number")
MARKED_RULES = ("boxed", "hash")
_MAX_EXPONENT = 400  # |e| beyond this is not an answer, and would make Fraction arithmetic unbounded
_MAX_DIGITS = 400


class AnswerMatch(NamedTuple):
    """The answer of a text: `value` (None when there is none), the `rule` that found it ("boxed", "hash",
    "answer_is", "last_number", or "none"), and the answer's `text` (a box's content, the rest of a `####` line)."""

    value: Fraction | None
    rule: str
    text: str = ""


# ------------------------------------------------------------------------------------------------ normalisation
_MINUS = {"\u2212": "-", "\u2012": "-", "\ufe63": "-", "\uff0d": "-"}
_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,;: !]|~|\{,\}|[\u2009\u202f\u00a0])(?=\d{3}(?!\d))")
_SPACING = re.compile(r"\\(?:[,;:! ]|quad|qquad)")
_SIGN_BEFORE_FRAC = re.compile(r"(^|[^\w)\]}\s])(\s*)([-+])\s+(?=\\[dt]?frac)")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname|displaystyle)\s*")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*\.?")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_FRAC_ARG = r"(\{\s*[-+]?[\d.,]+\s*\}|\d)"
_FRAC = re.compile(r"\\[dt]?frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)
_TIMES_TEN = re.compile(
    r"(\d)\s*(?:\\times|\\cdot|×|\*)\s*10\s*\^\s*(?:\{\s*([-+]?\d+)\s*\}|([-+]?\d+))"
)  # 2.5 \times 10^{3} -> 2.5e3


def _frac(m: re.Match) -> str:
    """`\\frac{a}{b}` -> `a/b`; after a digit -> ` a/b`, so that a mixed number `1\\frac{1}{2}` is not 11/2."""
    after_digit = m.start() > 0 and m.string[m.start() - 1].isdigit()
    return (" " if after_digit else "") + m.group(1).strip("{} ") + "/" + m.group(2).strip("{} ")


def _normalise(text: str) -> str:
    for k, v in _MINUS.items():
        text = text.replace(k, v)
    text = _THOUSANDS.sub(",", text)
    text = _SPACING.sub(" ", text)
    text = _DEGREES.sub("", text)
    text = _SIZING.sub("", text)
    text = _WRAPPERS.sub("", text)
    text = _SIGN_BEFORE_FRAC.sub(r"\1\2\3", text)  # "= - \frac{3}{4}" -> "= -\frac{3}{4}"
    text = _FRAC.sub(_frac, text)
    text = _TIMES_TEN.sub(lambda m: m.group(1) + "e" + (m.group(2) or m.group(3)), text)
    text = text.replace("\\$", " ").replace("\\%", " ").replace("\\(", " ").replace("\\)", " ")
    text = text.replace("\\[", " ").replace("\\]", " ")
    return text.replace("$", " ").replace("%", " ")


# A number token. Unsigned start: not inside a word or after a digit/point. A sign only where it cannot be a binary
# minus (not after a digit, letter, closing bracket or point).
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_TOKEN = (
    r"(?:(?<![\w)\]}.])[-+])?(?<![\w.])(?:" + _UNSIGNED + r")(?:[eE][-+]?\d+)?"
    r"(?:\s*/\s*[-+]?(?:" + _UNSIGNED + r")(?:[eE][-+]?\d+)?)?"
)
_TOKEN_RE = re.compile(_TOKEN)
NUMBER_PATTERN = _TOKEN  # a regular expression for one number token (after LaTeX normalisation)
_CONTINUES = re.compile(r"\s*(?:[-+*/^×÷=<>]|\\(?:times|cdot|div|pm))")  # an expression goes on after the number


def _to_fraction(token: str) -> Fraction | None:
    token = re.sub(r"\s+", "", token).replace(",", "")
    num, _, den = token.partition("/")
    try:
        values = []
        for part in (num, den) if den else (num,):
            mantissa, _, exponent = part.lower().partition("e")
            if (exponent and abs(int(exponent)) > _MAX_EXPONENT) or len(mantissa) > _MAX_DIGITS:
                return None
            values.append(Fraction(part))
        return values[0] / values[1] if den else values[0]
    except (ValueError, ZeroDivisionError):
        return None


_WORDS = r"[A-Za-z][A-Za-z\s'.:]*"
_ALTERNATIVES = re.compile(r"\b(?:or|and)\b", re.IGNORECASE)  # "5 or six" states no single answer
_SINGLE = re.compile(r"\s*(?:" + _WORDS + r")?\s*(" + _TOKEN + r")\s*(?:" + _WORDS + r")?[\s.]*")


def _strip_brackets(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] + text[-1] in ("{}", "()", "[]") and _balanced(text[1:-1], text[0], text[-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str, open_: str, close: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == open_) - (ch == close)
        if depth < 0:
            return False
    return depth == 0


def parse_number(text: str) -> Fraction | None:
    """The value of `text` if it states exactly one number (`"1,234"`, `"-3.5"`, `"3 / 4"`, `"-\\frac{3}{4}"`,
    `"$12 apples"`, `"x = 5"`), else None (`"3 + 4"`, `"5 or 6"`, `"\\sqrt{2}"`)."""
    text = _normalise(str(text))
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    if "\\" in text:  # a LaTeX command other than the wrappers: not a plain number
        return None
    text = _strip_brackets(text.replace("{", " ").replace("}", " ") if "{" in text else text)
    m = _SINGLE.fullmatch(text)
    if m is None or _ALTERNATIVES.search(text):
        return None
    return _to_fraction(m.group(1))


def _leading_number(text: str) -> Fraction | None:
    """The number that starts `text` (after its last `=`), unless an expression continues after it."""
    text = _normalise(text)
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    m = re.match(r"[\s*({]*(" + _TOKEN + r")", text)
    if m is None or _CONTINUES.match(text, m.end()):
        return None
    return _to_fraction(m.group(1))


# ------------------------------------------------------------------------------------------------ markers
class _Marker(NamedTuple):
    rule: str  # "boxed" or "hash"
    start: int
    end: int  # index after the marker's answer (after the closing brace; end of the line for ####)
    content: str | None  # None: a box that never closes


_MARKER_RE = re.compile(r"\\boxed\s*\{|#{4,}(?![ \t]*[A-Za-z])")  # "#### Step 1" is a markdown heading


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each `{` -> index of its matching `}` (unmatched braces are absent); one pass."""
    stack, closing = [], {}
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    return closing


def final_markers(text: str) -> list[_Marker]:
    """Every `\\boxed{...}` and `####` marker of `text`, in order."""
    out, closing = [], None
    for m in _MARKER_RE.finditer(text):
        if m.group().startswith("#"):
            line_end = text.find("\n", m.end())
            line_end = len(text) if line_end < 0 else line_end
            out.append(_Marker("hash", m.start(), line_end, text[m.end() : line_end]))
            continue
        closing = _closing_braces(text) if closing is None else closing
        close = closing.get(m.end() - 1)
        if close is None:
            out.append(_Marker("boxed", m.start(), len(text), None))
        else:
            out.append(_Marker("boxed", m.start(), close + 1, text[m.end() : close]))
    return out


_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|was|:|=)[\s:*]*", re.IGNORECASE)


def extract_answer(text: str) -> AnswerMatch:
    """The final answer of a generation and the rule that found it (see the module docstring for the rules)."""
    if not text:
        return AnswerMatch(None, "none")
    markers = final_markers(text)
    if markers:
        last = max(markers, key=lambda mk: mk.start)
        if last.content is None:  # a box that never closes: the answer was cut off
            return AnswerMatch(None, last.rule)
        value = parse_number(last.content) if last.rule == "boxed" else _leading_number(last.content)
        return AnswerMatch(value, last.rule, last.content.strip())
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        value = _leading_number(text[m.end() :].split("\n", 1)[0])
        if value is not None:
            return AnswerMatch(value, "answer_is", text[m.end() :].split("\n", 1)[0].strip())
    tokens = list(_TOKEN_RE.finditer(_normalise(text)))
    for tok in reversed(tokens):
        value = _to_fraction(tok.group())
        if value is not None:
            return AnswerMatch(value, "last_number", tok.group())
    return AnswerMatch(None, "none")


# ------------------------------------------------------------------------------------------------ grading
@cache
def math_verify_available() -> bool:
    """True when the optional `math-verify` package is installed (`pip install hf-plugins[math]`)."""
    import importlib.util

    return importlib.util.find_spec("math_verify") is not None


def _math_verify_equal(answer_latex: str, reference_latex: str) -> bool:
    from math_verify import parse, verify

    # math-verify times out through signal.alarm, which works only in the main thread
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_text = reference_latex if ("$" in reference_latex or "\\boxed" in reference_latex) else f"${reference_latex}$"
    gold = parse(gold_text, parsing_timeout=timeout)
    pred = parse(f"\\boxed{{{answer_latex}}}", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def as_reference(reference) -> Fraction | str | None:
    """A reference answer for `answer_matches`: its value when it states a number (`12`, `"3/4"`, `"1,000"`,
    `"#### 7"`, `"\\boxed{5}"`), else its text (LaTeX such as `"\\sqrt{2}"`, which only `math-verify` can grade),
    or None when it is empty. The lenient rules are not applied: `"\\sqrt{2}"` is not the number 2."""
    if reference is None or isinstance(reference, Fraction):
        return reference
    if isinstance(reference, bool) or not isinstance(reference, str | numbers.Number):
        raise TypeError(f"a reference answer must be a number or a string, got {reference!r}")
    if isinstance(reference, numbers.Real) and not math.isfinite(reference):
        raise ValueError(f"a reference answer must be finite, got {reference!r} (a missing value in the data set?)")
    text = str(reference).strip()
    if not text:
        return None
    value = parse_number(text)
    if value is not None:
        return value
    found = extract_answer(text)
    if found.rule in MARKED_RULES:
        return found.value if found.value is not None else (found.text or None)
    return text


def answer_matches(
    match: AnswerMatch, reference, *, strict: bool = False, use_math_verify: bool | None = None
) -> bool:
    """True if the extracted `match` equals `reference` (see `as_reference`). Plain numbers on both sides compare
    exactly as fractions. A marked answer or a reference that is LaTeX but no plain number goes to `math-verify`
    when it is installed (`use_math_verify=None`: when available); otherwise it is wrong. `strict` also demands a
    marked answer (`\\boxed{}` or `####`)."""
    if strict and match.rule not in MARKED_RULES:
        return False
    want = as_reference(reference)
    if want is None:
        return False
    if match.value is not None and isinstance(want, Fraction):
        return match.value == want
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    if not (use_math_verify and match.rule in MARKED_RULES and match.text):
        return False
    return _math_verify_equal(match.text, str(want))


def numbers_equal(prediction: str, answer) -> bool:
    """True if the final answer of `prediction` (`extract_answer`) equals `answer`."""
    return answer_matches(extract_answer(prediction), answer)


def extract_final_number(text: str) -> Fraction | None:
    """The value of `extract_answer(text)` (None if the text has no numeric answer)."""
    return extract_answer(text).value
