# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SoS-1K: sum-of-squares data, an exact checker, prompts and rewards
#
# **Paper:** Li, Zhu, Cartis, Ji, Liu, *SoS1: O1 and R1-Like Reasoning LLMs are Sum-of-Square Solvers*, arXiv
# [2502.20545](https://arxiv.org/abs/2502.20545). Docs: `docs/sos.md`.
#
# The task: given a real polynomial as text, answer 1 if it is a sum of squares (SoS) of real polynomials and 0 if
# not. The paper builds about 1,000 polynomials in classes of growing difficulty (odd degree, quadratics, quartics,
# random Gram matrices that are dense, sparse, low-rank or ill-conditioned, each with a negative twin), writes
# reasoning criteria into a prompt, and fine-tunes a 7B model on ~1K examples to decide them (SoS-7B).
#
# `hf_plugins.sos` gives the pieces to do the same with the Hugging Face stack, and every label is **proved**: exact
# rational polynomials, a seeded generator per class whose items carry a certificate, and a checker that returns a
# verdict with evidence that can be re-verified (an exact point where p < 0, a Newton-polytope argument, or an exact
# rational PSD Gram matrix from an SDP rounded and projected exactly), plus prompts, a `\boxed{}` parser, a GRPO
# reward in TRL's `reward_funcs` signature and SFT rows written from the checker's evidence.

# %% [markdown]
# ## Hugging Face usage, one line
#
# ```python
# GRPOTrainer(model, reward_funcs=[hf_plugins.sos.sos_reward], train_dataset=to_dataset(make_grpo_rows(items)), ...)
# ```
# CLI: `hf-plugins sos check "(x1 - x2)^2 + 1"`, `hf-plugins sos generate --per-class 20 --out train.jsonl`,
# `hf-plugins sos eval --model smollm2 --file test.jsonl`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

# notebooks/_common.py: offline from the Hub, hf_plugins registered, one torch thread, seed 0
from _common import elapsed

# %%
from hf_plugins.sos import CheckerConfig, check_polynomial, generate_items, parse_boxed_answer, sos_reward


v = check_polynomial("x1^4*x2^2 + x1^2*x2^4 + 1 - 3*x1^2*x2^2")  # Motzkin: nonnegative but not SoS
print("Motzkin:", v.label, "|", v.method, "|", v.message[:120])
v = check_polynomial("(x1 - x2)^2 + 1")
print("(x1 - x2)^2 + 1:", v.label, "| squares:", v.evidence.squares(2))
v = check_polynomial("x1^3 + x2^2")
print("x1^3 + x2^2:", v.label, "|", v.method, "| evidence:", v.evidence)
print(
    parse_boxed_answer(r"first \boxed{0}, then \boxed{1}"),
    sos_reward(completions=[r"... \boxed{0}"], proved_label=[0]),
)

# %% [markdown]
# ## Accuracy per class: three deciders against the proved labels
#
# Generated items (3 per class) are decided by (1) a surface rule that a model could latch onto, "SoS iff the
# constant term is positive"; (2) the checker without the SDP, i.e. what exact cheap checks and a point search can
# prove; (3) the full checker. An undecided verdict counts as wrong.

# %%
CLASSES = [
    "odd_degree",
    "quadratic",
    "quadratic_negative",
    "gram_dense",
    "gram_dense_negative",
    "gram_sparse",
    "gram_sparse_negative",
    "nonneg_not_sos",
]
items = generate_items(CLASSES, per_class=3, seed=0)
assert all(it.verify() for it in items)  # each label is proved by its certificate
fast = {"hard_point_samples": 512, "hard_point_time_limit": 0.5}
deciders = {
    "constant > 0 rule": lambda it: (int(it.polynomial.constant_term() > 0), 0.0),
    "checker without SDP": lambda it: (lambda v: (v.proved_label, v.seconds))(
        check_polynomial(it.polynomial, CheckerConfig(use_sdp=False, **fast))
    ),
    "full checker": lambda it: (lambda v: (v.proved_label, v.seconds))(
        check_polynomial(it.polynomial, CheckerConfig(**fast))
    ),
}
acc, secs = {}, {}
for name, decide in deciders.items():
    for cls in CLASSES:
        results = [(decide(it), it.label) for it in items if it.cls == cls]
        acc[name, cls] = sum(pred == label for (pred, _), label in results) / len(results)
        secs[name, cls] = sum(s for (_, s), _ in results) / len(results)
print("example item:", items[0].cls, "label", items[0].label, "|", items[0].text)

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 4.5))
x = torch.arange(len(CLASSES)).numpy()
for i, name in enumerate(deciders):
    axes[0].bar(x + (i - 1) * 0.27, [acc[name, c] for c in CLASSES], width=0.27, label=name, color=f"C{i}")
    if name != "constant > 0 rule":
        axes[1].bar(
            x + (i - 1.5) * 0.4, [max(secs[name, c], 1e-3) for c in CLASSES], width=0.4, label=name, color=f"C{i}"
        )
for ax in axes:
    ax.set_xticks(x, CLASSES, rotation=30, ha="right")
    ax.legend(fontsize=8)
axes[0].set(ylabel="accuracy vs proved label", ylim=(0, 1.05), title="SoS accuracy per class")
axes[1].set(ylabel="seconds per polynomial", yscale="log", title="checker time per class")
plt.tight_layout()
plt.show()

# %% [markdown]
# The SoS classes need the Gram SDP: without it nothing proves "is SoS", while the negative classes fall to the
# exact point search. A model's answers are scored the same way: `evaluate_sos_model(model, tokenizer, items)`
# generates, parses `\\boxed{}` and reports accuracy against the proved labels (use a real instruct model; a
# tiny random one never writes a box). On the GPU (`benchmarks/sos_quality.py`, docs/sos.md), SmolLM2-135M-Instruct
# fine-tuned on balanced generated data scored 0.870 on held-out generated items (0.836 to 0.870 across three
# learning rates), against 0.548 for the two-coefficient surface rule, but 0.468 on the released SoS1 file, where
# the rule scores 0.841.

# %% [markdown]
# ## Scale it up
#
# The cell below prints the settings that the method's GPU benchmark uses (the script's own description; run the
# command on a CUDA machine) and every row measured so far for it in `benchmarks/RESULTS.md`.

# %%
from _scale_up import print_scale_up


print_scale_up(["sos_bench.py"], "sos")
print(f"\nthis notebook ran in {elapsed():.1f} s")
