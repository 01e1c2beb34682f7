# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LIFT: Low-rank Informed Sparse Fine-Tuning
#
# **Paper:** Liu et al., *Principal Weights Emerge after Rank Reduction for Reasoning-Focused Supervised
# Fine-Tuning*, arXiv [2506.00772](https://arxiv.org/abs/2506.00772) (ICML 2025). Docs: `docs/lift.md`.
#
# LIFT fine-tunes only a small set of "principal weights" in every weight matrix W (m × n). It first computes the
# best rank-q approximation W' of W (truncated SVD), then trains the k entries of W whose values in W' have the
# largest magnitude; everything else stays frozen. The budget is tied to LoRA's: k = r·(m + n) per matrix, so LIFT
# at rank r trains exactly as many numbers as LoRA at rank r. Every `update_interval` optimizer updates the
# selection is recomputed from the current weights (entries that stay keep their Adam moments).
#
# In `hf_plugins` LIFT is a PEFT tuner type (`"LIFT"`): each adapted `nn.Linear` stores k trainable fp32 values and
# their int32 positions, a memory-lean autograd function forms the weight gradient of one layer at a time and
# gathers it to the k entries, and the adapter file is sparse. The paper reports that LIFT beats full fine-tuning
# and LoRA on reasoning SFT while forgetting less of the source domain.

# %% [markdown]
# ## Hugging Face usage, one line
#
# ```python
# model = get_peft_model(base, LiftConfig(r=16, update_interval=400, task_type="CAUSAL_LM"))  # after `import hf_plugins`
# trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[LiftRefreshCallback()])  # refreshes masks
# ```
# CLI: `hf-plugins train --method lift --method-arg r=16`. Below: a custom loop on a tiny Llama (CPU, seconds),
# with the same calls the callback makes (`initialize_masks()`, `refresh_masks(optimizer)`).

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

# notebooks/_common.py: offline from the Hub, hf_plugins registered, one torch thread, seed 0
from _common import elapsed, text_batches, train, trainable

# %%
from hf_plugins.testing import tiny_model, tiny_text_dataset, tiny_tokenizer


tok = tiny_tokenizer()
batches = text_batches(tok)  # 4 batches of 16 plain-text arithmetic problems
SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}


# %% [markdown]
# ## LIFT vs LoRA vs full fine-tuning at the same budget
#
# A tiny random Llama (hidden 64, 2 blocks) is first "pre-trained" for 60 steps on one set of arithmetic texts
# (a stand-in for a checkpoint), then fine-tuned on new problems by three arms that see the same batches. LIFT
# and LoRA use rank 4 on the seven projections of every block, so they train the same number of values.

# %%
import copy

from peft import LoraConfig, get_peft_model

from hf_plugins import LiftConfig


pretrained = tiny_model("llama", **SIZE)
train(pretrained, batches, lr=3e-3, steps=60)
new = tiny_text_dataset(tok, n=64, max_length=48, seed=1)  # the fine-tuning data: other problems
ft_batches = text_batches(tok, new)

STEPS, INTERVAL = 40, 10
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
full = copy.deepcopy(pretrained)
lora = get_peft_model(copy.deepcopy(pretrained), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
lift = get_peft_model(copy.deepcopy(pretrained), LiftConfig(r=4, update_interval=INTERVAL, task_type="CAUSAL_LM"))
print(f"trainable values: full {trainable(full):,}  LoRA r4 {trainable(lora):,}  LIFT r4 {trainable(lift):,}")

lift.initialize_masks()  # the first selection (LiftRefreshCallback does this at on_train_begin)
refreshes = []


def refresh(step, opt):  # what LiftRefreshCallback does after each optimizer update (`step + 1` updates done)
    stats = lift.maybe_refresh(step + 1, opt, max_steps=STEPS)  # after updates T - 1, 2T - 1, ... (docs/lift.md)
    if stats is not None:
        refreshes.append(stats)


curves = {
    "full fine-tuning": train(full, ft_batches, lr=1e-3, steps=STEPS),
    "LoRA r=4": train(lora, ft_batches, lr=1e-2, steps=STEPS),
    "LIFT r=4": train(lift, ft_batches, lr=1e-2, steps=STEPS, after=refresh),
}
for r in refreshes:
    print(
        f"refresh of {r['matrices']:.0f} masks: {r['seconds'] * 1e3:.1f} ms, kept {r['kept_fraction']:.1%} of entries"
    )

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, losses in curves.items():
    ax.plot(losses, label=name)
for s in range(INTERVAL - 1, STEPS, INTERVAL):  # a refresh after update s changes step s (0-based) on
    ax.axvline(s - 0.5, color="grey", lw=0.8, ls=":")
ax.set(xlabel="optimizer step", ylabel="training loss", title="Fine-tuning a tiny Llama (dotted: LIFT mask refresh)")
ax.legend()
plt.show()

# %% [markdown]
# ## Mask density per matrix
#
# Each adapted matrix trains k = r·(m + n) entries. With `on_leave="keep"` (default) an entry that leaves the mask
# at a refresh keeps its learned change in a frozen residual, so the set of *changed* entries grows with every
# refresh while the *trained* set stays at k.

# %%
from hf_plugins.tuners.lift.layer import LiftLayer


names, trained, changed = [], [], []
for name, module in lift.named_modules():
    if isinstance(module, LiftLayer):
        numel = module.get_base_layer().weight.numel()
        k = module.lift_indices["default"].numel()
        residual = module.lift_residual_indices["default"].numel() if "default" in module.lift_residual_indices else 0
        names.append(name.split("layers.")[-1])
        trained.append(k / numel)
        changed.append((k + residual) / numel)

fig, ax = plt.subplots(figsize=(9, 4))
x = torch.arange(len(names)).numpy()
ax.bar(x - 0.2, trained, width=0.4, label="trained now (k / m·n)")
ax.bar(x + 0.2, changed, width=0.4, label="changed so far (mask + residual)")
ax.set_xticks(x, names, rotation=60, ha="right")
ax.set(ylabel="fraction of the matrix", title="LIFT r=4: mask density per matrix")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The adapter saves as a sparse file (positions + values + residual) and merges like any PEFT adapter:

# %%
import os
import tempfile

from peft import PeftModel


with tempfile.TemporaryDirectory() as d:
    lift.save_pretrained(d)
    files = {f: os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)}
    reloaded = PeftModel.from_pretrained(copy.deepcopy(pretrained), d).eval()
    lift.eval()
    with torch.no_grad():
        diff = (reloaded(**ft_batches[0]).logits - lift(**ft_batches[0]).logits).abs().max().item()
print(files)
print(f"max |logits(reloaded) - logits(trained)| = {diff:.2e}")

# %% [markdown]
# ## Scale it up
#
# The cell below prints the settings that the method's GPU benchmark uses (the script's own description; run the
# command on a CUDA machine) and every row measured so far for it in `benchmarks/RESULTS.md`.

# %%
from _scale_up import print_scale_up


print_scale_up(["lift_bench.py", "lift_quality.py"], "lift")
print(f"\nthis notebook ran in {elapsed():.1f} s")
