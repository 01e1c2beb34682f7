"""Write the walkthrough notebooks of `notebooks/` (one per method) with outputs stripped.

    python notebooks/_build.py            # every notebook
    python notebooks/_build.py lift seft  # only these

Each notebook: what the method does (two paragraphs, paper reference), the one-line Hugging Face usage, a run on a
tiny in-code model on CPU with at least one plot, and a "scale it up" cell that prints the GPU settings of the
method's benchmark script and the measured rows of `benchmarks/RESULTS.md`. `tests/test_notebooks.py` executes them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


HERE = Path(__file__).resolve().parent

SETUP = """
%matplotlib inline
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this notebook downloads anything
import time

import matplotlib.pyplot as plt
import torch

import hf_plugins  # registers every hf_plugins method with PEFT, the transformers Auto classes and the CLI

torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust on a busy machine)
torch.manual_seed(0)
T0 = time.perf_counter()
"""

SCALE_UP_MD = """
## Scale it up

The cell below prints the settings that the method's GPU benchmark uses (the script's own description; run the
command on a CUDA machine) and every row measured so far for it in `benchmarks/RESULTS.md`.
"""


def scale_up(scripts: list[str], keyword: str) -> str:
    """The "scale it up" cell: docstrings of `scripts` and the rows of benchmarks/RESULTS.md that they wrote
    (plus rows of the shared pre-training harness whose case names `keyword`)."""
    return f"""
import ast
from pathlib import Path

ROOT = Path(hf_plugins.__file__).resolve().parents[1]  # the repository (editable install)
SCRIPTS, KEYWORD = {scripts!r}, {keyword!r}
for script in SCRIPTS:
    path = ROOT / "benchmarks" / script
    if path.exists():
        print(f"=== python benchmarks/{{script}}\\n")
        print(ast.get_docstring(ast.parse(path.read_text())), "\\n")
    else:
        print(f"benchmarks/{{script}} is not in this checkout")

stems, rows = {{Path(s).stem for s in SCRIPTS}}, []
results = ROOT / "benchmarks" / "RESULTS.md"
for line in results.read_text().splitlines() if results.exists() else []:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 9 or cells[0] == "date" or set(cells[0]) <= set("-: "):
        continue
    script = Path(cells[1].split()[0]).stem if cells[1] else ""
    named = script in stems or KEYWORD in cells[1].lower()
    if named or (script == "pretrain" and KEYWORD in cells[4].lower()):
        rows.append(line)
if rows:
    print(f"{{len(rows)}} measured row(s) in benchmarks/RESULTS.md:\\n")
    print("| date | script | device | torch / transformers | case | metric | ours | baseline | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\\n".join(rows))
else:
    print(f"No measured rows for {{', '.join(SCRIPTS) or KEYWORD}} are recorded in benchmarks/RESULTS.md yet.")
print(f"\\nthis notebook ran in {{time.perf_counter() - T0:.1f}} s")
"""


TRAIN_HELPERS = """
from transformers import DataCollatorForLanguageModeling

from hf_plugins.testing import tiny_model, tiny_text_dataset, tiny_tokenizer

tok = tiny_tokenizer()
collate = DataCollatorForLanguageModeling(tok, mlm=False)
data = tiny_text_dataset(tok, n=64, max_length=48)  # plain-text arithmetic problems
batches = [collate([data[i] for i in range(j, j + 16)]) for j in range(0, 64, 16)]
SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)


def train(model, lr, steps=60, before=None, after=None, batches=batches):
    \"\"\"A plain PyTorch loop (what Trainer does, minus the bookkeeping): AdamW, one batch per step.\"\"\"
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        if after is not None:
            after(step, opt)
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
"""


LIFT = [
    (
        "md",
        """
# LIFT: Low-rank Informed Sparse Fine-Tuning

**Paper:** Liu et al., *Principal Weights Emerge after Rank Reduction for Reasoning-Focused Supervised
Fine-Tuning*, arXiv [2506.00772](https://arxiv.org/abs/2506.00772) (ICML 2025). Docs: `docs/lift.md`.

LIFT fine-tunes only a small set of "principal weights" in every weight matrix W (m × n). It first computes the
best rank-q approximation W' of W (truncated SVD), then trains the k entries of W whose values in W' have the
largest magnitude; everything else stays frozen. The budget is tied to LoRA's: k = r·(m + n) per matrix, so LIFT
at rank r trains exactly as many numbers as LoRA at rank r. Every `update_interval` optimizer updates the
selection is recomputed from the current weights (entries that stay keep their Adam moments).

In `hf_plugins` LIFT is a PEFT tuner type (`"LIFT"`): each adapted `nn.Linear` stores k trainable fp32 values and
their int32 positions, a memory-lean autograd function forms the weight gradient of one layer at a time and
gathers it to the k entries, and the adapter file is sparse. The paper reports that LIFT beats full fine-tuning
and LoRA on reasoning SFT while forgetting less of the source domain.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
model = get_peft_model(base, LiftConfig(r=16, update_interval=400, task_type="CAUSAL_LM"))  # after `import hf_plugins`
trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[LiftRefreshCallback()])  # refreshes masks
```
CLI: `hf-plugins train --method lift --method-arg r=16`. Below: a custom loop on a tiny Llama (CPU, seconds),
with the same calls the callback makes (`initialize_masks()`, `refresh_masks(optimizer)`).
""",
    ),
    ("code", SETUP),
    ("code", TRAIN_HELPERS),
    (
        "md",
        """
## LIFT vs LoRA vs full fine-tuning at the same budget

A tiny random Llama (hidden 64, 2 blocks) is first "pre-trained" for 60 steps on one set of arithmetic texts
(a stand-in for a checkpoint), then fine-tuned on new problems by three arms that see the same batches. LIFT
and LoRA use rank 4 on the seven projections of every block, so they train the same number of values.
""",
    ),
    (
        "code",
        """
import copy

from peft import LoraConfig, get_peft_model

from hf_plugins import LiftConfig

pretrained = tiny_model("llama", **SIZE)
train(pretrained, lr=3e-3, steps=60)
new = tiny_text_dataset(tok, n=64, max_length=48, seed=1)  # the fine-tuning data: other problems
ft_batches = [collate([new[i] for i in range(j, j + 16)]) for j in range(0, 64, 16)]

STEPS, INTERVAL = 40, 10
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
full = copy.deepcopy(pretrained)
lora = get_peft_model(copy.deepcopy(pretrained), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
lift = get_peft_model(copy.deepcopy(pretrained), LiftConfig(r=4, update_interval=INTERVAL, task_type="CAUSAL_LM"))
print(f"trainable values: full {trainable(full):,}  LoRA r4 {trainable(lora):,}  LIFT r4 {trainable(lift):,}")

lift.initialize_masks()  # the first selection (LiftRefreshCallback does this at on_train_begin)
refreshes = []


def refresh(step, opt):  # what LiftRefreshCallback does after every `update_interval` optimizer updates
    if (step + 1) % INTERVAL == 0 and step + 1 < STEPS:
        refreshes.append(lift.refresh_masks(opt))


curves = {
    "full fine-tuning": train(full, lr=1e-3, steps=STEPS, batches=ft_batches),
    "LoRA r=4": train(lora, lr=1e-2, steps=STEPS, batches=ft_batches),
    "LIFT r=4": train(lift, lr=1e-2, steps=STEPS, batches=ft_batches, after=refresh),
}
for r in refreshes:
    print(f"refresh of {r['matrices']:.0f} masks: {r['seconds'] * 1e3:.1f} ms, kept {r['kept_fraction']:.1%} of entries")
""",
    ),
    (
        "code",
        """
fig, ax = plt.subplots(figsize=(7, 4))
for name, losses in curves.items():
    ax.plot(losses, label=name)
for s in range(INTERVAL, STEPS, INTERVAL):
    ax.axvline(s - 0.5, color="grey", lw=0.8, ls=":")
ax.set(xlabel="optimizer step", ylabel="training loss", title="Fine-tuning a tiny Llama (dotted: LIFT mask refresh)")
ax.legend()
plt.show()
""",
    ),
    (
        "md",
        """
## Mask density per matrix

Each adapted matrix trains k = r·(m + n) entries. With `on_leave="keep"` (default) an entry that leaves the mask
at a refresh keeps its learned change in a frozen residual, so the set of *changed* entries grows with every
refresh while the *trained* set stays at k.
""",
    ),
    (
        "code",
        """
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
""",
    ),
    (
        "md",
        """
The adapter saves as a sparse file (positions + values + residual) and merges like any PEFT adapter:
""",
    ),
    (
        "code",
        """
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
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["lift_bench.py", "lift_quality.py"], "lift")),
]


SEFT = [
    (
        "md",
        """
# SEFT: Sparsity Evolution Fine-Tuning of pruned LLMs (with one-shot pruning)

**Paper:** Xiao, Ansell, Wu, Yin, Pechenizkiy, Liu, Mocanu, *SEFT: Sparsity Evolution Fine-Tuning*,
arXiv [2505.24037](https://arxiv.org/abs/2505.24037) (CPAL 2026). Pruning: Wanda (Sun et al., arXiv 2306.11695)
and SparseGPT (Frantar & Alistarh, arXiv 2301.00774). Docs: `docs/seft.md`, `docs/pruning.md`.

SEFT fine-tunes a model that was already pruned one-shot (e.g. Wanda or SparseGPT at 50-80 % sparsity) and
keeps its sparsity. Instead of LoRA it trains a sparse delta: k trainable entries per matrix whose positions
evolve every ΔT optimizer steps. Each cycle drops the weakest deltas, grows new ones where the accumulated
gradient is largest (also at pruned positions, "resurrection"), and re-prunes the support by the sensitivity
|θ·∇θL| so that every matrix returns to exactly its target number of non-zeros.

The result merges into a model with the base's sparsity in every matrix, unlike LoRA, whose merged delta is
dense and destroys the sparsity (the paper's LoRA\\* baseline has to re-prune after merging). In `hf_plugins`
SEFT is a PEFT tuner type (`"SEFT"`) sharing LIFT's memory-lean sparse-delta layer; pruning is
`hf_plugins.pruning` (`prune_model`, CLI `hf-plugins prune`).
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
model = get_peft_model(pruned_model, SeftConfig(density=0.01, task_type="CAUSAL_LM"))  # + Trainer(callbacks=[SeftCallback()])
```
CLI: `hf-plugins prune --model smollm2 --method wanda --sparsity 0.5 --output-dir runs/w50`, then
`hf-plugins train --model runs/w50 --method seft`. Below: a tiny Llama, "pre-trained" for a few seconds, pruned
to 50 % with three methods, then fine-tuned with SEFT and with LoRA in a custom loop.
""",
    ),
    ("code", SETUP),
    ("code", TRAIN_HELPERS),
    (
        "code",
        """
import copy

from hf_plugins.pruning import arithmetic_texts, calibration_windows, prune_model

dense = tiny_model("llama", **SIZE)
pretrain_losses = train(dense, lr=3e-3, steps=60)  # a stand-in for a pre-trained checkpoint
held_out = collate([dict(input_ids=ids) for ids in tok(arithmetic_texts(num=32, seed=1))["input_ids"]])


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
""",
    ),
    (
        "code",
        """
fig, ax = plt.subplots(figsize=(6, 3.5))
labels = ["dense", "magnitude 50%", "Wanda 50%", "SparseGPT 50%"]
values = [loss_of(dense)] + [loss_of(pruned[m]) for m in ["magnitude", "wanda", "sparsegpt"]]
ax.bar(labels, values, color=["grey", "C0", "C1", "C2"])
ax.set(ylabel="held-out loss", ylim=(min(values) * 0.97, max(values) * 1.02),
       title="One-shot pruning of the tiny model (before fine-tuning)")
plt.show()
""",
    ),
    (
        "md",
        """
## SEFT vs LoRA on the Wanda-pruned model

Same budget: SEFT with `r=4` trains r·(m + n) entries per matrix, like LoRA r=4. SEFT cycles every 10 steps
(`update_interval=10`, gradients accumulated over the last 5 steps of each cycle); a static-mask SEFT
(`update_interval=None`) is the ablation.
""",
    ),
    (
        "code",
        """
from peft import LoraConfig, get_peft_model

from hf_plugins import SeftConfig

STEPS = 60
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
base = pruned["wanda"]
seft = get_peft_model(copy.deepcopy(base), SeftConfig(r=4, update_interval=10, accumulation_steps=5, task_type="CAUSAL_LM"))
static = get_peft_model(copy.deepcopy(base), SeftConfig(r=4, update_interval=None, task_type="CAUSAL_LM"))
lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
print(f"trainable values: SEFT {trainable(seft):,}  LoRA {trainable(lora):,}")

# The two calls SeftCallback makes under the Trainer:
arm = lambda step: seft.seft_prepare_step(step, STEPS)  # noqa: E731  arms the gradient hooks of a grow window
cycle = lambda step, opt: seft.seft_after_optimizer_step(opt, step, STEPS)  # noqa: E731  drop / grow / re-prune
curves = {
    "SEFT r=4 (evolving)": train(seft, lr=1e-2, steps=STEPS, before=arm, after=cycle),
    "SEFT r=4 (static mask)": train(static, lr=1e-2, steps=STEPS),
    "LoRA r=4": train(lora, lr=1e-2, steps=STEPS),
}
fig, ax = plt.subplots(figsize=(7, 4))
for name, losses in curves.items():
    ax.plot(losses, label=name)
ax.set(xlabel="optimizer step", ylabel="training loss", title="Fine-tuning the Wanda-50% tiny Llama")
ax.legend()
plt.show()
""",
    ),
    (
        "md",
        """
Reading the curves: the saw-tooth is the four training batches cycling. The jump of the evolving SEFT at step 10
is its first cycle, which re-selects every position (`full_first_reselection=True`, the SpIEL default) and starts
the new deltas at zero; later cycles replace a decaying share (0.2 → 0) of the deltas. On a 60-step toy run the
evolving mask does not pay off yet; what SEFT guarantees regardless is the sparsity of the merged model:
""",
    ),
    (
        "md",
        """
## Density per matrix after merging

`merge_and_unload()` of SEFT gives back exactly the base's number of non-zeros in every matrix; LoRA's merged
delta is dense.
""",
    ),
    (
        "code",
        """
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
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["seft_bench.py", "seft_quality.py"], "seft")),
]


ALPHADECAY = [
    (
        "md",
        """
# AlphaDecay: module-wise weight decay from heavy-tailed spectra

**Paper:** *AlphaDecay: Module-wise Weight Decay for Heavy-Tailed Balancing in LLMs*, arXiv
[2506.14562](https://arxiv.org/abs/2506.14562) (NeurIPS 2025). Docs: `docs/alphadecay.md`.

Weight decay is usually one number for every matrix. AlphaDecay gives each weight matrix W its own decay. It
looks at the empirical spectral density (ESD) of W, the eigenvalues of WᵀW, fits a power law to its tail with
the Hill estimator (α = 1 + n / Σ ln(λ_j / λ_min), with λ_min the median eigenvalue) and maps α linearly from
[α_min, α_max] onto [s1·wd, s2·wd]. Heavy-tailed matrices (small α, "more learned structure", typically attention)
get weaker decay; light-tailed ones (typically the MLP) get stronger decay. The assignment is recomputed every
500 optimizer updates.

In `hf_plugins`, `AlphaDecay` is an optimizer *factory* for the Trainer (`optimizer_cls_and_kwargs`): it returns
a subclass of the base optimizer (AdamW by default) with one parameter group per analysed matrix; the refresh
runs inside `step()`, so no callback is needed, and everything round-trips through `state_dict()`. The paper
reports lower C4 perplexity than uniform decay for LLaMA 60M-1B at the same base decay.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
trainer = Trainer(model=model, args=args, train_dataset=ds, optimizer_cls_and_kwargs=AlphaDecay.from_args(args))
```
CLI: `hf-plugins train --optim alphadecay --weight-decay 0.1`; stand-alone spectra: `hf-plugins esd MODEL`.
Below: a plain loop with `AlphaDecay()(model, lr=..., weight_decay=...)` on a tiny Llama; the refresh interval
is shortened to 20 updates so that several refreshes happen in 80 steps.
""",
    ),
    ("code", SETUP),
    ("code", TRAIN_HELPERS),
    (
        "code",
        """
from hf_plugins import AlphaDecay

STEPS, INTERVAL, WD = 80, 20, 0.1
SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3)  # >= 50 eigenvalues per analysed matrix


def run(make_opt):
    torch.manual_seed(0)
    model = tiny_model("llama", **SIZE).train()
    opt, losses, tables = make_opt(model), [], []
    for step in range(STEPS):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()  # AlphaDecay refreshes the decays inside step() every INTERVAL updates
        opt.zero_grad()
        losses.append(loss.item())
        if hasattr(opt, "alphadecay_table") and step % INTERVAL == 0:
            tables.append((step, opt.alphadecay_table()))
    return model, losses, tables


_, adamw_losses, _ = run(lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=WD))
model, ad_losses, tables = run(lambda m: AlphaDecay()(m, lr=3e-3, weight_decay=WD, interval=INTERVAL))
for name, row in list(tables[-1][1].items())[:6]:
    print(f"{name:40s} alpha {row['alpha']:.2f}  weight decay {row['weight_decay']:.4f}")
""",
    ),
    (
        "code",
        """
last = tables[-1][1]
names = list(last)
short = [n.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", "") for n in names]
colors = ["C0" if "attn" in n else "C1" for n in names]
fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
axes[0].bar(short, [last[n]["alpha"] for n in names], color=colors)
axes[0].set(ylabel="Hill alpha", title=f"AlphaDecay after {tables[-1][0]} updates (blue: attention, orange: MLP)")
axes[1].bar(short, [last[n]["weight_decay"] for n in names], color=colors)
axes[1].axhline(WD, color="grey", ls=":", label=f"uniform AdamW decay {WD}")
axes[1].set(ylabel="weight decay")
axes[1].legend()
plt.xticks(rotation=60, ha="right")
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        """
Alpha of every analysed matrix at each refresh (the first schedule comes from the random initial weights, where
all α are nearly equal), and the training loss against uniform AdamW at the same base decay:
""",
    ),
    (
        "code",
        """
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for n in names:
    axes[0].plot([s for s, _ in tables], [t[n]["alpha"] for _, t in tables], color="C0" if "attn" in n else "C1",
                 alpha=0.7)
axes[0].set(xlabel="optimizer step", ylabel="Hill alpha", title="alpha per matrix over training")
axes[1].plot(adamw_losses, label=f"AdamW, weight decay {WD}")
axes[1].plot(ad_losses, label=f"AlphaDecay(AdamW), base {WD}")
axes[1].set(xlabel="optimizer step", ylabel="training loss", title="tiny Llama, same batches")
axes[1].legend()
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        """
On 80 steps of a tiny model the decays barely change the loss (the curves overlap): the paper's gains are in
perplexity after thousands of pre-training steps. What the plots show is the mechanism: the attention matrices
develop heavier tails (smaller α) than the MLP and therefore get weaker decay.
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["alphadecay_bench.py", "alphadecay_quality.py"], "alphadecay")),
]

STABLE_SPAM = [
    (
        "md",
        """
# Stable-SPAM: spike-aware Adam

**Paper:** Huang et al., *Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam*, arXiv
[2502.17055](https://arxiv.org/abs/2502.17055) (v1/v2). Docs: `docs/stable_spam.md`.

Low-precision LLM training suffers loss spikes driven by a few huge gradient entries. Stable-SPAM keeps AdamW but
pre-processes each tensor's gradient: **AdaClip** scales entries above a running, bias-corrected estimate of
max|g| down to that threshold; **AdaGN** rescales the whole (clipped) gradient so its norm follows running
moments of the gradient norm; **MoRet** resets Adam's moments every ΔT updates. β1 and the clipping EMA follow a
cosine from 1 to `eta_min` over the run.

`hf_plugins.StableSPAM` is a `torch.optim.Optimizer` (foreach by default, optional fused Triton kernels on CUDA)
that the Trainer takes through `optimizer_cls_and_kwargs`; `OptimizerStatsCallback` logs how many entries were
clipped. The paper reports that 4-bit Stable-SPAM matches or beats BF16 Adam on LLaMA-350M/1B C4 pre-training
and trains stably at learning rates where Adam diverges.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
trainer = Trainer(model=model, args=args, train_dataset=ds, optimizer_cls_and_kwargs=StableSPAM.from_args(args))
```
(pass `max_grad_norm=0` in `TrainingArguments` for the paper's setting: no global clipping). CLI:
`hf-plugins train --optim stable_spam --max-grad-norm 0`. Below: a tiny Llama where we inject gradient spikes
(every gradient × 1000 at three steps, a stand-in for the spikes of low-precision training) and compare AdamW,
AdamW with global norm clipping (HF's default `max_grad_norm=1`), and Stable-SPAM.
""",
    ),
    ("code", SETUP),
    ("code", TRAIN_HELPERS),
    (
        "code",
        """
from hf_plugins import StableSPAM, hf_param_groups

STEPS, SPIKES, SCALE, LR = 80, (20, 40, 60), 1000.0, 3e-3


def run(make_opt, clip=None, spikes=SPIKES):
    torch.manual_seed(0)
    model = tiny_model("llama", **SIZE).train()
    opt, losses, clipped = make_opt(model), [], []
    for step in range(STEPS):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        if step in spikes:
            for p in model.parameters():
                p.grad.mul_(SCALE)  # the spike
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if isinstance(opt, StableSPAM):
            clipped.append(opt.pop_stats()["stable_spam/clipped_fraction"])
    return losses, clipped


runs = {
    "AdamW, no spikes (reference)": run(lambda m: torch.optim.AdamW(m.parameters(), lr=LR), spikes=())[0],
    "AdamW": run(lambda m: torch.optim.AdamW(m.parameters(), lr=LR))[0],
    "AdamW + clip_grad_norm 1.0": run(lambda m: torch.optim.AdamW(m.parameters(), lr=LR), clip=1.0)[0],
}
runs["Stable-SPAM"], clipped = run(lambda m: StableSPAM(hf_param_groups(m, weight_decay=0.0), lr=LR, total_T=STEPS))
for name, losses in runs.items():
    print(f"{name:30s} final loss {sum(losses[-5:]) / 5:.3f}")
""",
    ),
    (
        "code",
        """
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, losses in runs.items():
    axes[0].plot(losses, label=name, ls=":" if "reference" in name else "-")
for s in SPIKES:
    axes[0].axvline(s, color="red", lw=0.6, alpha=0.5)
axes[0].set(xlabel="optimizer step", ylabel="training loss", title="gradient spikes (red) at steps 20, 40, 60")
axes[0].legend(fontsize=8)
axes[1].plot(clipped, color="C3")
axes[1].set(xlabel="optimizer step", ylabel="fraction of entries clipped", title="Stable-SPAM AdaClip")
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        """
What the toy shows: a spike inflates Adam's second moment v by up to 10⁶, and with β2 = 0.999 it decays over
thousands of steps, so plain AdamW's effective step stays tiny long after each spike and its loss stalls.
Stable-SPAM clips the spiking entries to a running max (the right panel: the clipped fraction jumps at the
spikes) and rescales the gradient norm, so it recovers much better than AdamW. In this synthetic case every
entry of every gradient is multiplied by the same factor, which is exactly what global norm clipping undoes, so
`clip_grad_norm_` does best here; Stable-SPAM also pays a little for its norm statistics on a run this short
(without spikes: final loss ~0.61 vs AdamW's ~0.54). The paper's claim is about long low-precision runs where
spikes sit in few entries; `benchmarks/stable_spam_quality.py` checks it on the GPU.
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["stable_spam_bench.py", "stable_spam_quality.py"], "stable_spam")),
]


MEAP = [
    (
        "md",
        """
# MEAP: Mask-Enhanced Autoregressive Prediction

**Paper:** Zhuang et al., *Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More*, arXiv
[2502.07490](https://arxiv.org/abs/2502.07490) (ICML 2025). Docs: `docs/meap.md`.

MEAP replaces a small random fraction (15 % in pre-training, 10 % in fine-tuning) of the *input* tokens of a
causal language model by a `[MASK]` token and otherwise trains with plain next-token prediction on the
*original* tokens. Nothing else changes: the same decoder-only model, the same causal attention, no extra
forward pass. The paper argues that masking makes attention more selective, and reports better key-information
retrieval (needle in a haystack), long-context reasoning, and +11.77 points over next-token prediction in
lost-in-the-middle multi-document QA after fine-tuning.

In `hf_plugins` MEAP is a data collator, `DataCollatorForMEAP`, that wraps the collator the trainer would use
anyway (transformers' `DataCollatorForLanguageModeling(mlm=False)`, or TRL's for SFT with packing / padding-free),
so padding, labels and position ids stay the stock ones. `MEAPCallback` keeps evaluation unmasked and logs the
mask fraction; masks are reproducible per (seed, rank, worker, batch), so a resumed run draws the same masks.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
Trainer(..., data_collator=DataCollatorForMEAP(tokenizer=tok), callbacks=[MEAPCallback()])  # after add_mask_token(tok, model)
```
CLI: `hf-plugins train --collator meap [--collator-arg mask_ratio=0.1]`.
""",
    ),
    ("code", SETUP),
    (
        "code",
        """
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
print(f"masked {collator.last_num_masked} of {collator.last_num_eligible} eligible tokens ({collator.last_mask_ratio:.1%})")
""",
    ),
    (
        "code",
        """
masked = (batch["input_ids"] == mask_id).float()
img = masked + 0.25 * (1 - batch["attention_mask"].float())  # grey: padding (never masked)
fig, ax = plt.subplots(figsize=(10, 2.8))
ax.imshow(img, cmap="Greys", aspect="auto", vmin=0, vmax=1, interpolation="nearest")
ax.set(xlabel="token position", ylabel="example", title="Which input positions MEAP masks (black), padding (grey)")
plt.show()
""",
    ),
    (
        "md",
        """
## Next-token prediction vs MEAP with the stock Trainer

Two tiny Llamas with the same initial weights, trained for 40 steps on the same data: one with transformers'
collator, one with MEAP on top of it. Evaluation (every 10 steps, held-out problems) is unmasked for both:
`MEAPCallback` switches masking off around evaluation.
""",
    ),
    (
        "code",
        """
import tempfile

from transformers import PrinterCallback, Trainer, TrainingArguments


workdir = tempfile.TemporaryDirectory()  # Trainer output_dir (nothing is saved: save_strategy="no")


def run(data_collator, callbacks):
    model = tiny_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    args = TrainingArguments(
        workdir.name, max_steps=40, per_device_train_batch_size=16, learning_rate=3e-3,
        lr_scheduler_type="constant", eval_strategy="steps", eval_steps=10, logging_steps=5, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=data_collator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # keep the notebook quiet (logs are in trainer.state.log_history)
    trainer.train()
    return trainer.state.log_history


base = DataCollatorForLanguageModeling(tok, mlm=False)
logs = {
    "next-token prediction": run(base, []),
    "MEAP (15 % masked)": run(DataCollatorForMEAP(base=base, tokenizer=tok, mask_ratio=0.15, seed=0), [MEAPCallback()]),
}
print({k: round(v[-2].get("eval_loss", float("nan")), 3) for k, v in logs.items()})
print("MEAP log keys:", sorted(k for k in logs["MEAP (15 % masked)"][0] if k.startswith("meap")))
""",
    ),
    (
        "code",
        """
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
""",
    ),
    (
        "md",
        """
MEAP's training loss is higher by construction (15 % of the inputs are hidden); what matters is the unmasked
evaluation. A 40-step toy says nothing about MEAP's claims (retrieval and long-context QA at scale); it shows the
mechanics: same model, same labels, masked inputs during training only.
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["meap_bench.py", "meap_quality.py"], "meap")),
]


COE = [
    (
        "md",
        """
# Chain-of-Experts (CoE)

**Paper:** Wang et al., *Chain-of-Experts: Unlocking the Communication Power of Mixture-of-Experts Models*,
arXiv [2506.18945](https://arxiv.org/abs/2506.18945). Docs: `docs/coe.md`.

A Mixture-of-Experts (MoE) layer sends each token once through K of N experts. Chain-of-Experts sends it through
C *iterations* over the same pool of experts: iteration t has its own router, which reads the output of
iteration t-1, and adds its experts' gated output to it (an inner residual):
x(t) = x(t-1) + Σ_{i ∈ TopK(s_t)} g_{t,i} FFN_i(x(t-1)). With the same parameters, CoE(C=2, K=4) uses the expert
compute of MoE(K=8) but can form far more expert combinations; the paper reports lower validation loss at equal
compute (MetaMathQA: 1.20 → 1.12) and the loss of a 2× deeper MoE at 42 % less memory.

In `hf_plugins` CoE is a transformers model type, `"coe"` (`CoEConfig`, `CoEForCausalLM`, registered with the
Auto classes): attention, RoPE, KV cache and the decoder-layer plumbing are transformers' Llama classes, the
experts are fused 3-D tensors run through transformers' experts interface (`grouped_mm`), and the
sequence-level balance loss of every (layer, iteration) is reported in `out.aux_losses`.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
model = AutoModelForCausalLM.from_config(CoEConfig(vocab_size=len(tok), num_iterations=2, num_experts_per_tok=4))
```
CLI: `hf-plugins train --model-config coe --tokenizer tiny --method full` (`--model-arg num_iterations=1` is the
MoE baseline).
""",
    ),
    ("code", SETUP),
    ("code", TRAIN_HELPERS),
    (
        "md",
        """
## CoE(C=2, K=2) vs MoE(C=1, K=4) at equal expert compute

Both models: 2 layers, 8 experts of width 32, no shared expert, same initial weights where they coincide.
Each token runs 4 expert FFNs per layer in both.
""",
    ),
    (
        "code",
        """
from transformers import AutoModelForCausalLM

from hf_plugins import CoEConfig


def coe(iterations, k):
    config = CoEConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        num_experts=8, num_experts_per_tok=k, num_iterations=iterations, moe_intermediate_size=32,
        n_shared_experts=0, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


probe = batches[0]
valid = probe["attention_mask"].reshape(-1).bool()


@torch.no_grad()
def expert_load(model):
    \"\"\"Fraction of routed (token, slot) pairs per expert, for every (layer, iteration): [L*C, N].\"\"\"
    model.eval()
    out = model(**probe, output_router_logits=True)
    model.train()
    k = model.config.num_experts_per_tok
    loads = []
    for logits in out.router_logits:  # one [tokens, experts] tensor per (layer, iteration), layer-major
        top = logits[valid].topk(k, dim=-1).indices
        loads.append(torch.bincount(top.reshape(-1), minlength=logits.shape[-1]).float() / top.numel())
    return torch.stack(loads)


models = {"CoE C=2, K=2": coe(2, 2), "MoE C=1, K=4": coe(1, 4)}
curves, load_history = {}, {}
for name, model in models.items():
    history = []
    curves[name] = train(model, lr=3e-3, steps=60, after=lambda step, opt: history.append(expert_load(model))
                         if step % 10 == 9 else None)
    load_history[name] = history
    print(f"{name}: final loss {curves[name][-1]:.3f}, aux losses [layers, iterations]:\\n",
          model(**probe).aux_losses.detach())  # probe holds labels; training mode
""",
    ),
    (
        "code",
        """
fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [1.2, 1, 1]})
for name, losses in curves.items():
    axes[0].plot(losses, label=name)
axes[0].set(xlabel="optimizer step", ylabel="training loss (incl. 0.001 x aux)", title="equal expert compute")
axes[0].legend()
for ax, (name, history) in zip(axes[1:], load_history.items()):
    load = history[-1]
    c = models[name].config.num_iterations
    im = ax.imshow(load, cmap="viridis", vmin=0, aspect="auto")
    ax.set_yticks(range(load.shape[0]), [f"layer {i // c}, iter {i % c + 1}" for i in range(load.shape[0])])
    ax.set(xlabel="expert", title=f"{name}: expert load after 60 steps")
    fig.colorbar(im, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        """
Each row is one router: CoE has two per layer, and its second iteration routes the *updated* token (x(1)), so
its load pattern differs from the first. Load imbalance (largest expert share / uniform share) per router over
training:
""",
    ),
    (
        "code",
        """
fig, ax = plt.subplots(figsize=(7, 4))
steps = [10 * (i + 1) for i in range(len(load_history["CoE C=2, K=2"]))]
for name, history in load_history.items():
    c = models[name].config.num_iterations
    imbalance = torch.stack([h.max(dim=1).values * h.shape[1] for h in history])  # [checkpoints, routers]
    for r in range(imbalance.shape[1]):
        ax.plot(steps, imbalance[:, r], marker="o", ls="-" if c == 2 else "--",
                label=f"{name}: layer {r // c}, iter {r % c + 1}")
ax.axhline(1.0, color="grey", lw=0.8)
ax.set(xlabel="optimizer step", ylabel="max load / uniform load", title="expert load imbalance per router")
ax.legend(fontsize=7)
plt.show()
""",
    ),
    (
        "md",
        """
On a 60-step toy with 8 experts the two models train alike (the MoE is even slightly ahead here), and CoE's
routers are somewhat less balanced early on. The paper's gain (MetaMathQA, 64 experts, 1,000 steps) is what
`benchmarks/coe_quality.py` checks on the GPU; the notebook shows the mechanics: one router per iteration, each
with its own load pattern, at the same expert compute.
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["coe_bench.py", "coe_quality.py"], "coe")),
]


LNS = [
    (
        "md",
        """
# LNS: LayerNorm Scaling against the curse of depth

**Paper:** Sun et al., *The Curse of Depth in Large Language Models*, arXiv
[2502.05795](https://arxiv.org/abs/2502.05795) (NeurIPS 2025). Docs: `docs/lns.md`.

In Pre-LN transformers the variance of the residual stream grows with depth, so the update that a deep block
adds is small relative to the stream and the block acts almost as an identity: deep blocks can be removed with
little loss ("curse of depth"). LayerNorm Scaling multiplies the output of each block's two input norms by
1/√ℓ, ℓ the 1-based block index: h = x + Attn(LN(x)/√ℓ), out = h + MLP(LN(h)/√ℓ). Nothing new is learned;
the paper reports 3.6 % (12 layers) to 7-8 % (24 layers) lower C4 perplexity than Pre-LN at equal tokens.

In `hf_plugins` LNS is two thin subclasses of transformers' models, model types `lns_llama` and `lns_qwen2`
(`LnsLlamaConfig`, `LnsQwen2Config`), which swap only the two block-input norms for a norm that folds the fixed
factor into its gain; `to_lns(model)` converts an existing checkpoint, and `hf_plugins.models.lns.diagnostics`
measures variance and angular distance by depth and the layer-pruning curve on any decoder.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
model = AutoModelForCausalLM.from_config(hf_plugins.LnsLlamaConfig(hidden_size=256, num_hidden_layers=12))
```
CLI: `hf-plugins train --model-config lns_llama ...` (and `--model-config llama` for the Pre-LN baseline);
`hf-plugins depth-report MODEL --compare-lns --pruning --plot depth.png`.
""",
    ),
    ("code", SETUP),
    ("code", TRAIN_HELPERS),
    (
        "md",
        """
## Pre-LN vs LNS, 12 blocks

Two tiny 12-block Llamas with identical initial weights (same seed; LNS changes no parameter), trained on the
same batches.
""",
    ),
    (
        "code",
        """
from hf_plugins.models.lns.diagnostics import depth_report, layer_pruning_curve

DEEP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=12)
probe = batches[0]
reports, curves, pruning = {}, {}, {}
for name, family in [("Pre-LN (llama)", "llama"), ("LNS (lns_llama)", "lns_llama")]:
    model = tiny_model(family, **DEEP)
    reports[name, "init"] = depth_report(model, probe["input_ids"], probe["attention_mask"])
    curves[name] = train(model, lr=3e-3, steps=60)
    reports[name, "trained"] = depth_report(model, probe["input_ids"], probe["attention_mask"])
    pruning[name] = layer_pruning_curve(model, probe["input_ids"], probe["attention_mask"])
    print(f"{name:16s} {type(model).__name__:22s} final loss {curves[name][-1]:.3f}  ppl {pruning[name]['full']:.2f}")
""",
    ),
    (
        "code",
        """
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for i, name in enumerate(curves):
    for stage, ls in [("init", ":"), ("trained", "-")]:
        r = reports[name, stage]
        axes[0].plot(r["variance"], ls=ls, color=f"C{i}", marker="o", ms=3, label=f"{name}, {stage}")
        axes[1].plot(range(1, r["num_layers"] + 1), r["angular_distance"], ls=ls, color=f"C{i}", marker="o", ms=3,
                     label=f"{name}, {stage}")
    axes[2].plot(curves[name], color=f"C{i}", label=name)
axes[0].set(xlabel="depth (0 = embeddings)", ylabel="variance of the residual stream", yscale="log",
            title="variance by depth")
axes[1].set(xlabel="block", ylabel="angular distance d(h_l-1, h_l)", title="how much each block changes its input")
axes[2].set(xlabel="optimizer step", ylabel="training loss", title="training loss")
for ax in axes:
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        """
The layer-pruning view of the same models: perplexity after skipping one block at a time. Under the curse of
depth, skipping a deep block costs little, i.e. that block was doing little work.
""",
    ),
    (
        "code",
        """
fig, ax = plt.subplots(figsize=(7, 4))
for i, (name, p) in enumerate(pruning.items()):
    ax.plot(range(1, len(p["without"]) + 1), [w / p["full"] for w in p["without"]], marker="o", color=f"C{i}",
            label=name)
ax.axhline(1.0, color="grey", lw=0.8)
ax.set(xlabel="skipped block", ylabel="perplexity / full model's", yscale="log", title="layer-pruning curve")
ax.legend()
plt.show()
""",
    ),
    (
        "md",
        """
A 60-step toy is far from the paper's regime (billions of tokens), so read the plots for the mechanism: with
LNS every block's contribution is scaled down by 1/√ℓ, so the residual-stream variance stays far lower and grows
more slowly with depth (left). At this size and length both models still lean almost entirely on their first
block (the pruning curve is flat after block 2 for both), so the toy cannot show the paper's "deep blocks come
back to life" effect; `benchmarks/lns_quality.py` measures it on real pre-training runs (see below).
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["lns_bench.py", "lns_quality.py"], "lns")),
]


NEUROTRAILS = [
    (
        "md",
        """
# NeuroTrails: sparse multi-head ensembles with dynamic sparse training

**Paper:** Grooten et al., *NeuroTrails: Training with Dynamic Gradient Trails for Effective Ensembling*, arXiv
[2505.17909](https://arxiv.org/abs/2505.17909). Docs: `docs/neurotrails.md`.

NeuroTrails replaces an ensemble of separate networks by one network: the first blocks (and the embeddings) form a
shared backbone, and the last `blocks_in_head` blocks, the final norm and the output layer are replicated into
`num_trails` independently initialised "trails" (the paper's "heads"). Each trail is trained on its own
cross-entropy, and the prediction is the mean of the trails' logits. Every 2-D weight is sparse (Erdős–Rényi–Kernel
densities, 0.9 overall), and the connectivity evolves during training: every `update_frequency` steps a
cosine-decaying share of each layer's weights is pruned (sampled ∝ |w|³) and as many are regrown where the
gradient is largest (RigL). The sparsity keeps the trails different, which is what makes the ensemble work.

In `hf_plugins` it is a transformers model type, `"neurotrails"` (`NeuroTrailsConfig`, `NeuroTrailsForCausalLM`):
the decoder layers are transformers' Llama layers, masks are persistent buffers saved with the model,
`model.sparsity_step(...)` (or `NeuroTrailsSparsityCallback` under the Trainer) applies masks and updates the
topology, and every forward reports per-trail losses and the trails' diversity (argmax disagreement, pairwise
KL). The paper reports lower perplexity than a single model and than a full 3-model ensemble (LLaMA-350M, C4:
22.8 / 21.3 / 20.7) at a fraction of the ensemble's parameters.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
model = AutoModelForCausalLM.from_config(hf_plugins.NeuroTrailsConfig(vocab_size=len(tok)))  # + Trainer(callbacks=[NeuroTrailsSparsityCallback()])
```
CLI: `hf-plugins train --model-config neurotrails --tokenizer tiny --method full`.
""",
    ),
    ("code", SETUP),
    ("code", TRAIN_HELPERS),
    (
        "md",
        """
## A 3-trail NeuroTrails vs a single dense model of the same depth

Both have 4 blocks along any path; NeuroTrails shares 2 and replicates 2 per trail (2 + 3 × 2 = 8 blocks).
The topology is updated every 10 steps (50 in the paper) so that a 60-step run sees several updates.
""",
    ),
    (
        "code",
        """
from transformers import AutoModelForCausalLM

from hf_plugins import NeuroTrailsConfig

STEPS = 60
config = NeuroTrailsConfig(
    vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, num_trails=3, blocks_in_head=2, density=0.9, update_frequency=10,
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
single_losses = train(single, lr=3e-3, steps=STEPS)
print("topology updates (step: prune rate):", {k: round(v, 3) for k, v in log["prune_rate"].items()})
""",
    ),
    (
        "code",
        """
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
""",
    ),
    (
        "md",
        """
Held-out loss of each trail alone, of the ensemble (the mean of the trails' logits, what `logits` holds) and of
the single model; and the density of every masked matrix after training (ERK gives small matrices more
density; layers that ERK would make denser than 1 are dense and carry no mask):
""",
    ),
    (
        "code",
        """
import torch.nn.functional as F

held = collate([dict(input_ids=ids) for ids in tiny_text_dataset(tok, n=32, max_length=48, seed=1)["input_ids"]])
nt.eval()
single.eval()
with torch.no_grad():
    out = nt(**held, return_logits=True)
    ensemble = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), held["labels"][:, 1:].flatten(), ignore_index=-100)
    single_loss = single(**held).loss
losses = {f"trail {h}": float(x) for h, x in enumerate(out.trail_losses)}
losses.update({"ensemble (mean logits)": float(ensemble), "single dense": float(single_loss)})

masked = {n.replace(".weight_mask", ""): b.float().mean().item() for n, b in nt.named_buffers() if n.endswith("weight_mask")}
fig, axes = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 2]})
axes[0].bar(list(losses), list(losses.values()), color=["C0", "C1", "C2", "C3", "black"])
axes[0].set(ylabel="held-out loss", ylim=(min(losses.values()) * 0.95, max(losses.values()) * 1.02),
            title="trails, their ensemble, a single model")
axes[0].tick_params(axis="x", rotation=30)
short = [n.replace("model.", "").replace("self_attn.", "").replace("mlp.", "") for n in masked]
axes[1].bar(range(len(masked)), list(masked.values()))
axes[1].set_xticks(range(len(masked)), short, rotation=90, fontsize=6)  # one bar per masked matrix
axes[1].set(ylabel="density", title="density of every masked matrix (ERK)")
plt.tight_layout()
plt.show()
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["neurotrails_bench.py"], "neurotrails")),
]


SRLM = [
    (
        "md",
        """
# SRLM: SFT, distillation and RL stages for small reasoning models

**Paper:** Zhuang, Ma, Jia, Cao, Liu, *Effective Learning for Small Reasoning Models: An Empirical Study on 0.5B
Reasoning LLMs*, arXiv [2506.13404](https://arxiv.org/abs/2506.13404) (CPAL 2026). Docs: `docs/srlm.md`.

The paper is an empirical study of how to train ~0.5B models for math reasoning: supervised fine-tuning (SFT),
knowledge distillation (KD) from a stronger teacher, reinforcement learning with verifiable rewards (RL), and
their orders (SFT→RL, KD→RL, SFT→KD→RL). As read second-hand, direct RL on the instruct model is strongest
(Qwen2.5-0.5B-Instruct on GSM8K 45.5 % → 54.0 %) and SFT before it can hurt.

In `hf_plugins` it is a recipe of stock TRL trainers: `run_srlm(model, tokenizer, SrlmConfig(stages=[...]))` runs
any sequence of `sft` (TRL `SFTTrainer`), `kd` (teacher solutions filtered by answer correctness, then SFT; or
logit-level with TRL's distillation trainers) and `rl` (TRL `GRPOTrainer` with exact-answer rewards from
`hf_plugins.rewards.math`) on one model, hands the model from stage to stage, evaluates held-out accuracy after
every stage and returns one report. Any stage can use a PEFT method (`lora`, `lift`, ...). Needs `trl` and
`datasets`.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
model, report = hf_plugins.run_srlm(model, tokenizer, hf_plugins.SrlmConfig(stages=["sft", "rl"]))
```
CLI: `hf-plugins recipe srlm --stages sft,kd,rl` (SmolLM2-135M-Instruct, arithmetic, minutes on a CPU). Below:
the whole SFT → KD → RL pipeline on a tiny random Llama with the in-code tokenizer and the embedded arithmetic
task, a few steps per stage. A model this small learns the answer format, not arithmetic, so read the plots for
the mechanics (losses, rewards, accuracy after every stage), not for the paper's claims.
""",
    ),
    ("code", SETUP),
    (
        "code",
        """
import contextlib
import io
import tempfile

import datasets

from hf_plugins.recipes.srlm import KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig, run_srlm
from hf_plugins.testing import tiny_model, tiny_tokenizer

datasets.disable_progress_bars()
tok = tiny_tokenizer()
model = tiny_model("llama", hidden_size=64, intermediate_size=128)
small = dict(per_device_train_batch_size=8, learning_rate=3e-3, max_length=128, trainer_kwargs={"logging_steps": 2})
config = SrlmConfig(
    stages=["sft", "kd", "rl"], num_problems=64, eval_size=8, eval_max_new_tokens=24,
    sft=SftStageConfig(max_steps=24, **small),
    kd=KdStageConfig(max_steps=24, **small),  # sequence-level KD from the programmatic "arithmetic" teacher
    rl=RlStageConfig(max_steps=6, num_generations=4, prompts_per_step=2, max_completion_length=24, learning_rate=1e-3,
                     trainer_kwargs={"logging_steps": 1}),
)
with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()) as trainer_logs:
    config.output_dir = out  # stage checkpoints and report.json (a temporary directory here)
    final, report = run_srlm(model, tok, config)  # the TRL trainers print every log line: kept in trainer_logs
print("\\n".join(line for line in trainer_logs.getvalue().splitlines() if line.startswith("[srlm]")))
""",
    ),
    (
        "code",
        """
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
offset = 0
for i, stage in enumerate(report["stages"]):
    hist = [h for h in stage["log_history"] if "loss" in h and "train_runtime" not in h]
    if stage["stage"] != "rl":
        axes[0].plot([offset + h["step"] for h in hist], [h["loss"] for h in hist], marker=".", color=f"C{i}",
                     label=f"{i}: {stage['stage']}")
    else:
        axes[1].plot([h["step"] for h in hist], [h["reward"] for h in hist], marker="o", label="total reward")
        axes[1].plot([h["step"] for h in hist], [h["rewards/correctness_reward/mean"] for h in hist], marker="o",
                     label="correctness")
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
axes[2].bar(x + 0.2, strict, width=0.4, label="strict (#### / \\\\boxed{})")
axes[2].set_xticks(x, names)
axes[2].set(ylabel="held-out accuracy (8 problems)", ylim=(0, 1), title="accuracy after every stage")
axes[2].legend()
plt.tight_layout()
plt.show()
""",
    ),
    (
        "code",
        """
for where, ev in [("before", report["eval_before"]), ("after the pipeline", report["stages"][-1]["eval"])]:
    ex = ev["examples"][0]
    print(f"{where}: Q: {ex['question']}\\n   A ({ex['answer']}): {ex['completion']!r}\\n")
print(f"pipeline: {report['seconds']:.1f} s")
""",
    ),
    (
        "md",
        """
## Scale it up

The recipe has no benchmark script of its own (it runs stock TRL trainers). Its full-size settings are the
defaults of `SrlmConfig()` (what `run_srlm` uses without a config; the CLI `hf-plugins recipe srlm` starts from a
smaller CPU default and takes `--stage-arg` overrides), printed below, followed by any rows recorded for the
recipe in `benchmarks/RESULTS.md`.
""",
    ),
    (
        "code",
        """
from dataclasses import asdict

full = SrlmConfig()
print(f"SrlmConfig(): stages {full.stages}, {full.num_problems} problems, eval on {full.eval_size}")
for stage in full.stages:
    print(f"  {stage}:", {k: v for k, v in asdict(getattr(full, stage)).items() if v not in ({}, [], None)})
""",
    ),
    ("code", scale_up([], "srlm")),
]

SOS = [
    (
        "md",
        r"""
# SoS-1K: sum-of-squares data, an exact checker, prompts and rewards

**Paper:** Li, Zhu, Cartis, Ji, Liu, *SoS1: O1 and R1-Like Reasoning LLMs are Sum-of-Square Solvers*, arXiv
[2502.20545](https://arxiv.org/abs/2502.20545). Docs: `docs/sos.md`.

The task: given a real polynomial as text, answer 1 if it is a sum of squares (SoS) of real polynomials and 0 if
not. The paper builds about 1,000 polynomials in classes of growing difficulty (odd degree, quadratics, quartics,
random Gram matrices that are dense, sparse, low-rank or ill-conditioned, each with a negative twin), writes
reasoning criteria into a prompt, and fine-tunes a 7B model on ~1K examples to decide them (SoS-7B).

`hf_plugins.sos` gives the pieces to do the same with the Hugging Face stack, and every label is **proved**: exact
rational polynomials, a seeded generator per class whose items carry a certificate, and a checker that returns a
verdict with evidence that can be re-verified (an exact point where p < 0, a Newton-polytope argument, or an exact
rational PSD Gram matrix from an SDP rounded and projected exactly), plus prompts, a `\boxed{}` parser, a GRPO
reward in TRL's `reward_funcs` signature and SFT rows written from the checker's evidence.
""",
    ),
    (
        "md",
        """
## Hugging Face usage, one line

```python
GRPOTrainer(model, reward_funcs=[hf_plugins.sos.sos_reward], train_dataset=to_dataset(make_grpo_rows(items)), ...)
```
CLI: `hf-plugins sos check "(x1 - x2)^2 + 1"`, `hf-plugins sos generate --per-class 20 --out train.jsonl`,
`hf-plugins sos eval --model smollm2 --file test.jsonl`.
""",
    ),
    ("code", SETUP),
    (
        "code",
        r"""
from hf_plugins.sos import CheckerConfig, check_polynomial, generate_items, parse_boxed_answer, sos_reward

v = check_polynomial("x1^4*x2^2 + x1^2*x2^4 + 1 - 3*x1^2*x2^2")  # Motzkin: nonnegative but not SoS
print("Motzkin:", v.label, "|", v.method, "|", v.message[:120])
v = check_polynomial("(x1 - x2)^2 + 1")
print("(x1 - x2)^2 + 1:", v.label, "| squares:", v.evidence.squares(2))
v = check_polynomial("x1^3 + x2^2")
print("x1^3 + x2^2:", v.label, "|", v.method, "| evidence:", v.evidence)
print(parse_boxed_answer(r"first \boxed{0}, then \boxed{1}"), sos_reward(completions=[r"... \boxed{0}"], proved_label=[0]))
""",
    ),
    (
        "md",
        """
## Accuracy per class: three deciders against the proved labels

Generated items (3 per class) are decided by (1) a surface rule that a model could latch onto, "SoS iff the
constant term is positive"; (2) the checker without the SDP, i.e. what exact cheap checks and a point search can
prove; (3) the full checker. An undecided verdict counts as wrong.
""",
    ),
    (
        "code",
        """
CLASSES = ["odd_degree", "quadratic", "quadratic_negative", "gram_dense", "gram_dense_negative", "gram_sparse",
           "gram_sparse_negative", "nonneg_not_sos"]
items = generate_items(CLASSES, per_class=3, seed=0)
assert all(it.verify() for it in items)  # each label is proved by its certificate
fast = dict(hard_point_samples=512, hard_point_time_limit=0.5)
deciders = {
    "constant > 0 rule": lambda it: (int(it.polynomial.constant_term() > 0), 0.0),
    "checker without SDP": lambda it: (lambda v: (v.proved_label, v.seconds))(
        check_polynomial(it.polynomial, CheckerConfig(use_sdp=False, **fast))),
    "full checker": lambda it: (lambda v: (v.proved_label, v.seconds))(check_polynomial(it.polynomial, CheckerConfig(**fast))),
}
acc, secs = {}, {}
for name, decide in deciders.items():
    for cls in CLASSES:
        results = [(decide(it), it.label) for it in items if it.cls == cls]
        acc[name, cls] = sum(pred == label for (pred, _), label in results) / len(results)
        secs[name, cls] = sum(s for (_, s), _ in results) / len(results)
print("example item:", items[0].cls, "label", items[0].label, "|", items[0].text)
""",
    ),
    (
        "code",
        """
fig, axes = plt.subplots(1, 2, figsize=(15, 4.5))
x = torch.arange(len(CLASSES)).numpy()
for i, name in enumerate(deciders):
    axes[0].bar(x + (i - 1) * 0.27, [acc[name, c] for c in CLASSES], width=0.27, label=name, color=f"C{i}")
    if name != "constant > 0 rule":
        axes[1].bar(x + (i - 1.5) * 0.4, [max(secs[name, c], 1e-3) for c in CLASSES], width=0.4, label=name,
                    color=f"C{i}")
for ax in axes:
    ax.set_xticks(x, CLASSES, rotation=30, ha="right")
    ax.legend(fontsize=8)
axes[0].set(ylabel="accuracy vs proved label", ylim=(0, 1.05), title="SoS accuracy per class")
axes[1].set(ylabel="seconds per polynomial", yscale="log", title="checker time per class")
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        """
The SoS classes need the Gram SDP: without it nothing proves "is SoS", while the negative classes fall to the
exact point search. A model's answers are scored the same way: `evaluate_sos_model(model, tokenizer, items)`
generates, parses `\\\\boxed{}` and reports accuracy against the proved labels (use a real instruct model; a
tiny random one never writes a box).
""",
    ),
    ("md", SCALE_UP_MD),
    ("code", scale_up(["sos_bench.py"], "sos")),
]


NOTEBOOKS = {
    "srlm": SRLM,
    "sos": SOS,
    "neurotrails": NEUROTRAILS,
    "lns": LNS,
    "coe": COE,
    "meap": MEAP,
    "lift": LIFT,
    "seft": SEFT,
    "alphadecay": ALPHADECAY,
    "stable_spam": STABLE_SPAM,
}


def build(name: str) -> Path:
    cells = []
    for kind, text in NOTEBOOKS[name]:
        text = text.strip("\n")
        cells.append(new_markdown_cell(text) if kind == "md" else new_code_cell(text))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = HERE / f"{name}.ipynb"
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


def main(argv: list[str]) -> None:
    names = argv or sorted(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise SystemExit(f"unknown notebook(s) {unknown}; choose from {sorted(NOTEBOOKS)}")
    for name in names:
        print("wrote", build(name).relative_to(HERE.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
