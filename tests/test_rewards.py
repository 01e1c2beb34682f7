"""Answer extraction, grading and reward functions: a table of completions with the careful grader's verdicts."""

import warnings
from fractions import Fraction

import pytest

from hf_plugins.evaluation import score_completions
from hf_plugins.rewards import answers
from hf_plugins.rewards.answers import extract_answer, extract_final_number, numbers_equal
from hf_plugins.rewards.math import (
    completion_text,
    correctness_reward,
    format_reward,
    is_correct,
    length_penalty,
    reference_answer,
)


MINUS = "\u2212"

# (completion, reference, verdict of a careful grader, verdict with math-verify if it differs). A grader must never
# reward a wrong answer; a LaTeX answer that is no plain number is wrong without math-verify, graded by it with.
GRADES = [
    # signs
    ("\\boxed{-\\frac{3}{4}}", "3/4", False, None),
    ("\\boxed{-\\frac{3}{4}}", "-3/4", True, None),
    ("\\boxed{- \\frac{3}{4}}", "-3/4", True, None),
    ("\\boxed{\\frac{-3}{4}}", "-0.75", True, None),
    (f"\\boxed{{{MINUS}7}}", 7, False, None),
    (f"\\boxed{{{MINUS}7}}", -7, True, None),
    ("3 + 4 = 7, then 7 - 14 = -7\n#### -7", -7, True, None),
    ("#### -7", 7, False, None),
    ("He had 12-5 = 7 left", 7, True, None),
    ("He had 12-5", -5, False, None),
    ("so x = -2", -2, True, None),
    ("\\boxed{+5}", 5, True, None),
    # decimals
    ("\\boxed{.5}", 5, False, None),
    ("\\boxed{.5}", "1/2", True, None),
    ("\\boxed{0.50}", 0.5, True, None),
    ("\\boxed{2.5}", 25, False, None),
    ("The answer is 5.", 5, True, None),
    ("It costs $12.50 in total", "12.5", True, None),
    ("\\boxed{12,5}", "12.5", False, None),  # a decimal comma is not read as a decimal point
    # thousands separators
    ("\\boxed{1{,}000}", 0, False, None),
    ("\\boxed{1{,}000}", 1000, True, None),
    ("\\boxed{1\\,000}", 0, False, None),
    ("\\boxed{1\\,000}", 1000, True, None),
    ("So the total is \\boxed{1,234}.", 1234, True, None),
    ("\\boxed{1,00}", 100, False, None),
    ("#### 1,234,567", 1234567, True, None),
    ("I have 1\\,000 apples", 1000, True, None),
    ("Total: $1,200.50\n#### $1,200.50", "1200.505", False, None),
    ("Total: $1,200.50\n#### $1,200.50", "1200.50", True, None),
    # scientific notation
    ("\\boxed{2.5e3}", 3, False, None),
    ("\\boxed{2.5e3}", 2500, True, None),
    ("\\boxed{2.5 \\times 10^{3}}", 2500, True, None),
    ("\\boxed{1e-3}", "0.001", True, None),
    ("\\boxed{1e99999}", 1, False, None),
    # fractions
    ("\\boxed{\\frac34}", 34, False, None),
    ("\\boxed{\\frac34}", "3/4", True, None),
    ("so the share is 3 / 4", 4, False, None),
    ("so the share is 3 / 4", "3/4", True, None),
    ("Half of it: \\boxed{\\frac{1}{2}}", "1/2", True, None),
    ("\\boxed{\\dfrac{6}{8}}", "3/4", True, None),
    ("\\boxed{\\tfrac{1}{2}}", 0.5, True, None),
    ("\\boxed{1\\frac{1}{2}}", "11/2", False, None),
    ("\\boxed{1\\frac{1}{2}}", "3/2", False, True),
    ("\\boxed{3/0}", 3, False, None),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True, None),
    # LaTeX wrappers
    ("\\boxed{\\text{12}}", 12, True, None),
    ("\\boxed{12\\text{ apples}}", 12, True, None),
    ("\\boxed{\\mathrm{7}}", 7, True, None),
    ("$\\boxed{7}$.", 7, True, None),
    ("The answer is $\\frac{3}{4}$.", "3/4", True, None),
    ("\\boxed{\\left( 3 \\right)}", 3, True, None),
    ("\\boxed{\\$1,200.50}", "1200.5", True, None),
    ("\\boxed{45\\%}", 45, True, None),
    ("\\boxed{90^\\circ}", 90, True, None),
    ("\\boxed{x = 5}", 5, True, None),
    # several boxes and markers: the last one by position counts
    ("\\boxed{3} no wait \\boxed{4}", 3, False, None),
    ("\\boxed{3} no wait \\boxed{4}", 4, True, None),
    ("#### 12\nActually \\boxed{13}", 12, False, None),
    ("#### 12\nActually \\boxed{13}", 13, True, None),
    ("\\boxed{13}\n#### 12", 13, False, None),
    # unclosed boxes and empty markers: no answer
    ("\\boxed{12", 12, False, None),
    ("\\boxed{12} or maybe \\boxed{13", 12, False, None),
    ("The total is 5.\n####", 5, False, None),
    # nested braces
    ("\\boxed{{1}}", 1, True, None),
    ("\\boxed{{1}}", 11, False, None),
    ("\\boxed{\\boxed{5}}", 5, True, None),
    # boxes that hold no single number
    ("\\boxed{3 + 4}", 7, False, True),
    ("#### 3 + 4", 7, False, True),
    ("\\boxed{5 or 6}", 5, False, None),
    ("\\boxed{5 or 6}", 6, False, None),
    ("7 apples. \\boxed{x}", 7, False, None),
    ("\\boxed{5}", "\\sqrt{25}", False, True),
    ("\\boxed{2}", "\\sqrt{2}", False, None),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", False, True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False, None),
    # lenient rules
    ("The answer is 12 apples.", 12, True, None),
    ("answer: 45%", 45, True, None),
    ("The answer is 3 + 4 = 7", 7, True, None),
    ("She had 3, bought 5 more, then 8 in all", 8, True, None),
    ("I am not sure.", 5, False, None),
    ("", 0, False, None),
    ("#### Step 1\n3 + 5 = 8", 8, True, None),  # a markdown heading is no answer marker
    ("#### 48\nThe answer is: 48", 48, True, None),
]


@pytest.fixture
def no_math_verify(monkeypatch):
    monkeypatch.setattr(answers, "math_verify_available", lambda: False)


def test_grade_table_is_large_and_balanced():
    assert len(GRADES) >= 60
    assert sum(g[2] for g in GRADES) >= 25 and sum(not g[2] for g in GRADES) >= 25


@pytest.mark.parametrize("text, reference, verdict, _mv", GRADES)
def test_correctness_reward_matches_the_careful_grader(no_math_verify, text, reference, verdict, _mv):
    assert correctness_reward([text], answer=[reference]) == [float(verdict)]


@pytest.mark.parametrize("text, reference, verdict, mv", GRADES)
def test_correctness_reward_with_math_verify(text, reference, verdict, mv):
    pytest.importorskip("math_verify")
    assert correctness_reward([text], answer=[reference]) == [float(verdict if mv is None else mv)]


def test_evaluation_and_reward_agree_on_every_text(no_math_verify):
    """`hf_plugins.evaluation` and the reward functions grade with one extractor: same verdict on every text, and
    strict (marked answer) never exceeds lenient."""
    texts, refs = [g[0] for g in GRADES], [g[1] for g in GRADES]
    scores = score_completions(texts, refs)
    assert [s["correct"] for s in scores["samples"]] == [bool(r) for r in correctness_reward(texts, answer=refs)]
    assert [numbers_equal(t, r) for t, r in zip(texts, refs)] == [s["correct"] for s in scores["samples"]]
    assert all(s["correct"] or not s["strict_correct"] for s in scores["samples"])
    assert 0 < scores["strict_accuracy"] < scores["accuracy"]
    strict = [is_correct(t, r, strict=True) for t, r in zip(texts, refs)]
    assert strict == [s["strict_correct"] for s in scores["samples"]]


# (completion, extracted value, rule)
RULES = [
    ("So the total is \\boxed{1,234}.", Fraction(1234), "boxed"),
    ("3 + 4 = 7, then 7 - 14 = -7\n#### -7", Fraction(-7), "hash"),
    ("The answer is 12 apples.", Fraction(12), "answer_is"),
    ("She had 3, bought 5 more, then 8 in all", Fraction(8), "last_number"),
    ("I am not sure.", None, "none"),
    ("#### 12\nActually \\boxed{13}", Fraction(13), "boxed"),
    ("\\boxed{13} ok\n#### 12", Fraction(12), "hash"),
    ("#### 12 but then I kept going about 40 apples", Fraction(12), "hash"),
    ("\\boxed{x}", None, "boxed"),
    ("\\boxed{12", None, "boxed"),
    ("-3.5 is it. \\boxed{-3.5}", Fraction(-7, 2), "boxed"),
]


@pytest.mark.parametrize("text, value, rule", RULES)
def test_extract_answer_rules(text, value, rule):
    got = extract_answer(text)
    assert (got.value, got.rule) == (value, rule)
    assert extract_final_number(text) == value  # the evaluation's name for the same extractor


# (completion, format reward)
FORMATS = [
    ("So the total is \\boxed{1,234}.", 1.0),
    ("3 + 4 = 7, then 7 - 14 = -7\n#### -7", 1.0),
    ("Half of it: \\boxed{-\\frac{1}{2}}", 1.0),
    ("Total: $1,200.50\n#### $1,200.50", 1.0),
    ("The answer is 12 apples.", 0.0),
    ("#### 12\nActually \\boxed{13}", 0.0),  # two markers
    ("#### 12 but then I kept going about 40 apples", 0.0),  # marker not last
    ("#### 48\nThe answer is: 48", 0.0),
    ("\\boxed{7} and 8 more words", 0.0),
    ("\\boxed{x}", 0.0),
    ("\\boxed{3 + 4}", 0.0),
    ("\\boxed{12", 0.0),
    ("$\\boxed{7}$.", 1.0),
]


@pytest.mark.parametrize("text, fmt", FORMATS)
def test_format_reward(text, fmt):
    assert format_reward([text]) == [fmt]


def test_conversational_and_plain_completions():
    conv = [[{"role": "assistant", "content": "#### 9"}], [{"role": "assistant", "content": "#### 8"}]]
    assert completion_text(conv[0]) == "#### 9"
    assert correctness_reward(conv, answer=[9, 9]) == [1.0, 0.0]
    assert format_reward(conv) == [1.0, 1.0]


def test_reference_from_a_worked_solution():
    sol = "Ava starts with 3.\nShe buys 4 more: 3 + 4 = 7.\n#### 7"
    assert correctness_reward(["\\boxed{7}", "#### 3"], solution=[sol, sol]) == [1.0, 0.0]
    assert is_correct("The answer is 7", solution=sol) and not is_correct("The answer is 7", solution=sol, strict=True)


def test_a_latex_reference_is_not_its_last_digit(no_math_verify):
    """`"\\sqrt{2}"` is no number; reading its last digit would reward `\\boxed{2}`."""
    assert reference_answer("\\sqrt{2}") == "\\sqrt{2}" and reference_answer("#### 7") == 7
    assert correctness_reward(["\\boxed{2}", "2"], answer=["\\sqrt{2}", "\\sqrt{2}"]) == [0.0, 0.0]


def test_no_answer_gives_zero_not_none():
    """None would drop the sample from its GRPO group silently."""
    assert correctness_reward(["", "no digits here", "\\boxed{"], answer=[1, 2, 3]) == [0.0, 0.0, 0.0]


def test_hostile_inputs_cost_little():
    import time

    t0 = time.perf_counter()
    for text in ["\\boxed{" * 2000, "1" * 5000 + "e999999999", "{" * 5000 + "5" + "}" * 5000, "#### " * 3000]:
        extract_answer(text)
        correctness_reward([text], answer=[5])
    assert time.perf_counter() - t0 < 5.0


def test_reward_errors_are_clear():
    with pytest.raises(ValueError, match="answer. or .solution. column"):
        correctness_reward(["#### 1"])
    with pytest.raises(ValueError, match="has 1 values for 2 completions"):
        correctness_reward(["#### 1", "#### 2"], answer=[1])


def test_length_penalty_is_trls_soft_overlong_punishment():
    """The deprecated `length_penalty` warns and returns TRL's DAPO Eq. 13 penalty. Hand-computed: L_max=10,
    L_cache=4 -> 0 up to 6 tokens, (6 - n)/4 in (6, 10], -1 beyond 10."""
    from trl.rewards import get_soft_overlong_punishment

    with pytest.warns(FutureWarning, match="get_soft_overlong_punishment"):
        fn = length_penalty(10, 4)
    assert type(fn) is type(get_soft_overlong_punishment(10, 4))
    lengths = [0, 6, 7, 8, 10, 11, 50]
    got = fn(completions=["x"] * len(lengths), completion_ids=[[0] * n for n in lengths])
    assert got == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
    with warnings.catch_warnings(), pytest.raises(ValueError, match="cache"):
        warnings.simplefilter("ignore", FutureWarning)
        length_penalty(10, 11)


def test_math_verify_paths(monkeypatch):
    """With math-verify, LaTeX answers are graded symbolically; plain numbers stay exact (math-verify rounds)."""
    pytest.importorskip("math_verify")
    assert answers.math_verify_available()
    assert correctness_reward(
        ["\\boxed{\\frac{\\pi}{2}}", "\\boxed{-\\frac{\\pi}{2}}"], answer=["\\frac{\\pi}{2}"] * 2
    ) == [
        1.0,
        0.0,
    ]
    assert correctness_reward(["\\boxed{0.3333333}"], answer=["1/3"]) == [0.0]  # exact, math-verify would round
    monkeypatch.setattr(answers, "math_verify_available", lambda: False)
    assert correctness_reward(["\\boxed{\\frac{\\pi}{2}}"], answer=["\\frac{\\pi}{2}"]) == [0.0]
