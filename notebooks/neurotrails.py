# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # NeuroTrails: sparse multi-head ensembles with dynamic sparse training
#
# **Paper:** Grooten et al., *NeuroTrails: Training with Dynamic Gradient Trails for Effective Ensembling*, arXiv
# [2505.17909](https://arxiv.org/abs/2505.17909). Docs: `docs/neurotrails.md`.
#
# NeuroTrails replaces an ensemble of separate networks by one network: the first blocks (and the embeddings) form a
# shared backbone, and the last `blocks_in_head` blocks, the final norm and the output layer are replicated into
# `num_trails` independently initialised "trails" (the paper's "heads"). Each trail is trained on its own
# cross-entropy, and the prediction is the mean of the trails' logits. Every 2-D weight is sparse (Erdős–Rényi–Kernel
# densities, 0.9 overall), and the connectivity evolves during training: every `update_frequency` steps a
# cosine-decaying share of each layer's weights is pruned (sampled ∝ |w|³) and as many are regrown where the
# gradient is largest (RigL). The sparsity keeps the trails different, which is what makes the ensemble work.
#
# In `hf_plugins` it is a transformers model type, `"neurotrails"` (`NeuroTrailsConfig`, `NeuroTrailsForCausalLM`):
# the decoder layers are transformers' Llama layers, masks are persistent buffers saved with the model,
# `model.sparsity_step(...)` (or `NeuroTrailsSparsityCallback` under the Trainer) applies masks and updates the
# topology, and every forward reports per-trail losses and the trails' diversity (argmax disagreement, pairwise
# KL). The paper reports lower perplexity than a single model and than a full 3-model ensemble (LLaMA-350M, C4:
# 22.8 / 21.3 / 20.7) at a fraction of the ensemble's parameters.

# %% [markdown]
# ## Hugging Face usage, one line
#
# ```python
# model = AutoModelForCausalLM.from_config(hf_plugins.NeuroTrailsConfig(vocab_size=len(tok)))  # + Trainer(callbacks=[NeuroTrailsSparsityCallback()])
# ```
# CLI: `hf-plugins train --model-config neurotrails --tokenizer tiny --method full`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

# notebooks/_common.py: offline from the Hub, hf_plugins registered, one torch thread, seed 0
from _common import elapsed, text_batches, train

# %%
from transformers import DataCollatorForLanguageModeling

from hf_plugins.testing import tiny_model, tiny_text_dataset, tiny_tokenizer


tok = tiny_tokenizer()
collate = DataCollatorForLanguageModeling(tok, mlm=False)  # for the held-out batch below
batches = text_batches(tok)  # 4 batches of 16 plain-text arithmetic problems


# %% [markdown]
# ## A 3-trail NeuroTrails vs a single dense model of the same depth
#
# Both have 4 blocks along any path; NeuroTrails shares 2 and replicates 2 per trail (2 + 3 × 2 = 8 blocks).
# The topology is updated every 10 steps (50 in the paper) so that a 60-step run sees several updates.

# %%
from transformers import AutoModelForCausalLM

from hf_plugins import NeuroTrailsConfig


STEPS = 60
config = NeuroTrailsConfig(
    vocab_size=len(tok),
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    num_trails=3,
    blocks_in_head=2,
    density=0.9,
    update_frequency=10,
    pad_token_id=tok.pad_token_id,
)
torch.manual_seed(0)
nt = AutoModelForCausalLM.from_config(config)
single = tiny_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_key_value_heads=4)
count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
print(f"parameters: NeuroTrails {count(nt):,} (dense storage, 90 % active)  single {count(single):,}")

nt.train()
opt = torch.optim.AdamW(nt.parameters(), lr=3e-3, weight_decay=0.0)
log = {"trail_losses": [], "trail_disagreement": [], "trail_kl": [], "prune_rate": {}}
for step in range(STEPS):
    out = nt(**batches[step % len(batches)])
    out.loss.backward()  # the sum of the trails' cross-entropies
    opt.step()
    update = nt.sparsity_step(opt, step=step, total_steps=STEPS, seed=0)  # masks, and every 10 steps prune/regrow
    opt.zero_grad()
    log["trail_losses"].append([float(x) for x in out.trail_losses])
    log["trail_disagreement"].append(float(out.trail_disagreement))
    log["trail_kl"].append(float(out.trail_kl))
    if update:
        log["prune_rate"][step] = update["prune_rate"]
single_losses = train(single, batches, lr=3e-3, steps=STEPS)
print("topology updates (step: prune rate):", {k: round(v, 3) for k, v in log["prune_rate"].items()})

# %%
trail = torch.tensor(log["trail_losses"])  # [steps, trails]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for h in range(trail.shape[1]):
    axes[0].plot(trail[:, h], lw=1, label=f"trail {h}")
axes[0].plot(single_losses, color="black", ls="--", label="single dense model")
axes[0].set(xlabel="optimizer step", ylabel="training loss", title="per-trail loss vs a single model")
axes[0].legend()
axes[1].plot(log["trail_disagreement"], color="C3", label="argmax disagreement (mean over pairs)")
ax2 = axes[1].twinx()
ax2.plot(log["trail_kl"], color="C4", label="mean pairwise KL(p_i || p_j)")
for s in log["prune_rate"]:
    axes[1].axvline(s, color="grey", lw=0.6, ls=":")
axes[1].set(xlabel="optimizer step", ylabel="disagreement", title="trail diversity (dotted: topology update)")
ax2.set_ylabel("KL")
axes[1].legend(loc="upper left", fontsize=8)
ax2.legend(loc="upper right", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Held-out loss of each trail alone, of the ensemble (the mean of the trails' logits, what `logits` holds) and of
# the single model; and the density of every masked matrix after training (ERK gives small matrices more
# density; layers that ERK would make denser than 1 are dense and carry no mask):

# %%
import torch.nn.functional as F


held = collate([{"input_ids": ids} for ids in tiny_text_dataset(tok, n=32, max_length=48, seed=1)["input_ids"]])
nt.eval()
single.eval()
with torch.no_grad():
    out = nt(**held, return_logits=True)
    ensemble = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), held["labels"][:, 1:].flatten(), ignore_index=-100)
    single_loss = single(**held).loss
losses = {f"trail {h}": float(x) for h, x in enumerate(out.trail_losses)}
losses.update({"ensemble (mean logits)": float(ensemble), "single dense": float(single_loss)})

masked = {
    n.replace(".weight_mask", ""): b.float().mean().item() for n, b in nt.named_buffers() if n.endswith("weight_mask")
}
fig, axes = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 2]})
axes[0].bar(list(losses), list(losses.values()), color=["C0", "C1", "C2", "C3", "black"])
axes[0].set(
    ylabel="held-out loss",
    ylim=(min(losses.values()) * 0.95, max(losses.values()) * 1.02),
    title="trails, their ensemble, a single model",
)
axes[0].tick_params(axis="x", rotation=30)
short = [n.replace("model.", "").replace("self_attn.", "").replace("mlp.", "") for n in masked]
axes[1].bar(range(len(masked)), list(masked.values()))
axes[1].set_xticks(range(len(masked)), short, rotation=90, fontsize=6)  # one bar per masked matrix
axes[1].set(ylabel="density", title="density of every masked matrix (ERK)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Scale it up
#
# The cell below prints the settings that the method's GPU benchmark uses (the script's own description; run the
# command on a CUDA machine) and every row measured so far for it in `benchmarks/RESULTS.md`.

# %%
from _scale_up import print_scale_up


print_scale_up(["neurotrails_bench.py"], "neurotrails")
print(f"\nthis notebook ran in {elapsed():.1f} s")
