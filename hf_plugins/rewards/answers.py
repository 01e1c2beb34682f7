"""Final-answer extraction from generated text, and exact-match scoring.

`extract_final_number` (used by `hf_plugins.evaluation`), most explicit first: the last `#### <number>` line
(GSM8K style), then the last `\\boxed{...}`, then an "answer is <number>" phrase, then the last number in the
text. Numbers may carry thousands separators (`1,234`), a sign, a decimal part, or a unit/currency around them
(`$12`, `12 apples`).

`extract_answer` (used by the reward functions, `hf_plugins.rewards.math`) follows the SRLM spec's order
(`\\boxed{}` first, then `####`, then "answer is", then the last number), also reads `\\frac{a}{b}`, and
returns which rule matched, for logging and for strict vs lenient accuracy.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import NamedTuple


__all__ = ["AnswerMatch", "extract_answer", "extract_final_number", "numbers_equal", "parse_number"]

_NUM = r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?(?:/\d+)?"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*\$?\s*(" + _NUM + ")")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*\$?\s*(" + _NUM + ")", re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
    """`"1,234"` -> 1234, `"-3.5"` -> -7/2, `"3/4"` -> 3/4; None if `text` is no number."""
    text = text.strip().replace(",", "").lstrip("+")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    begin = i
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[begin : i - 1] if depth == 0 else None


def extract_final_number(text: str) -> Fraction | None:
    """The final numeric answer of `text`, or None if there is none."""
    if not text:
        return None
    hashes = _HASH_RE.findall(text)
    if hashes:
        return parse_number(hashes[-1])
    boxed = _last_boxed(text)
    if boxed is not None:
        nums = _NUM_RE.findall(boxed)
        if nums:
            return parse_number(nums[-1])
    stated = _ANSWER_IS_RE.findall(text)
    if stated:
        return parse_number(stated[-1])
    nums = _NUM_RE.findall(text)
    return parse_number(nums[-1]) if nums else None


def numbers_equal(prediction: str, answer: float | str | Fraction) -> bool:
    """True if the final number extracted from `prediction` equals `answer` exactly."""
    got = extract_final_number(prediction)
    want = answer if isinstance(answer, Fraction) else parse_number(str(answer))
    return got is not None and want is not None and got == want


_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(" + _NUM + r")\s*\}\s*\{\s*(" + _NUM + r")\s*\}")

# Rules of `extract_answer`, most explicit first. "boxed" and "hash" are the strict (marked) ones.
RULES = ("boxed", "hash", "answer_is", "last_number")
STRICT_RULES = ("boxed", "hash")


class AnswerMatch(NamedTuple):
    """An extracted answer: `value` (None if nothing was found) and the `rule` that matched (or "none")."""

    value: Fraction | None
    rule: str


def _number_in(fragment: str) -> Fraction | None:
    frac = _FRAC_RE.findall(fragment)
    if frac:
        num, den = parse_number(frac[-1][0]), parse_number(frac[-1][1])
        if num is not None and den:
            return num / den
    nums = _NUM_RE.findall(fragment)
    return parse_number(nums[-1]) if nums else None


def extract_answer(text: str) -> AnswerMatch:
    """The final answer of a generation and the rule that found it.

    Order: the last `\\boxed{...}` (balanced braces; `\\frac{a}{b}` inside is a/b), else the last `#### ...`,
    else the last "answer is/: ..." phrase, else the last number anywhere. Thousands separators, currency and
    units around the number, a trailing period, signs, decimals and `a/b` are handled. Returns
    `AnswerMatch(None, "none")` when there is no number.
    """
    if not text:
        return AnswerMatch(None, "none")
    boxed = _last_boxed(text)
    if boxed is not None:
        value = _number_in(boxed)
        if value is not None:
            return AnswerMatch(value, "boxed")
    hashes = _HASH_RE.findall(text)
    if hashes:
        return AnswerMatch(parse_number(hashes[-1]), "hash")
    stated = _ANSWER_IS_RE.findall(text)
    if stated:
        return AnswerMatch(parse_number(stated[-1]), "answer_is")
    value = _number_in(text)
    return AnswerMatch(value, "last_number") if value is not None else AnswerMatch(None, "none")
