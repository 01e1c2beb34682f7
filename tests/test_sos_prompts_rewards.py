"""Boxed answers, prompts, the GRPO reward and the SFT traces."""

import inspect

import pytest

from hf_plugins.sos import (
    PROMPT_STYLES,
    build_prompt,
    generate_item,
    make_grpo_rows,
    make_sft_rows,
    make_sos_reward,
    parse_boxed_answer,
    sos_reward,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{1}", 1),
        ("boxed{0}", 0),  # the official harness does not require the backslash
        ("first \\boxed{0} ... on reflection \\boxed{1}", 1),  # the last box counts
        ("\\boxed{1} but then \\boxed{2}", None),  # last box invalid -> invalid
        ("\\boxed{ 1 }", 1),
        ("\\boxed{\\text{0}}", 0),
        ("$\\boxed{\\mathbf{1}}$", 1),
        ("\\boxed{2}", None),
        ("\\boxed{yes}", None),
        ("\\boxed{10}", None),
        ("the polynomial is SoS, answer 1", None),  # no box
        ("\\boxed{1", None),  # unclosed
        ("", None),
        (None, None),
    ],
)
def test_boxed_answer_parser(text, expected):
    assert parse_boxed_answer(text) == expected


def test_prompts_contain_the_polynomial_and_the_answer_format():
    poly = "x1^2 + 1"
    for style in PROMPT_STYLES:
        prompt = build_prompt(poly, style)
        assert poly in prompt and "\\boxed{1}" in prompt and "\\boxed{0}" in prompt
    reasoning = build_prompt(poly, "reasoning")
    # the official prompt's errors are not repeated: degree <= d basis including 1, PSD suffices
    assert (
        "degree at most d" in reasoning
        and "including 1" in reasoning
        and "positive definite is not required" in reasoning
    )
    assert len(build_prompt(poly, "plain")) < len(build_prompt(poly, "simple")) < len(reasoning)
    with pytest.raises(ValueError, match="style"):
        build_prompt(poly, "fancy")


def test_reward_on_hand_written_completions():
    completions = [
        "Odd degree, so not SoS. \\boxed{0}",  # right
        "It is a square. \\boxed{1}",  # wrong
        "I am not sure.",  # invalid
        "\\boxed{1}",  # label unproved -> None
        [{"role": "assistant", "content": "Gram matrix is PSD: \\boxed{1}"}],  # conversational, right
    ]
    labels = [0, 0, 1, None, 1]
    assert sos_reward(completions=completions, proved_label=labels, prompts=["p"] * 5) == [1.0, 0.0, 0.0, None, 1.0]


def test_reward_signature_fits_grpo_trainer():
    """GRPOTrainer calls reward(prompts=..., completions=..., completion_ids=..., **columns)."""
    params = inspect.signature(sos_reward).parameters
    assert "completions" in params and any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert sos_reward.__name__ == "sos_reward"
    out = sos_reward(
        prompts=["a"], completions=["\\boxed{1}"], completion_ids=[[1]], proved_label=[1], trainer_state=None
    )
    assert out == [1.0]
    with pytest.raises(ValueError, match="proved_label"):
        sos_reward(completions=["\\boxed{1}"], label=[1])
    custom = make_sos_reward(label_key="label", wrong=-1.0)
    assert custom(completions=["\\boxed{1}"], label=[0]) == [-1.0]


def test_sft_rows_carry_checker_traces_that_end_in_the_proved_label():
    pytest.importorskip("cvxpy")
    from hf_plugins.sos import CheckerConfig

    items = [generate_item(c, seed=0) for c in ("odd_degree", "quadratic", "quadratic_negative", "nonneg_not_sos")]
    rows = make_sft_rows(items, style="simple", checker_config=CheckerConfig(hard_point_time_limit=0.5))
    for item, row in zip(items, rows):
        user, assistant = row["messages"]
        assert item.text in user["content"]
        assert parse_boxed_answer(assistant["content"]) == item.label
        assert assistant["content"].startswith("Step 1: the polynomial has total degree")
    assert "negative" in rows[0]["messages"][1]["content"]  # the exact point of the odd-degree item is quoted
    assert "positive semidefinite" in rows[1]["messages"][1]["content"]  # quadratic: LDL^T pivots
    grpo = make_grpo_rows(items)
    assert [r["proved_label"] for r in grpo] == [it.label for it in items]
    # The reward scores the SFT targets as correct.
    assert (
        sos_reward(completions=[r["messages"][1]["content"] for r in rows], proved_label=[it.label for it in items])
        == [1.0] * 4
    )


def test_sft_rows_say_where_the_trace_comes_from():
    """Without a checker the construction certificate writes the trace; with the solver-free checker, its evidence
    does when it proves the label (an exact point for the negative quadratic), else the certificate (the squares
    of an SoS item the cheap checks cannot prove)."""
    from hf_plugins.sos import CheckerConfig, check_polynomial
    from hf_plugins.sos.polynomial import format_number

    items = [generate_item(c, seed=3) for c in ("quadratic_negative", "gram_dense")]
    assert [r["evidence"] for r in make_sft_rows(items)] == ["certificate", "certificate"]
    cheap = CheckerConfig(use_sdp=False, point_time_limit=0.05, hard_point_samples=16, hard_point_time_limit=0.05)
    rows = make_sft_rows(items, checker_config=cheap)
    verdict = check_polynomial(items[0].polynomial, cheap)
    assert rows[0]["evidence"] == f"checker: {verdict.method}" and "at x = (" in rows[0]["messages"][1]["content"]
    assert format_number(verdict.evidence.value) in rows[0]["messages"][1]["content"]  # the checker's point
    assert rows[1]["evidence"] == "certificate" and "positive semidefinite" not in rows[1]["messages"][1]["content"]
    assert "sum of" in rows[1]["messages"][1]["content"] and parse_boxed_answer(rows[1]["messages"][1]["content"]) == 1


def test_sft_trace_falls_back_to_the_certificate_when_the_checker_quotes_no_evidence(monkeypatch):
    """Regression: an odd-degree verdict without a point (no negative direction found) proves the label but carries
    no evidence; the row used to get an empty trace. It now quotes the item's own exact point."""
    from hf_plugins.sos import CheckerConfig, check_polynomial, checker

    item = generate_item("odd_degree", seed=0)
    monkeypatch.setattr(checker, "negative_direction_point", lambda p, rng, samples=2000: None)
    cfg = CheckerConfig(use_sdp=False)
    verdict = check_polynomial(item.polynomial, cfg)
    assert verdict.method == "odd degree" and verdict.evidence is None and verdict.proved_label == 0
    row = make_sft_rows([item], style="plain", checker_config=cfg)[0]
    text = row["messages"][1]["content"]
    assert row["evidence"] == "certificate" and text.startswith("Step 1:")
    assert "the polynomial equals -" in text and parse_boxed_answer(text) == 0


@pytest.mark.parametrize("label", ["1", "0", 2, True, 1.0])
def test_reward_rejects_labels_that_are_not_0_1_or_none(label):
    """A string label ("1", as a CSV or JSON column might give) used to make every reward None silently."""
    with pytest.raises(ValueError, match="integers 0 or 1"):
        sos_reward(completions=["\\boxed{1}", "\\boxed{0}"], proved_label=[1, label])
