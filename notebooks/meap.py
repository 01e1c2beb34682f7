# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # MEAP: Mask-Enhanced Autoregressive Prediction
#
# **Paper:** Zhuang et al., *Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More*, arXiv
# [2502.07490](https://arxiv.org/abs/2502.07490) (ICML 2025). Docs: `docs/meap.md`.
#
# MEAP replaces a small random fraction (15 % in pre-training, 10 % in fine-tuning) of the *input* tokens of a
# causal language model by a `[MASK]` token and otherwise trains with plain next-token prediction on the
# *original* tokens. Nothing else changes: the same decoder-only model, the same causal attention, no extra
# forward pass. The paper argues that masking makes attention more selective, and reports better key-information
# retrieval (needle in a haystack), long-context reasoning, and +11.77 points over next-token prediction in
# lost-in-the-middle multi-document QA after fine-tuning.
#
# In `hf_plugins` MEAP is a data collator, `DataCollatorForMEAP`, that wraps the collator the trainer would use
# anyway (transformers' `DataCollatorForLanguageModeling(mlm=False)`, or TRL's for SFT with packing / padding-free),
# so padding, labels and position ids stay the stock ones. `MEAPCallback` keeps evaluation unmasked and logs the
# mask fraction; masks are reproducible per (seed, rank, worker, batch), so a resumed run draws the same masks.

# %% [markdown]
# ## Hugging Face usage, one line
#
# ```python
# Trainer(..., data_collator=DataCollatorForMEAP(tokenizer=tok), callbacks=[MEAPCallback()])  # after add_mask_token(tok, model)
# ```
# CLI: `hf-plugins train --collator meap [--collator-arg mask_ratio=0.1]`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt

# notebooks/_common.py: offline from the Hub, hf_plugins registered, one torch thread, seed 0
from _common import elapsed

# %%
from transformers import DataCollatorForLanguageModeling

from hf_plugins import DataCollatorForMEAP, MEAPCallback, add_mask_token
from hf_plugins.testing import tiny_model, tiny_text_dataset, tiny_tokenizer


tok = tiny_tokenizer()
mask_id = add_mask_token(tok)  # the tiny tokenizer has no mask token: "[MASK]" becomes a special token
train_ds = tiny_text_dataset(tok, n=128, max_length=48, seed=0)
eval_ds = tiny_text_dataset(tok, n=32, max_length=48, seed=1)

collator = DataCollatorForMEAP(tokenizer=tok, mask_ratio=0.15, seed=0)  # pre-training mode
batch = collator([train_ds[i] for i in range(8)])
print("mask id", mask_id, "| keys", sorted(batch))
row = batch["input_ids"][0][batch["attention_mask"][0].bool()]
print("input :", tok.decode(row))
print("labels:", tok.decode(batch["labels"][0][batch["labels"][0] != -100]))
print(
    f"masked {collator.last_num_masked} of {collator.last_num_eligible} eligible tokens ({collator.last_mask_ratio:.1%})"
)

# %%
masked = (batch["input_ids"] == mask_id).float()
img = masked + 0.25 * (1 - batch["attention_mask"].float())  # grey: padding (never masked)
fig, ax = plt.subplots(figsize=(10, 2.8))
ax.imshow(img, cmap="Greys", aspect="auto", vmin=0, vmax=1, interpolation="nearest")
ax.set(xlabel="token position", ylabel="example", title="Which input positions MEAP masks (black), padding (grey)")
plt.show()

# %% [markdown]
# ## Next-token prediction vs MEAP with the stock Trainer
#
# Two tiny Llamas with the same initial weights, trained for 40 steps on the same data: one with transformers'
# collator, one with MEAP on top of it. Evaluation (every 10 steps, held-out problems) is unmasked for both:
# `MEAPCallback` switches masking off around evaluation.

# %%
import tempfile

from transformers import PrinterCallback, Trainer, TrainingArguments


workdir = tempfile.TemporaryDirectory()  # Trainer output_dir (nothing is saved: save_strategy="no")


def run(data_collator, callbacks):
    model = tiny_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    args = TrainingArguments(
        workdir.name,
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=data_collator,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # keep the notebook quiet (logs are in trainer.state.log_history)
    trainer.train()
    return trainer.state.log_history


base = DataCollatorForLanguageModeling(tok, mlm=False)
logs = {
    "next-token prediction": run(base, []),
    "MEAP (15 % masked)": run(
        DataCollatorForMEAP(base=base, tokenizer=tok, mask_ratio=0.15, seed=0), [MEAPCallback()]
    ),
}
print({k: round(v[-2].get("eval_loss", float("nan")), 3) for k, v in logs.items()})
print("MEAP log keys:", sorted(k for k in logs["MEAP (15 % masked)"][0] if k.startswith("meap")))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for i, (name, hist) in enumerate(logs.items()):
    tr = [(h["step"], h["loss"]) for h in hist if "loss" in h]
    ev = [(h["step"], h["eval_loss"]) for h in hist if "eval_loss" in h]
    axes[0].plot(*zip(*tr), marker="o", label=name, color=f"C{i}")
    axes[1].plot(*zip(*ev), marker="o", label=name, color=f"C{i}")
axes[0].set(xlabel="step", ylabel="training loss (MEAP: on masked inputs)", title="training loss")
axes[1].set(xlabel="step", ylabel="held-out loss (unmasked)", title="evaluation loss")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# MEAP's training loss is higher by construction (15 % of the inputs are hidden); what matters is the unmasked
# evaluation. A 40-step toy says nothing about MEAP's claims (retrieval and long-context QA at scale); it shows the
# mechanics: same model, same labels, masked inputs during training only. The GPU check
# (`benchmarks/meap_quality.py`: key-value retrieval after SFT of SmolLM2-135M-Instruct, 3 seeds) found no gain:
# both arms learn the task (0.163 before fine-tuning), MEAP reaches 0.983 exact match and NTP 0.991 (docs/meap.md).

# %% [markdown]
# ## Scale it up
#
# The cell below prints the settings that the method's GPU benchmark uses (the script's own description; run the
# command on a CUDA machine) and every row measured so far for it in `benchmarks/RESULTS.md`.

# %%
from _scale_up import print_scale_up


print_scale_up(["meap_bench.py", "meap_quality.py"], "meap")
print(f"\nthis notebook ran in {elapsed():.1f} s")
