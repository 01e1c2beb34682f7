"""Answer extraction and reward functions on a table of hand-written completions."""

from fractions import Fraction

import pytest

from hf_plugins.rewards.answers import extract_answer, extract_final_number, numbers_equal
from hf_plugins.rewards.math import (
    completion_text,
    correctness_reward,
    format_reward,
    is_correct,
    length_penalty,
    reference_answer,
)


# (completion, extracted value, rule, correct for answer, format reward)
TABLE = [
    ("So the total is \\boxed{1,234}.", Fraction(1234), "boxed", 1234, 1.0),
    ("3 + 4 = 7, then 7 - 14 = -7\n#### -7", Fraction(-7), "hash", -7, 1.0),
    ("The answer is 12 apples.", Fraction(12), "answer_is", 12, 0.0),
    ("She had 3, bought 5 more, then 8 in all", Fraction(8), "last_number", 8, 0.0),
    ("I am not sure.", None, "none", 5, 0.0),
    ("Half of it: \\boxed{\\frac{1}{2}}", Fraction(1, 2), "boxed", "1/2", 1.0),
    ("Total: $1,200.50\n#### $1,200.50", Fraction(2401, 2), "hash", "1200.505", 1.0),
    ("#### 12\nActually \\boxed{13}", Fraction(13), "boxed", 13, 0.0),  # two markers: format 0
    ("#### 12 but then I kept going about 40 apples", Fraction(12), "hash", 12, 0.0),  # marker not last
    ("\\boxed{7} and 8 more words", Fraction(7), "boxed", 7, 0.0),
    ("answer: 45%", Fraction(45), "answer_is", 45, 0.0),
    ("\\boxed{x}", None, "none", 0, 0.0),  # a box without a number and no number elsewhere
    ("-3.5 is it. \\boxed{-3.5}", Fraction(-7, 2), "boxed", -3.5, 1.0),
]


@pytest.mark.parametrize("text, value, rule, answer, fmt", TABLE)
def test_extract_answer_table(text, value, rule, answer, fmt):
    got = extract_answer(text)
    assert got.value == value and got.rule == rule
    want = reference_answer(answer)
    assert correctness_reward([text], answer=[answer]) == [1.0 if value is not None and value == want else 0.0]
    assert format_reward([text]) == [fmt]


def test_table_correctness_is_mostly_positive():
    """The table's fourth column is the intended answer: every row with a number is scored correct, except the
    `$1,200.50` row whose reference differs in the third decimal."""
    scores = correctness_reward([row[0] for row in TABLE], answer=[row[3] for row in TABLE])
    expected = [0.0 if row[1] is None or row[0].startswith("Total") else 1.0 for row in TABLE]
    assert scores == expected


def test_existing_evaluation_extractor_is_unchanged():
    """`extract_final_number` (used by hf_plugins.evaluation) keeps its order: `####` before `\\boxed{}`."""
    assert extract_final_number("#### 12\nActually \\boxed{13}") == 12
    assert extract_answer("#### 12\nActually \\boxed{13}").value == 13
    assert extract_final_number("The answer is 1,234 dollars.") == 1234
    assert numbers_equal("so #### 7", 7) and not numbers_equal("no number", 7)


def test_conversational_and_plain_completions():
    conv = [[{"role": "assistant", "content": "#### 9"}], [{"role": "assistant", "content": "#### 8"}]]
    assert completion_text(conv[0]) == "#### 9"
    assert correctness_reward(conv, answer=[9, 9]) == [1.0, 0.0]
    assert format_reward(conv) == [1.0, 1.0]


def test_reference_from_a_worked_solution():
    sol = "Ava starts with 3.\nShe buys 4 more: 3 + 4 = 7.\n#### 7"
    assert correctness_reward(["\\boxed{7}", "#### 3"], solution=[sol, sol]) == [1.0, 0.0]
    assert is_correct("The answer is 7", solution=sol) and not is_correct("The answer is 7", solution=sol, strict=True)


def test_no_answer_gives_zero_not_none():
    """None would drop the sample from its GRPO group silently (spec srlm.md, reward module)."""
    assert correctness_reward(["", "no digits here"], answer=[1, 2]) == [0.0, 0.0]


def test_reward_errors_are_clear():
    with pytest.raises(ValueError, match="answer. or .solution. column"):
        correctness_reward(["#### 1"])
    with pytest.raises(ValueError, match="has 1 values for 2 completions"):
        correctness_reward(["#### 1", "#### 2"], answer=[1])
    with pytest.raises(ValueError, match="cache"):
        length_penalty(10, 0)


def test_soft_overlong_penalty_matches_dapo_eq13():
    """Hand-computed: L_max=10, L_cache=4 -> 0 up to 6 tokens, (6 - n)/4 in (6, 10], -1 beyond 10."""
    fn = length_penalty(10, 4)
    lengths = [0, 6, 7, 8, 10, 11, 50]
    got = fn(["x"] * len(lengths), completion_ids=[[0] * n for n in lengths])
    assert got == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
