# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LNS: LayerNorm Scaling against the curse of depth
#
# **Paper:** Sun et al., *The Curse of Depth in Large Language Models*, arXiv
# [2502.05795](https://arxiv.org/abs/2502.05795) (NeurIPS 2025). Docs: `docs/lns.md`.
#
# In Pre-LN transformers the variance of the residual stream grows with depth, so the update that a deep block
# adds is small relative to the stream and the block acts almost as an identity: deep blocks can be removed with
# little loss ("curse of depth"). LayerNorm Scaling multiplies the output of each block's two input norms by
# 1/√ℓ, ℓ the 1-based block index: h = x + Attn(LN(x)/√ℓ), out = h + MLP(LN(h)/√ℓ). Nothing new is learned;
# the paper reports 3.6 % (12 layers) to 7-8 % (24 layers) lower C4 perplexity than Pre-LN at equal tokens.
#
# In `hf_plugins` LNS is two thin subclasses of transformers' models, model types `lns_llama` and `lns_qwen2`
# (`LnsLlamaConfig`, `LnsQwen2Config`), which swap only the two block-input norms for a norm that folds the fixed
# factor into its gain; `to_lns(model)` converts an existing checkpoint, and `hf_plugins.models.lns.diagnostics`
# measures variance and angular distance by depth and the layer-pruning curve on any decoder.

# %% [markdown]
# ## Hugging Face usage, one line
#
# ```python
# model = AutoModelForCausalLM.from_config(hf_plugins.LnsLlamaConfig(hidden_size=256, num_hidden_layers=12))
# ```
# CLI: `hf-plugins train --model-config lns_llama ...` (and `--model-config llama` for the Pre-LN baseline);
# `hf-plugins depth-report MODEL --compare-lns --pruning --plot depth.png`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt

# notebooks/_common.py: offline from the Hub, hf_plugins registered, one torch thread, seed 0
from _common import elapsed, text_batches, train

# %%
from hf_plugins.testing import tiny_model, tiny_tokenizer


tok = tiny_tokenizer()
batches = text_batches(tok)  # 4 batches of 16 plain-text arithmetic problems


# %% [markdown]
# ## Pre-LN vs LNS, 12 blocks
#
# Two tiny 12-block Llamas with identical initial weights (same seed; LNS changes no parameter), trained on the
# same batches.

# %%
from hf_plugins.models.lns.diagnostics import depth_report, layer_pruning_curve


DEEP = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 12}
probe = batches[0]
reports, curves, pruning = {}, {}, {}
for name, family in [("Pre-LN (llama)", "llama"), ("LNS (lns_llama)", "lns_llama")]:
    model = tiny_model(family, **DEEP)
    reports[name, "init"] = depth_report(model, probe["input_ids"], probe["attention_mask"])
    curves[name] = train(model, batches, lr=3e-3, steps=60)
    reports[name, "trained"] = depth_report(model, probe["input_ids"], probe["attention_mask"])
    pruning[name] = layer_pruning_curve(model, probe["input_ids"], probe["attention_mask"])
    print(f"{name:16s} {type(model).__name__:22s} final loss {curves[name][-1]:.3f}  ppl {pruning[name]['full']:.2f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for i, name in enumerate(curves):
    for stage, ls in [("init", ":"), ("trained", "-")]:
        r = reports[name, stage]
        axes[0].plot(r["variance"], ls=ls, color=f"C{i}", marker="o", ms=3, label=f"{name}, {stage}")
        axes[1].plot(
            range(1, r["num_layers"] + 1),
            r["angular_distance"],
            ls=ls,
            color=f"C{i}",
            marker="o",
            ms=3,
            label=f"{name}, {stage}",
        )
    axes[2].plot(curves[name], color=f"C{i}", label=name)
axes[0].set(
    xlabel="depth (0 = embeddings)", ylabel="variance of the residual stream", yscale="log", title="variance by depth"
)
axes[1].set(xlabel="block", ylabel="angular distance d(h_l-1, h_l)", title="how much each block changes its input")
axes[2].set(xlabel="optimizer step", ylabel="training loss", title="training loss")
for ax in axes:
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The layer-pruning view of the same models: perplexity after skipping one block at a time. Under the curse of
# depth, skipping a deep block costs little, i.e. that block was doing little work.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for i, (name, p) in enumerate(pruning.items()):
    ax.plot(
        range(1, len(p["without"]) + 1), [w / p["full"] for w in p["without"]], marker="o", color=f"C{i}", label=name
    )
ax.axhline(1.0, color="grey", lw=0.8)
ax.set(xlabel="skipped block", ylabel="perplexity / full model's", yscale="log", title="layer-pruning curve")
ax.legend()
plt.show()

# %% [markdown]
# A 60-step toy is far from the paper's regime (billions of tokens), so read the plots for the mechanism: with
# LNS every block's contribution is scaled down by 1/√ℓ, so the residual-stream variance stays far lower and grows
# more slowly with depth (left). At this size and length both models still lean almost entirely on their first
# block (the pruning curve is flat after block 2 for both), so the toy cannot show the paper's "deep blocks come
# back to life" effect; `benchmarks/lns_quality.py` measures it on real pre-training runs (see below). Each arm at
# its best rate (3 seeds), LNS reached test perplexity 724 against Pre-LN's 837 at 12 layers (0.87x) and 649
# against 1,261 at 24 layers (0.51x): the gap grows with depth, as the paper argues, with far smaller variance
# growth. But every best rate was at the top of the swept range, at 24 layers Pre-LN had not left an early plateau
# in 100 steps, and removing a deep block changed nothing in either model (docs/lns.md).

# %% [markdown]
# ## Scale it up
#
# The cell below prints the settings that the method's GPU benchmark uses (the script's own description; run the
# command on a CUDA machine) and every row measured so far for it in `benchmarks/RESULTS.md`.

# %%
from _scale_up import print_scale_up


print_scale_up(["lns_bench.py", "lns_quality.py"], "lns")
print(f"\nthis notebook ran in {elapsed():.1f} s")
