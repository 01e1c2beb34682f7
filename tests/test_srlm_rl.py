"""SRLM's rl stage: per-step diagnostics (within-group reward std, zero-variance groups, KL to the start), the
report's strict vs lenient accuracy, and TRL's overlong punishment."""

import statistics
import warnings

import pytest
import torch

import hf_plugins.evaluation as evaluation
from hf_plugins.data.arithmetic import Problem
from hf_plugins.recipes.srlm import RlStageConfig, SrlmConfig, evaluate_arithmetic, run_srlm
from hf_plugins.recipes.srlm.monitor import RewardGroupMonitor, build_probe
from hf_plugins.recipes.srlm.stages import rl_rewards
from hf_plugins.testing import tiny_model, tiny_tokenizer


def test_report_strict_accuracy_never_exceeds_lenient(monkeypatch):
    """Lenient and strict accuracy come from one extractor. Before, lenient read `####` first and strict read
    `\\boxed{}` first, so a text with both scored strict 1 and lenient 0."""
    texts = ["#### 12\nActually \\boxed{13}", "\\boxed{13}\n#### 12", "so 13", "#### 13", "\\boxed{13"]
    monkeypatch.setattr(evaluation, "generate_completions", lambda *a, **k: list(texts))
    problems = [Problem(question=f"q{i}", steps=[], answer=13) for i in range(len(texts))]
    res = evaluate_arithmetic(None, tiny_tokenizer(), problems)
    assert res["accuracy"] == 3 / 5 and res["strict_accuracy"] == 2 / 5


def test_group_statistics_match_a_hand_computation():
    """Weighted totals per completion (None skipped, as TRL), sample std per group of G, zero-variance share."""
    monitor = RewardGroupMonitor([None, None], [1.0, 0.1], num_generations=4)
    correct = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    fmt = [1.0, 1.0, None, 0.0, 1.0, 1.0, 1.0, 1.0]
    stats = monitor.statistics([correct, fmt], ["#### 3", "#### 4", "\\boxed{3}", "three", "#### 4"] + ["no"] * 3)
    totals = [1.1, 0.1, 1.0, 0.0, 0.1, 0.1, 0.1, 0.1]
    assert stats["reward"] == pytest.approx(sum(totals) / 8)
    assert stats["groups/reward_std"] == pytest.approx((statistics.stdev(totals[:4]) + 0.0) / 2)
    assert stats["groups/frac_zero_std"] == 0.5
    assert stats["answers/found"] == 4 / 8 and stats["answers/marked"] == 4 / 8


def _length_reward(completions, **kwargs):
    """Varies within every group, so GRPO has a gradient even when no completion is correct."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"])) / 10 for c in completions]


def _kl(start_logp, model, probe):
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    logp = torch.log_softmax(logits[probe["target_mask"]].double(), dim=-1)
    p0 = start_logp.double()
    return float((p0.exp() * (p0 - logp)).sum(-1).mean())


def test_rl_stage_reports_every_step_and_the_kl_to_its_start():
    """Two GRPO updates on a tiny model with a reward that varies in every group: one row per step in
    `rl_steps`; the within-group std and zero-variance share agree with TRL's; `kl_start` is 0 before training
    moves anything and equals a float64 hand computation of KL(pi_start || pi_final) on the probe at the end."""
    tok, model = tiny_tokenizer(), tiny_model("llama")
    rl = RlStageConfig(max_steps=2, num_generations=4, prompts_per_step=2, max_completion_length=6,
                       learning_rate=1e-2, extra_rewards=[_length_reward], probe_size=3)  # fmt: skip
    cfg = SrlmConfig(stages=["rl"], rl=rl, num_problems=8, eval_size=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    final, report = run_srlm(model, tok, cfg)
    stage = report["stages"][0]
    rows = stage["rl_steps"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward_std_in_group"] > 0 and r["frac_reward_zero_std"] == 0 and r["kl_start"] >= 0
        assert r["completion_length"] > 0 and r["clip_ratio"] is not None
    batches = stage["reward_batches"]
    assert [b["groups/frac_zero_std"] for b in batches] == [r["frac_reward_zero_std"] for r in rows]
    assert [b["groups/reward_std"] for b in batches] == pytest.approx([r["reward_std_in_group"] for r in rows])
    # hand computation of the last KL: the starting model's distribution on the same probe
    start_model = tiny_model("llama")
    start_model.load_state_dict(start)
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if tok.chat_template else p
             for p in ([{"role": "user", "content": q}] for q in _questions(cfg)[:3])]  # fmt: skip
    tok.padding_side = "left"
    probe = build_probe(start_model, tok, texts, 6)
    with torch.no_grad():
        logits = start_model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    start_logp = torch.log_softmax(logits[probe["target_mask"]].double(), dim=-1)
    assert rows[-1]["kl_start"] == pytest.approx(_kl(start_logp, final.eval(), probe), rel=1e-4, abs=1e-9)
    assert rows[-1]["kl_start"] > 0


def _questions(cfg):
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    arith = ArithmeticConfig(seed=cfg.arith_seed, num_train=cfg.num_problems, num_test=1,
                             max_ops=cfg.arith_max_ops, max_value=cfg.arith_max_value)  # fmt: skip
    return [p.question for p in generate_problems(arith, "train")]


def test_kl_is_zero_when_nothing_trains():
    """Equal rewards in every group (the tiny model never answers): no update, so KL to the start is exactly 0."""
    tok, model = tiny_tokenizer(), tiny_model("llama")
    rl = RlStageConfig(max_steps=1, num_generations=2, max_completion_length=6, learning_rate=1e-2, probe_size=2)
    _, report = run_srlm(model, tok, SrlmConfig(stages=["rl"], rl=rl, num_problems=4, eval_size=0))
    row = report["stages"][0]["rl_steps"][0]
    assert row["kl_start"] == 0 and row["frac_reward_zero_std"] == 1 and row["reward_std_in_group"] == 0


def test_overlong_punishment_is_trls_and_length_penalty_is_deprecated():
    from trl.rewards import get_soft_overlong_punishment

    funcs, weights = rl_rewards(RlStageConfig(overlong_punishment=(10, 4)))
    assert type(funcs[-1]) is type(get_soft_overlong_punishment(10, 4)) and weights == [1.0, 0.1, 1.0]
    assert funcs[-1](completion_ids=[[0] * 8]) == [-0.5]
    with pytest.warns(FutureWarning, match="overlong_punishment"):
        cfg = RlStageConfig(length_penalty=(10, 4))
    assert cfg.overlong_punishment == (10, 4) and cfg.length_penalty is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="overlong_punishment"):
            RlStageConfig(overlong_punishment=(4, 10))
    with pytest.raises(ValueError, match="temperature"):
        RlStageConfig(temperature=0.0)


def test_monitor_keeps_async_reward_functions_async_and_skips_reward_models():
    """TRL awaits async reward functions and scores reward models itself: the wrappers must keep both working."""
    import asyncio

    from trl.trainer.utils import is_async_callable

    async def slow_reward(completions, **kwargs):
        return [1.0, 0.0]

    def plain(completions, **kwargs):
        return [0.5, 0.5]

    monitor = RewardGroupMonitor([slow_reward, plain], [1.0, 1.0], num_generations=2)
    wrapped = monitor.wrapped()
    assert is_async_callable(wrapped[0]) and not is_async_callable(wrapped[1])
    assert [w.__name__ for w in wrapped] == ["slow_reward", "plain"]
    assert asyncio.run(wrapped[0](completions=["#### 1", "x"])) == [1.0, 0.0]
    assert wrapped[1](completions=["#### 1", "x"]) == [0.5, 0.5]
    assert monitor.batches[0]["groups/reward_std"] == pytest.approx(statistics.stdev([1.5, 0.5]))
    assert not RewardGroupMonitor.supports([plain, tiny_model("llama")]) and RewardGroupMonitor.supports([plain])
