# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SRLM: SFT, distillation and RL stages for small reasoning models
#
# **Paper:** Zhuang, Ma, Jia, Cao, Liu, *Effective Learning for Small Reasoning Models: An Empirical Study on 0.5B
# Reasoning LLMs*, arXiv [2506.13404](https://arxiv.org/abs/2506.13404) (CPAL 2026). Docs: `docs/srlm.md`.
#
# The paper is an empirical study of how to train ~0.5B models for math reasoning: supervised fine-tuning (SFT),
# knowledge distillation (KD) from a stronger teacher, reinforcement learning with verifiable rewards (RL), and
# their orders (SFT→RL, KD→RL, SFT→KD→RL). As read second-hand, direct RL on the instruct model is strongest
# (Qwen2.5-0.5B-Instruct on GSM8K 45.5 % → 54.0 %) and SFT before it can hurt.
#
# In `hf_plugins` it is a recipe of stock TRL trainers: `run_srlm(model, tokenizer, SrlmConfig(stages=[...]))` runs
# any sequence of `sft` (TRL `SFTTrainer`), `kd` (teacher solutions filtered by answer correctness, then SFT; or
# logit-level with TRL's distillation trainers) and `rl` (TRL `GRPOTrainer` with exact-answer rewards from
# `hf_plugins.rewards.math`) on one model, hands the model from stage to stage, evaluates held-out accuracy after
# every stage and returns one report. Any stage can use a PEFT method (`lora`, `lift`, ...). Needs `trl` and
# `datasets`.

# %% [markdown]
# ## Hugging Face usage, one line
#
# ```python
# model, report = hf_plugins.run_srlm(model, tokenizer, hf_plugins.SrlmConfig(stages=["sft", "rl"]))
# ```
# CLI: `hf-plugins recipe srlm --stages sft,kd,rl` (SmolLM2-135M-Instruct, arithmetic, minutes on a CPU). Below:
# the whole SFT → KD → RL pipeline on a tiny random Llama with the in-code tokenizer and the embedded arithmetic
# task, a few steps per stage. A model this small learns the answer format, not arithmetic, so read the plots for
# the mechanics (losses, rewards, accuracy after every stage), not for the paper's claims.

# %%
# %matplotlib inline
import contextlib
import io
import tempfile

import matplotlib.pyplot as plt
import torch

# notebooks/_common.py: offline from the Hub, hf_plugins registered, one torch thread, seed 0
from _common import elapsed

# %%
from datasets import disable_progress_bars

from hf_plugins.recipes.srlm import KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig, run_srlm
from hf_plugins.testing import tiny_model, tiny_tokenizer


disable_progress_bars()
tok = tiny_tokenizer()
model = tiny_model("llama", hidden_size=64, intermediate_size=128)
small = {
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "max_length": 128,
    "trainer_kwargs": {"logging_steps": 2},
}
config = SrlmConfig(
    stages=["sft", "kd", "rl"],
    num_problems=64,
    eval_size=8,
    eval_max_new_tokens=24,
    sft=SftStageConfig(max_steps=24, **small),
    kd=KdStageConfig(max_steps=24, **small),  # sequence-level KD from the programmatic "arithmetic" teacher
    rl=RlStageConfig(
        max_steps=6,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=24,
        learning_rate=1e-3,
        trainer_kwargs={"logging_steps": 1},
    ),
)
with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()) as trainer_logs:
    config.output_dir = out  # stage checkpoints and report.json (a temporary directory here)
    final, report = run_srlm(model, tok, config)  # the TRL trainers print every log line: kept in trainer_logs
print("\n".join(line for line in trainer_logs.getvalue().splitlines() if line.startswith("[srlm]")))

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
offset = 0
for i, stage in enumerate(report["stages"]):
    hist = [h for h in stage["log_history"] if "loss" in h and "train_runtime" not in h]
    if stage["stage"] != "rl":
        axes[0].plot(
            [offset + h["step"] for h in hist],
            [h["loss"] for h in hist],
            marker=".",
            color=f"C{i}",
            label=f"{i}: {stage['stage']}",
        )
    else:
        axes[1].plot([h["step"] for h in hist], [h["reward"] for h in hist], marker="o", label="total reward")
        axes[1].plot(
            [h["step"] for h in hist],
            [h["rewards/correctness_reward/mean"] for h in hist],
            marker="o",
            label="correctness",
        )
    offset += stage["steps"]
axes[0].set(xlabel="optimizer step (pipeline)", ylabel="training loss", title="SFT and KD stages")
axes[0].legend()
axes[1].set(xlabel="GRPO step", ylabel="mean reward", title="RL stage (GRPO)")
axes[1].legend()
names = ["before"] + [f"after {s['stage']}" for s in report["stages"]]
acc = [report["eval_before"]["accuracy"]] + [s["eval"]["accuracy"] for s in report["stages"]]
strict = [report["eval_before"]["strict_accuracy"]] + [s["eval"]["strict_accuracy"] for s in report["stages"]]
x = torch.arange(len(names)).numpy()
axes[2].bar(x - 0.2, acc, width=0.4, label="lenient (last number)")
axes[2].bar(x + 0.2, strict, width=0.4, label="strict (#### / \\boxed{})")
axes[2].set_xticks(x, names)
axes[2].set(ylabel="held-out accuracy (8 problems)", ylim=(0, 1), title="accuracy after every stage")
axes[2].legend()
plt.tight_layout()
plt.show()

# %%
for where, ev in [("before", report["eval_before"]), ("after the pipeline", report["stages"][-1]["eval"])]:
    ex = ev["examples"][0]
    print(f"{where}: Q: {ex['question']}\n   A ({ex['answer']}): {ex['completion']!r}\n")
print(f"pipeline: {report['seconds']:.1f} s")

# %% [markdown]
# ## Scale it up
#
# The recipe's full-size settings are the defaults of `SrlmConfig()` (what `run_srlm` uses without a config; the
# CLI `hf-plugins recipe srlm` starts from a smaller CPU default and takes `--stage-arg` overrides), printed below,
# followed by the rows recorded for the recipe in `benchmarks/RESULTS.md` by `benchmarks/srlm_quality.py`. With
# the current RL settings (SmolLM2-135M-Instruct, 48 updates per pipeline, 3 seeds; docs/srlm.md) SFT and KD take
# held-out accuracy from 0.125 to 0.688 and 0.695, RL alone to 0.205 (it learns, but far less), and every RL stage
# after SFT or KD lowers accuracy at lr 3e-5 (SFT→RL 0.603 → 0.437); at lr 1e-5 RL after SFT keeps SFT's 0.610.

# %%
from dataclasses import asdict


full = SrlmConfig()
print(f"SrlmConfig(): stages {full.stages}, {full.num_problems} problems, eval on {full.eval_size}")
for stage in full.stages:
    print(f"  {stage}:", {k: v for k, v in asdict(getattr(full, stage)).items() if v not in ({}, [], None)})

# %%
from _scale_up import print_scale_up


print_scale_up([], "srlm")
print(f"\nthis notebook ran in {elapsed():.1f} s")
