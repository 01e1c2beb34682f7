"""Bad input to the SRLM recipe config, the answer rewards, the SoS reward and the SoS API (checker, generators): one
table, one row per input, each with the one clear error, warning or error verdict it must give. No row may become
silent again. The optimizers, MEAP and the model types have their table in test_bad_inputs.py.

Columns: plugin, input, expected (`raises` an exception type / `warns` a warning type, and a pattern of the message;
`verdict`: `check_polynomial` returns a verdict with that label and the pattern in its message, never raising, so a
batch goes on with the next row), and `before`: what the code did before these checks existed ("silent" = accepted,
possibly with a wrong result; "deep" = an error from deep inside, not naming the input; "same" = an error already,
possibly worded otherwise). Every "silent" and "deep" row fails on that code.
"""

import pytest
from _bad_input_table import INF, NAN, check_table, err, expect_outcome, verdict, warns  # tests/_bad_input_table.py

from hf_plugins import (
    CheckerConfig,
    KdStageConfig,
    RlStageConfig,
    SftStageConfig,
    SrlmConfig,
    check_polynomial,
    correctness_reward,
    format_reward,
    generate_items,
    sos_reward,
)
from hf_plugins.sos import CLASS_LABELS, GeneratorConfig, generate_balanced


def srlm(**kw):
    return lambda: SrlmConfig(**kw)


def sft(**kw):
    return lambda: SftStageConfig(**kw)


def kd(**kw):
    return lambda: KdStageConfig(**kw)


def rl(**kw):
    return lambda: RlStageConfig(**kw)


SRLM_ROWS = [
    # -- stages ----------------------------------------------------------------------------------------------------
    ("srlm", "stages=['sft', 'ppo']", srlm(stages=["sft", "ppo"]), err("unknown SRLM stage"), "same"),
    ("srlm", "stages='SFT,rl' (case)", srlm(stages="SFT,rl"), err("unknown SRLM stage"), "same"),
    ("srlm", "stages='sft rl' (no comma)", srlm(stages="sft rl"), err("unknown SRLM stage"), "same"),
    ("srlm", "stages=None", srlm(stages=None), err("`stages`"), "deep"),
    ("srlm", "stages=3", srlm(stages=3), err("`stages`"), "deep"),
    ("srlm", "sft given as a dict", srlm(sft={"max_steps": 3}), err("`sft` must be a SftStageConfig"), "silent"),
    ("srlm", "rl given an SftStageConfig", srlm(rl=SftStageConfig()), err("`rl` must be a RlStageConfig"), "silent"),
    ("srlm", "handoff='cloud'", srlm(handoff="cloud"), err("`handoff`"), "same"),
    ("srlm", "handoff='disk' without output_dir", srlm(handoff="disk"), err("output_dir"), "same"),
    ("srlm", "num_problems=0", srlm(num_problems=0), err("`num_problems`"), "same"),
    ("srlm", "eval_size=-1", srlm(eval_size=-1), err("`eval_size`"), "same"),
    ("srlm", "eval_max_new_tokens=0", srlm(eval_max_new_tokens=0), err("`eval_max_new_tokens`"), "silent"),
    ("srlm", "arith_max_ops=0", srlm(arith_max_ops=0), err("`arith_max_ops`"), "silent"),
    ("srlm", "arith_max_value=1", srlm(arith_max_value=1), err("`arith_max_value`"), "silent"),
    # -- stage configs -----------------------------------------------------------------------------------------------
    ("srlm", "sft learning_rate=-1e-5", sft(learning_rate=-1e-5), err("`learning_rate`"), "same"),
    ("srlm", "sft learning_rate=nan", sft(learning_rate=NAN), err("`learning_rate`"), "silent"),
    ("srlm", "sft learning_rate=inf", sft(learning_rate=INF), err("`learning_rate`"), "silent"),
    ("srlm", "sft learning_rate='1e-5'", sft(learning_rate="1e-5"), err("`learning_rate`"), "deep"),
    ("srlm", "sft max_steps=0", sft(max_steps=0), err("`max_steps`"), "same"),
    ("srlm", "sft max_steps=2.5", sft(max_steps=2.5), err("`max_steps`"), "silent"),
    ("srlm", "sft max_length=4", sft(max_length=4), err("`max_length`"), "same"),
    ("srlm", "kd learning_rate=-1", kd(learning_rate=-1.0), err("`learning_rate`"), "same"),
    ("srlm", "kd divergence='kl'", kd(divergence="kl"), err("`divergence`"), "same"),
    ("srlm", "kd logit with the arithmetic teacher", kd(kind="logit"), err("has no logits"), "same"),
    ("srlm", "kd lmbda=2", kd(lmbda=2.0), err("`lmbda`"), "same"),
    ("srlm", "rl learning_rate=-1e-6", rl(learning_rate=-1e-6), err("`learning_rate`"), "same"),
    ("srlm", "rl num_generations=1", rl(num_generations=1), err("`num_generations`"), "same"),
    ("srlm", "rl num_generations=2.5", rl(num_generations=2.5), err("`num_generations`"), "silent"),
    ("srlm", "rl num_generations='8'", rl(num_generations="8"), err("`num_generations`"), "deep"),
    ("srlm", "rl num_generations=None", rl(num_generations=None), err("`num_generations`"), "deep"),
    ("srlm", "rl prompts_per_step=0", rl(prompts_per_step=0), err("`prompts_per_step`"), "same"),
    ("srlm", "rl batch not a multiple of G", rl(per_device_train_batch_size=6), err("multiple of"), "same"),
    ("srlm", "rl kl_coef=nan", rl(kl_coef=NAN), err("`kl_coef`"), "silent"),
    ("srlm", "rl temperature=nan", rl(temperature=NAN), err("`temperature`"), "silent"),
    ("srlm", "rl max_prompt_length=0", rl(max_prompt_length=0), err("`max_prompt_length`"), "silent"),
    ("srlm", "rl loss_type='ppo'", rl(loss_type="ppo"), err("`loss_type`"), "silent"),
    ("srlm", "rl scale_rewards='yes'", rl(scale_rewards="yes"), err("`scale_rewards`"), "silent"),
    ("srlm", "rl correctness_weight=nan", rl(correctness_weight=NAN), err("`correctness_weight`"), "silent"),
    ("srlm", "rl extra_rewards: one function, not a list", rl(extra_rewards=len), err("`extra_rewards`"), "silent"),
    (
        "srlm",
        "rl overlong_punishment=(10, 20)",
        rl(overlong_punishment=(10, 20)),
        err("`overlong_punishment`"),
        "same",
    ),
    ("srlm", "rl length_penalty (old name)", rl(length_penalty=(10, 2)), warns("deprecated", FutureWarning), "same"),
]

BOXED = "so \\boxed{5}"
REWARD_ROWS = [
    (
        "rewards",
        "a completion that is a number",
        lambda: correctness_reward([5], answer=["5"]),
        err("completion", TypeError),
        "silent",
    ),
    (
        "rewards",
        "a completion that is None",
        lambda: correctness_reward([None], answer=["5"]),
        err("completion", TypeError),
        "silent",
    ),
    (
        "rewards",
        "a completion in bytes",
        lambda: correctness_reward([b"5"], answer=["5"]),
        err("completion", TypeError),
        "silent",
    ),
    ("rewards", "format_reward of a number", lambda: format_reward([5]), err("completion", TypeError), "silent"),
    (
        "rewards",
        "format_reward of one string",
        lambda: format_reward("#### 5"),
        err("`completions`", TypeError),
        "silent",
    ),
    (
        "rewards",
        "answer column as one string",
        lambda: correctness_reward([BOXED], answer="5"),
        err("`answer` must be a list", TypeError),
        "silent",
    ),
    (
        "rewards",
        "answers fewer than completions",
        lambda: correctness_reward([BOXED, "6"], answer=["5"]),
        err("1 values for 2"),
        "same",
    ),
    ("rewards", "no answer or solution column", lambda: correctness_reward([BOXED]), err("needs an `answer`"), "same"),
    (
        "rewards",
        "answer is a dict",
        lambda: correctness_reward([BOXED], answer=[{"v": 5}]),
        err("reference answer", TypeError),
        "silent",
    ),
    (
        "rewards",
        "answer is a list",
        lambda: correctness_reward([BOXED], answer=[[5]]),
        err("reference answer", TypeError),
        "silent",
    ),
    (
        "rewards",
        "answer is True",
        lambda: correctness_reward(["\\boxed{1}"], answer=[True]),
        err("reference answer", TypeError),
        "same",
    ),
    (
        "rewards",
        "answer is NaN (missing value)",
        lambda: correctness_reward([BOXED], answer=[NAN]),
        err("finite"),
        "silent",
    ),
    # -- SoS reward ----------------------------------------------------------------------------------------------
    (
        "sos_reward",
        "label '1' (string)",
        lambda: sos_reward([BOXED], proved_label=["1"]),
        err("integers 0 or 1"),
        "same",
    ),
    ("sos_reward", "label True", lambda: sos_reward([BOXED], proved_label=[True]), err("integers 0 or 1"), "same"),
    ("sos_reward", "label 2", lambda: sos_reward([BOXED], proved_label=[2]), err("integers 0 or 1"), "same"),
    ("sos_reward", "label 1.0", lambda: sos_reward([BOXED], proved_label=[1.0]), err("integers 0 or 1"), "same"),
    ("sos_reward", "no label column", lambda: sos_reward([BOXED]), err("`proved_label`"), "same"),
    (
        "sos_reward",
        "labels fewer than completions",
        lambda: sos_reward([BOXED, BOXED], proved_label=[1]),
        err("2 completions but 1"),
        "same",
    ),
    (
        "sos_reward",
        "a completion that is a number",
        lambda: sos_reward([1], proved_label=[1]),
        err("completion", TypeError),
        "same",
    ),
]

FAST = CheckerConfig(
    use_sdp=False,
    dual=False,
    point_samples=16,
    point_time_limit=0.05,
    hard_point_samples=16,
    hard_point_time_limit=0.05,
)


def text(poly):
    return lambda: check_polynomial(poly, FAST)


CLS = sorted(CLASS_LABELS)[0]
SOS_ROWS = [
    # -- check_polynomial on hostile text: a verdict with bounded work, never an exception ---------------------------
    ("sos", "200 nested parentheses", text("(" * 200 + "x1" + ")" * 200), verdict("rejected", "max_nesting"), "same"),
    ("sos", "(x1+...+x8)^16", text("(x1+x2+x3+x4+x5+x6+x7+x8)^16"), verdict("rejected", "max_terms"), "same"),
    ("sos", "1e20000000", text("1e20000000"), verdict("rejected", "max_decimal_exponent"), "same"),
    ("sos", "x100000^2+1", text("x100000^2+1"), verdict("rejected", "max_variables"), "same"),
    ("sos", "x1^100000000", text("x1^100000000"), verdict("rejected", "max_power"), "same"),
    ("sos", "a 100000-digit number", text("9" * 100_000 + "*x1^2"), verdict("rejected", "max_digits"), "same"),
    ("sos", "over a million characters", text("x1^2+" * 200_000 + "1"), verdict("rejected", "max_chars"), "same"),
    ("sos", "Arabic-Indic digit (x\u0661)", text("x\u0661^2+1"), verdict("rejected", "non-ASCII"), "same"),
    ("sos", "full-width digit (x\uff11)", text("x\uff11^2+1"), verdict("rejected", "non-ASCII"), "same"),
    ("sos", "Unicode minus", text("x1^2 \u2212 1"), verdict("rejected", "non-ASCII"), "same"),
    ("sos", "empty text", text("   "), verdict("rejected", "empty"), "same"),
    ("sos", "negative exponent", text("x1^-2"), verdict("rejected", "exponent"), "same"),
    ("sos", "division by a variable", text("1/x1"), verdict("rejected", "non-constant"), "same"),
    ("sos", "division by zero", text("x1^2/0"), verdict("rejected", "division by zero"), "same"),
    ("sos", "unbalanced parenthesis", text("(x1^2 + 1"), verdict("rejected", "truncated"), "same"),
    (
        "sos",
        "Python code",
        text("__import__('os').system('true')"),
        verdict("rejected", "unexpected character"),
        "same",
    ),
    ("sos", "nan", text("nan*x1^2"), verdict("rejected", "unexpected character"), "same"),
    ("sos", "chained powers", text("x1^2^2"), verdict("rejected", "ambiguous"), "same"),
    ("sos", "a NUL byte", text("x1^2\x00+1"), verdict("rejected", "unexpected character"), "same"),
    # -- check_polynomial / CheckerConfig arguments --------------------------------------------------------------
    ("sos", "check_polynomial(None)", lambda: check_polynomial(None), err("`poly`", TypeError), "same"),
    ("sos", "check_polynomial(b'x1^2')", lambda: check_polynomial(b"x1^2"), err("`poly`", TypeError), "same"),
    (
        "sos",
        "config given as a dict",
        lambda: check_polynomial("x1^2", config={"seed": 1}),
        err("`config`", TypeError),
        "deep",
    ),
    ("sos", "CheckerConfig(max_basis=0)", lambda: CheckerConfig(max_basis=0), err("`max_basis`"), "same"),
    (
        "sos",
        "CheckerConfig(max_candidates=0)",
        lambda: CheckerConfig(max_candidates=0),
        err("`max_candidates`"),
        "silent",
    ),
    (
        "sos",
        "CheckerConfig(sdp_time_limit=nan)",
        lambda: CheckerConfig(sdp_time_limit=NAN),
        err("`sdp_time_limit`"),
        "silent",
    ),
    (
        "sos",
        "CheckerConfig(point_time_limit=nan)",
        lambda: CheckerConfig(point_time_limit=NAN),
        err("`point_time_limit`"),
        "silent",
    ),
    ("sos", "CheckerConfig(solvers='SCS')", lambda: CheckerConfig(solvers="SCS"), err("`solvers`"), "same"),
    # -- generators ------------------------------------------------------------------------------------------------
    ("sos", "generate_items: unknown class", lambda: generate_items(["nope"], 1), err("unknown class 'nope'"), "same"),
    ("sos", "generate_items: classes as one string", lambda: generate_items(CLS, 1), err("`classes`"), "deep"),
    ("sos", "generate_items: classes=[]", lambda: generate_items([], 1), err("`classes`"), "silent"),
    ("sos", "generate_items: per_class=-1", lambda: generate_items([CLS], -1), err("`per_class`"), "silent"),
    ("sos", "generate_items: per_class=2.5", lambda: generate_items([CLS], 2.5), err("`per_class`"), "silent"),
    ("sos", "generate_items: per_class='3'", lambda: generate_items([CLS], "3"), err("`per_class`"), "deep"),
    ("sos", "generate_items: seed=-1", lambda: generate_items([CLS], 1, seed=-1), err("`seed`"), "deep"),
    ("sos", "generate_items: seed=1.5", lambda: generate_items([CLS], 1, seed=1.5), err("`seed`"), "deep"),
    (
        "sos",
        "generate_items: config as a dict",
        lambda: generate_items([CLS], 1, config={"num_vars": 2}),
        err("`config`", TypeError),
        "deep",
    ),
    (
        "sos",
        "GeneratorConfig(num_vars=2.5)",
        lambda: generate_items([CLS], 1, config=GeneratorConfig(num_vars=2.5)),
        err("`num_vars`"),
        "deep",
    ),
    (
        "sos",
        "GeneratorConfig(degree=4.0)",
        lambda: generate_items([CLS], 1, config=GeneratorConfig(degree=4.0)),
        err("`degree`"),
        "deep",
    ),
    ("sos", "GeneratorConfig(degree=3)", lambda: GeneratorConfig(degree=3), err("`degree`"), "same"),
    ("sos", "GeneratorConfig(style='x_1')", lambda: GeneratorConfig(style="x_1"), err("`style`"), "same"),
    ("sos", "generate_balanced(per_label=-1)", lambda: generate_balanced(-1), err("`per_label`"), "silent"),
    (
        "sos",
        "generate_balanced with one label's classes",
        lambda: generate_balanced(2, classes=[c for c, label in CLASS_LABELS.items() if label == 1]),
        err("no class labelled 0"),
        "same",
    ),
]

ROWS = SRLM_ROWS + REWARD_ROWS + SOS_ROWS


@pytest.mark.parametrize("plugin, case, act, expect, before", ROWS, ids=[f"{r[0]}: {r[1]}" for r in ROWS])
def test_bad_input_gets_one_clear_error_warning_or_verdict(plugin, case, act, expect, before):
    expect_outcome(expect, act)


def test_the_table_covers_every_plugin_and_no_row_repeats():
    check_table(ROWS, {"srlm", "rewards", "sos_reward", "sos"}, kinds=("raises", "warns", "verdict"))
