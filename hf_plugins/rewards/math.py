"""Verifiable reward functions for math word problems, in TRL's reward-function protocol.

Each function is `fn(completions, **kwargs) -> list[float]` and accepts (and ignores) the other keyword
arguments GRPOTrainer passes (`prompts`, `completion_ids`, `trainer_state`, dataset columns, ...). Completions
may be strings or conversational (`[{"role": "assistant", "content": ...}]`). Answers are read with
`hf_plugins.rewards.answers.extract_answer`, the extractor `hf_plugins.evaluation` uses too, and graded by
`answer_matches` (exact fractions; `math-verify` for LaTeX that is not a plain number, when installed).

- `correctness_reward`: 1.0 if the extracted answer equals the reference, else 0.0. A completion without an
  answer gets 0.0, never None (None would silently drop it from its GRPO group).
- `format_reward`: 1.0 if exactly one final-answer marker (`#### n` or `\\boxed{n}`) is present, it holds a
  number, and nothing but whitespace or a period follows it.
- Overlong completions: use TRL's `trl.rewards.get_soft_overlong_punishment(max_completion_len,
  soft_punish_cache)` (DAPO, arXiv 2503.14476, Eq. 13); `length_penalty` is its deprecated alias.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

from .answers import (
    MARKED_RULES,
    NUMBER_PATTERN,
    answer_matches,
    as_reference,
    extract_answer,
    final_markers,
    parse_number,
)


__all__ = [
    "completion_text",
    "correctness_reward",
    "format_reward",
    "is_correct",
    "length_penalty",
    "reference_answer",
]

_TRAILER_RE = re.compile(r"[\s.!$]*")  # what may follow the final answer: whitespace, a period, a closing $
_HASH_LINE_RE = re.compile(r"[\s$]*" + NUMBER_PATTERN + r"[\s.!$]*")


def completion_text(completion) -> str:
    """The text of a plain or conversational completion (the last message's content); `TypeError` for anything
    else (a number or None would otherwise read as an empty completion and silently score 0)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, list | tuple):
        return completion_text(completion[-1]) if completion else ""
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def _completions(completions) -> list:
    if isinstance(completions, str) or not isinstance(completions, Sequence):
        raise TypeError(f"`completions` must be a list (one entry per completion), got {type(completions).__name__}")
    return completions


def reference_answer(answer=None, solution: str | None = None):
    """The reference from an `answer` column (`as_reference`: a number, `Fraction` or string such as `"3/4"` or
    `"\\sqrt{2}"`) or else from the final answer of a worked `solution` text; None if there is none."""
    if answer is not None:
        return as_reference(answer)
    if solution is not None:
        found = extract_answer(solution)
        if found.value is not None:
            return found.value
        return (found.text or None) if found.rule in MARKED_RULES else None
    return None


def is_correct(text: str, answer=None, solution: str | None = None, strict: bool = False) -> bool:
    """True if the final answer of `text` equals the reference; `strict` also demands a `####` or `\\boxed{}`."""
    want = reference_answer(answer, solution)
    return want is not None and answer_matches(extract_answer(text), want, strict=strict)


def _column(kwargs: dict, name: str, n: int) -> list:
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"reward column `{name}` must be a list (one value per completion), got {values!r}")
    if len(values) != n:
        raise ValueError(f"reward column `{name}` has {len(values)} values for {n} completions")
    return list(values)


def correctness_reward(
    completions: list, answer: list | None = None, solution: list | None = None, **kwargs
) -> list[float]:
    """1.0 for an exactly correct final answer, else 0.0. The reference comes from the dataset column `answer`
    (preferred) or `solution` (a worked solution whose final answer is extracted)."""
    n = len(_completions(completions))
    if answer is None and solution is None:
        raise ValueError(
            "correctness_reward needs an `answer` or `solution` column in the training dataset (GRPOTrainer passes "
            "every extra dataset column to the reward functions)"
        )
    answers = _column({"answer": answer}, "answer", n)
    solutions = _column({"solution": solution}, "solution", n)
    return [1.0 if is_correct(completion_text(c), a, s) else 0.0 for c, a, s in zip(completions, answers, solutions)]


def _marked_answer_comes_last(text: str) -> bool:
    markers = final_markers(text)
    if len(markers) != 1 or markers[0].content is None:
        return False
    marker = markers[0]
    if marker.rule == "hash":
        return bool(_HASH_LINE_RE.fullmatch(marker.content)) and not text[marker.end :].strip()
    return parse_number(marker.content) is not None and bool(_TRAILER_RE.fullmatch(text[marker.end :]))


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 if the completion has exactly one final-answer marker (`####` or `\\boxed{}`), it holds a number, and
    nothing but whitespace or a period follows it; else 0.0."""
    return [1.0 if _marked_answer_comes_last(completion_text(c)) else 0.0 for c in _completions(completions)]


def length_penalty(max_length: int, cache: int):
    """Deprecated: use `trl.rewards.get_soft_overlong_punishment(max_completion_len=max_length,
    soft_punish_cache=cache)`, which this returns (DAPO's soft overlong punishment, arXiv 2503.14476, Eq. 13)."""
    warnings.warn(
        "hf_plugins.rewards.math.length_penalty is deprecated: use trl.rewards.get_soft_overlong_punishment("
        "max_completion_len, soft_punish_cache), which it now returns",
        FutureWarning,
        stacklevel=2,
    )
    if not 0 <= cache <= max_length or max_length < 1:
        raise ValueError(
            f"need 0 <= `cache` <= `max_length` and max_length >= 1, got cache={cache}, max_length={max_length}"
        )
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(max_completion_len=max_length, soft_punish_cache=cache)
