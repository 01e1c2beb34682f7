"""Verifiable reward functions for math word problems, in TRL's reward-function protocol.

Each function is `fn(completions, **kwargs) -> list[float]` and accepts (and ignores) the other keyword
arguments GRPOTrainer passes (`prompts`, `completion_ids`, `trainer_state`, dataset columns, ...). Completions
may be strings or conversational (`[{"role": "assistant", "content": ...}]`). Answers are extracted with
`hf_plugins.rewards.answers.extract_answer`; no `math_verify` is needed.

- `correctness_reward`: 1.0 if the extracted answer equals the reference exactly (as a fraction), else 0.0.
  A completion without a number gets 0.0, never None (None would silently drop it from its GRPO group).
- `format_reward`: 1.0 if exactly one final-answer marker (`#### n` or `\\boxed{n}`) is present and it comes last.
- `length_penalty(max_length, cache)`: DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from .answers import STRICT_RULES, extract_answer, parse_number


__all__ = [
    "completion_text",
    "correctness_reward",
    "format_reward",
    "is_correct",
    "length_penalty",
    "reference_answer",
]

_MARKER_RE = re.compile(r"####|\\boxed\s*\{")
_TRAILER_RE = re.compile(r"^[\s.!$]*$")  # what may follow the final answer: whitespace, a period, a closing $


def completion_text(completion) -> str:
    """The text of a plain or conversational completion (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return ""


def reference_answer(answer=None, solution: str | None = None) -> Fraction | None:
    """The reference value from an `answer` column (number or string) or a worked `solution` text."""
    if answer is not None:
        if isinstance(answer, Fraction):
            return answer
        value = parse_number(str(answer))
        if value is not None:
            return value
        return extract_answer(str(answer)).value
    if solution is not None:
        return extract_answer(solution).value
    return None


def is_correct(text: str, answer=None, solution: str | None = None, strict: bool = False) -> bool:
    """True if the final answer of `text` equals the reference; `strict` also demands a `####` or `\\boxed{}`."""
    got = extract_answer(text)
    want = reference_answer(answer, solution)
    if got.value is None or want is None:
        return False
    return got.value == want and (not strict or got.rule in STRICT_RULES)


def _column(kwargs: dict, name: str, n: int) -> list:
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"reward column `{name}` has {len(values)} values for {n} completions")
    return list(values)


def correctness_reward(
    completions: list, answer: list | None = None, solution: list | None = None, **kwargs
) -> list[float]:
    """1.0 for an exactly correct final answer, else 0.0. The reference comes from the dataset column `answer`
    (preferred) or `solution` (a worked solution whose final answer is extracted)."""
    n = len(completions)
    if answer is None and solution is None:
        raise ValueError(
            "correctness_reward needs an `answer` or `solution` column in the training dataset (GRPOTrainer passes "
            "every extra dataset column to the reward functions)"
        )
    answers = _column({"answer": answer}, "answer", n)
    solutions = _column({"solution": solution}, "solution", n)
    return [1.0 if is_correct(completion_text(c), a, s) else 0.0 for c, a, s in zip(completions, answers, solutions)]


def _marked_answer_comes_last(text: str) -> bool:
    markers = _MARKER_RE.findall(text)
    if len(markers) != 1:
        return False
    match = extract_answer(text)
    if match.rule not in STRICT_RULES:
        return False
    if match.rule == "boxed":
        start = text.rfind("\\boxed")
        depth, i = 0, text.index("{", start)
        while i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                break
        return depth == 0 and bool(_TRAILER_RE.match(text[i:]))
    after = text[text.rfind("####") + 4 :]
    return bool(re.match(r"^\s*\$?\s*[-+]?[\d,]+(?:\.\d+)?(?:/\d+)?[\s.!$]*$", after))


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 if the completion has exactly one final-answer marker (`####` or `\\boxed{}`), it holds a number, and
    nothing but whitespace or a period follows it; else 0.0."""
    return [1.0 if _marked_answer_comes_last(completion_text(c)) else 0.0 for c in completions]


def length_penalty(max_length: int, cache: int):
    """DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13) over completion token counts: 0 up to
    `max_length - cache` tokens, then linear down to -1 at `max_length`, -1 beyond.

    Returns a reward function reading `completion_ids` (GRPOTrainer passes them)."""
    if not 0 < cache <= max_length:
        raise ValueError(f"need 0 < `cache` <= `max_length`, got cache={cache}, max_length={max_length}")
    free = max_length - cache

    def length_penalty_reward(completions: list, completion_ids: list | None = None, **kwargs) -> list[float]:
        if completion_ids is None:
            raise ValueError("length_penalty needs `completion_ids` (GRPOTrainer passes them)")
        out = []
        for ids in completion_ids:
            n = len(ids)
            out.append(0.0 if n <= free else (-1.0 if n > max_length else (free - n) / cache))
        return out

    return length_penalty_reward
