"""The embedded arithmetic task: exact answers, disjoint splits, views, evaluator."""

import re
from fractions import Fraction

import pytest

from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems, make_dataset
from hf_plugins.rewards.answers import extract_final_number, numbers_equal


def _replay(problem) -> int:
    """Recompute the answer from the story text alone (an independent parser of the question)."""
    q = problem.question
    value = int(re.search(r"has (\d+) ", q).group(1))
    for sentence in re.split(r"(?<=\.) ", q)[1:]:
        n = re.findall(r"\d+", sentence)
        if not n:
            continue
        n = int(n[0])
        if "more" in sentence or "gives " + problem.question.split()[0] in sentence or "A friend gives" in sentence:
            value += n
        elif "gives away" in sentence or "loses" in sentence:
            value -= n
        elif "times as large" in sentence:
            value *= n
        elif "equal groups" in sentence:
            assert value % n == 0
            value //= n
    return value


def test_answers_are_exact_and_steps_are_consistent():
    problems = generate_problems(ArithmeticConfig(seed=3, num_train=300, num_test=50, max_ops=4))
    for p in problems:
        assert _replay(p) == p.answer, p.question
        # every step "a op b = c" is arithmetically true, and the last result is the answer
        results = []
        for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", p.solution):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == c
            assert op != "/" or a % b == 0
            results.append(c)
        if results:
            assert results[-1] == p.answer
        assert p.solution.endswith(f"#### {p.answer}")
        assert p.answer >= 0


def test_splits_are_deterministic_and_disjoint():
    cfg = ArithmeticConfig(seed=1, num_train=500, num_test=100)
    train, test = generate_problems(cfg, "train"), generate_problems(cfg, "test")
    assert len(train) == 500 and len(test) == 100
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train}) == 500
    assert [p.question for p in generate_problems(cfg, "train")] == [p.question for p in train]
    other = generate_problems(ArithmeticConfig(seed=2, num_train=500, num_test=100), "train")
    assert [p.question for p in other] != [p.question for p in train]
    # the test split does not depend on the size of the training split
    assert [p.question for p in generate_problems(ArithmeticConfig(seed=1, num_train=7, num_test=100), "test")] == [
        p.question for p in test
    ]


def test_difficulty_knobs():
    easy = generate_problems(ArithmeticConfig(num_train=200, num_test=0, min_ops=1, max_ops=1, operations=("add",)))
    assert all(len(p.steps) == 2 for p in easy)
    assert all("+" in p.solution and "*" not in p.solution for p in easy)
    hard = generate_problems(ArithmeticConfig(num_train=200, num_test=0, min_ops=4, max_ops=4, max_value=500))
    assert all(len(p.steps) == 5 for p in hard)
    assert max(p.answer for p in hard) > max(p.answer for p in easy)


@pytest.mark.parametrize(
    "field, value",
    [("num_train", -1), ("min_ops", 0), ("max_value", 1), ("max_factor", 1), ("operations", ("pow",))],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ArithmeticConfig(**{field: value})


def test_views():
    cfg = ArithmeticConfig(num_train=4, num_test=2)
    conv = make_dataset(cfg, "train", "conversational")
    assert conv[0]["messages"][0]["role"] == "user" and conv[0]["messages"][1]["content"].endswith("####") is False
    pc = make_dataset(cfg, "train", "prompt_completion")
    assert set(pc.column_names) == {"prompt", "completion"}
    text = make_dataset(cfg, "test", "text")
    assert text[0]["text"].startswith("Question: ") and "\nAnswer: " in text[0]["text"]
    qa = make_dataset(cfg, "test", "qa")
    assert isinstance(qa[0]["answer"], int)
    with pytest.raises(ValueError, match="view"):
        make_dataset(cfg, "train", "xml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 + 4 = 7.\n#### 7", 7),
        ("#### 1,234 apples", 1234),
        ("The answer is 42.", 42),
        ("first 5 then 9 and finally 11", 11),
        ("\\boxed{\\frac{1}{2}} no wait \\boxed{12}", 12),
        ("#### -3", -3),
        ("It costs $12.50 in total", Fraction(25, 2)),
        ("#### 5\nlater text 99", 5),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numbers_equal():
    assert numbers_equal("... #### 15", 15)
    assert numbers_equal("The answer is 15.0", "15")
    assert not numbers_equal("#### 16", 15)
    assert not numbers_equal("nothing", 15)
