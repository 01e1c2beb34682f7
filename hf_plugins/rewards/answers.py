"""Final-answer extraction from generated text, and exact-match scoring.

Order of precedence, most explicit first: the last `#### <number>` line (GSM8K style), then the last
`\\boxed{...}`, then an "answer is <number>" phrase, then the last number in the text. Numbers may carry
thousands separators (`1,234`), a sign, a decimal part, or a unit/currency around them (`$12`, `12 apples`).
"""

from __future__ import annotations

import re
from fractions import Fraction


__all__ = ["extract_final_number", "numbers_equal", "parse_number"]

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


def numbers_equal(prediction: str, answer: int | float | str | Fraction) -> bool:
    """True if the final number extracted from `prediction` equals `answer` exactly."""
    got = extract_final_number(prediction)
    want = answer if isinstance(answer, Fraction) else parse_number(str(answer))
    return got is not None and want is not None and got == want
