# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SEFT: Sparsity Evolution Fine-Tuning of pruned LLMs (with one-shot pruning)
#
# **Paper:** Xiao, Ansell, Wu, Yin, Pechenizkiy, Liu, Mocanu, *SEFT: Sparsity Evolution Fine-Tuning*,
# arXiv [2505.24037](https://arxiv.org/abs/2505.24037) (CPAL 2026). Pruning: Wanda (Sun et al., arXiv 2306.11695)
# and SparseGPT (Frantar & Alistarh, arXiv 2301.00774). Docs: `docs/seft.md`, `docs/pruning.md`.
#
# SEFT fine-tunes a model that was already pruned one-shot (e.g. Wanda or SparseGPT at 50-80 % sparsity) and
# keeps its sparsity. Instead of LoRA it trains a sparse delta: k trainable entries per matrix whose positions
# evolve every ΔT optimizer steps. Each cycle drops the weakest deltas, grows new ones where the accumulated
# gradient is largest (also at pruned positions, "resurrection"), and re-prunes the support by the sensitivity
# |θ·∇θL| so that every matrix returns to exactly its target number of non-zeros.
#
# The result merges into a model with the base's sparsity in every matrix, unlike LoRA, whose merged delta is
# dense and destroys the sparsity (the paper's LoRA\* baseline has to re-prune after merging). In `hf_plugins`
# SEFT is a PEFT tuner type (`"SEFT"`) sharing LIFT's memory-lean sparse-delta layer; pruning is
# `hf_plugins.pruning` (`prune_model`, CLI `hf-plugins prune`).

# %% [markdown]
# ## Hugging Face usage, one line
#
# ```python
# model = get_peft_model(pruned_model, SeftConfig(density=0.01, task_type="CAUSAL_LM"))  # + Trainer(callbacks=[SeftCallback()])
# ```
# CLI: `hf-plugins prune --model smollm2 --method wanda --sparsity 0.5 --output-dir runs/w50`, then
# `hf-plugins train --model runs/w50 --method seft`. Below: a tiny Llama, "pre-trained" for a few seconds, pruned
# to 50 % with three methods, then fine-tuned with SEFT and with LoRA in a custom loop.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

# notebooks/_common.py: offline from the Hub, hf_plugins registered, one torch thread, seed 0
from _common import elapsed, text_batches, train, trainable

# %%
from transformers import DataCollatorForLanguageModeling

from hf_plugins.testing import tiny_model, tiny_tokenizer


tok = tiny_tokenizer()
collate = DataCollatorForLanguageModeling(tok, mlm=False)  # for the held-out batch below
batches = text_batches(tok)  # 4 batches of 16 plain-text arithmetic problems
SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}


# %%
import copy

from hf_plugins.pruning import arithmetic_texts, calibration_windows, prune_model


dense = tiny_model("llama", **SIZE)
pretrain_losses = train(dense, batches, lr=3e-3, steps=60)  # a stand-in for a pre-trained checkpoint
held_out = collate([{"input_ids": ids} for ids in tok(arithmetic_texts(num=32, seed=1))["input_ids"]])


@torch.no_grad()
def loss_of(model):
    model.eval()
    return model(**held_out).loss.item()


calib = calibration_windows(tok, arithmetic_texts(num=400), nsamples=16, seqlen=64)
pruned, reports = {}, {}
for method in ["magnitude", "wanda", "sparsegpt"]:
    pruned[method] = copy.deepcopy(dense)
    reports[method] = prune_model(pruned[method], method, sparsity=0.5, calibration=calib)
print(reports["wanda"].format_table())

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
labels = ["dense", "magnitude 50%", "Wanda 50%", "SparseGPT 50%"]
values = [loss_of(dense)] + [loss_of(pruned[m]) for m in ["magnitude", "wanda", "sparsegpt"]]
ax.bar(labels, values, color=["grey", "C0", "C1", "C2"])
ax.set(
    ylabel="held-out loss",
    ylim=(min(values) * 0.97, max(values) * 1.02),
    title="One-shot pruning of the tiny model (before fine-tuning)",
)
plt.show()

# %% [markdown]
# ## SEFT vs LoRA on the Wanda-pruned model
#
# Same budget: SEFT with `r=4` trains r·(m + n) entries per matrix, like LoRA r=4. SEFT cycles every 10 steps
# (`update_interval=10`, gradients accumulated over the last 5 steps of each cycle); a static-mask SEFT
# (`update_interval=None`) is the ablation.

# %%
from peft import LoraConfig, get_peft_model

from hf_plugins import SeftConfig


STEPS = 60
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
base = pruned["wanda"]
seft = get_peft_model(
    copy.deepcopy(base), SeftConfig(r=4, update_interval=10, accumulation_steps=5, task_type="CAUSAL_LM")
)
static = get_peft_model(copy.deepcopy(base), SeftConfig(r=4, update_interval=None, task_type="CAUSAL_LM"))
lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
print(f"trainable values: SEFT {trainable(seft):,}  LoRA {trainable(lora):,}")

# The two calls SeftCallback makes under the Trainer:
arm = lambda step: seft.seft_prepare_step(step, STEPS)  # noqa: E731  arms the gradient hooks of a grow window
cycle = lambda step, opt: seft.seft_after_optimizer_step(opt, step, STEPS)  # noqa: E731  drop / grow / re-prune
curves = {
    "SEFT r=4 (evolving)": train(seft, batches, lr=1e-2, steps=STEPS, before=arm, after=cycle),
    "SEFT r=4 (static mask)": train(static, batches, lr=1e-2, steps=STEPS),
    "LoRA r=4": train(lora, batches, lr=1e-2, steps=STEPS),
}
fig, ax = plt.subplots(figsize=(7, 4))
for name, losses in curves.items():
    ax.plot(losses, label=name)
ax.set(xlabel="optimizer step", ylabel="training loss", title="Fine-tuning the Wanda-50% tiny Llama")
ax.legend()
plt.show()


# %% [markdown]
# Reading the curves: the saw-tooth is the four training batches cycling. The jump of the evolving SEFT at step 10
# is its first cycle, which re-selects every position (`full_first_reselection=True`, the SpIEL default) and starts
# the new deltas at zero; later cycles replace a decaying share (0.2 → 0) of the deltas. On a 60-step toy run the
# evolving mask does not pay off yet; what SEFT guarantees regardless is the sparsity of the merged model:

# %% [markdown]
# ## Density per matrix after merging
#
# `merge_and_unload()` of SEFT gives back exactly the base's number of non-zeros in every matrix; LoRA's merged
# delta is dense.


# %%
def densities(model):
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "layers." in name:
            out[name.split("layers.")[-1]] = (module.weight != 0).float().mean().item()
    return out


rows = {
    "pruned base": densities(base),
    "SEFT merged": densities(seft.merge_and_unload()),
    "LoRA merged": densities(lora.merge_and_unload()),
}
names = list(rows["pruned base"])
x = torch.arange(len(names)).numpy()
fig, ax = plt.subplots(figsize=(9, 4))
for i, (label, d) in enumerate(rows.items()):
    ax.bar(x + (i - 1) * 0.27, [d[n] for n in names], width=0.27, label=label)
ax.set_xticks(x, names, rotation=60, ha="right")
ax.set(ylabel="density (non-zeros / m·n)", ylim=(0, 1.3), title="SEFT keeps the pruned sparsity; LoRA does not")
ax.legend(loc="upper left", ncol=3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Scale it up
#
# The cell below prints the settings that the method's GPU benchmark uses (the script's own description; run the
# command on a CUDA machine) and every row measured so far for it in `benchmarks/RESULTS.md`.

# %%
from _scale_up import print_scale_up


print_scale_up(["seft_bench.py", "seft_quality.py"], "seft")
print(f"\nthis notebook ran in {elapsed():.1f} s")
