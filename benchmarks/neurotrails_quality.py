"""NeuroTrails quality check at the paper's protocol, scaled to a few GPU-minutes (arXiv 2505.17909).

The paper (LLaMA-130M / 350M on C4, official `scripts/train_llm.sh`): 3 heads ("trails") sharing the first
L - b blocks (b = 8 of 12 for 130M), density 0.9 with ERK layer densities, prune-and-regrow every 50 steps (prune
rate 0.5 cosine-decayed to 0.005, soft magnitude T = 3, gradient regrowth), Adam without weight decay or clipping,
lr 1.5e-3 (130M), 10% warm-up then cosine to 0.1x, sequence 256, and 1/density more steps for the sparse model than
for the dense baselines (10,000 -> 11,111). LLaMA-350M perplexity: single 22.8, full 3-model ensemble 21.3,
NeuroTrails 20.7.

Here, from scratch on the project corpus (docs/corpus.md; SmolLM2 tokenizer, 49,152 tokens), every arm on the
same blocks in the same order:
  single       one dense Llama
  ensemble     three independently initialised dense Llamas trained on the same batches; prediction = mean logits
  treenet      the NeuroTrails split (3 trails x 8 of 12 blocks) at density 1.0: separates the split from sparsity
  neurotrails  3 trails x 8 blocks, density 0.9 ERK, the paper's topology updates, 1/0.9 x the steps (333 vs 300)
  (optional)   neurotrails_equal: NeuroTrails at the baselines' step count
  model        12 layers like LLaMA-130M, hidden 256 (130M: 768), MLP 688 (2048), 4 heads (12), untied output
               layers; embeddings initialised with std 0.02 (the official code's sqrt(2/5) is called a leftover
               of an ablation branch by the maintainers of the same code lineage; docs/neurotrails.md)
  schedule     the paper's: Adam (0.9, 0.999), no weight decay, no clipping, 10% warm-up then cosine to 0.1x, bf16
               autocast with fp32 weights; 300 steps of 24 x 256 tokens (1.8M tokens per dense run; the paper's
               130M run: 10,000 steps of 512 x 256 = 1.3B), NeuroTrails 333 steps (2.0M tokens); topology updates
               every 50 steps (6 updates).
  lr sweep     per arm {1.5e-3 (paper, 130M), 3e-3, 6e-3}: seed 0 at each to 1/3 of its run, the best (validation
               perplexity there) continues to the end; seed 1 runs at that lr. Seeds change the initialisation
               and the topology draws, not the data order. Rows: mean [min, max] over seeds.
  evaluation   128k tokens of the corpus's validation split at 1/3, 2/3 and the end of each run: perplexity of the
               averaged logits (the paper's combination), each head's perplexity, and the diversity between heads
               (mean pairwise KL(p_i || p_j) of their predictive distributions and the argmax disagreement rate):
               the paper's "Goldilocks" argument is that a good split keeps heads diverse enough for the average to
               gain over each head while each head stays strong.

Shardable: each process runs a subset of `--arms` / `--lrs` / `--seeds` and writes its runs to `--out`; `--merge`
reads the partial files, picks each arm's lr on validation and writes rows, JSON and the plot:

    python benchmarks/neurotrails_quality.py --corpus CORPUS --arms ensemble --out nt_ens.json --deadline-s 330
    python benchmarks/neurotrails_quality.py --merge nt_*.json --out nt_quality.json \\
        --plot docs/img/neurotrails_quality.png --append
    python benchmarks/neurotrails_quality.py --corpus CORPUS --probe 20     # ms/step and the planned total per arm
    python benchmarks/neurotrails_quality.py --smoke                        # tiny model, random tokens, CPU

Needs only torch + transformers (+ matplotlib for `--plot`, wherever `--merge` runs) and the corpus built by
`hf-plugins corpus build`.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings `_results`, `_lr_sweep`, `_sweep_common`

import _lr_sweep as sweep  # noqa: E402
import _sweep_common as common  # noqa: E402


SCRIPT = "neurotrails_quality.py"
SHAPE = {  # LLaMA-130M of the official code in comments
    "hidden_size": 256,  # 768
    "intermediate_size": 688,  # 2048
    "num_hidden_layers": 12,  # 12
    "num_attention_heads": 4,  # 12
    "num_key_value_heads": 4,  # 12
    "blocks_in_head": 8,  # 8
}
SMOKE_SHAPE = {**SHAPE, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "blocks_in_head": 2}
COMMON = {"seeds": [0, 1], "warmup_fraction": 0.1, "min_lr_ratio": 0.1, "density": 0.9}
FULL = {**COMMON, "steps": 300, "batch": 24, "seq": 256, "lrs": [1.5e-3, 3e-3, 6e-3], "update_frequency": 50}
FULL.update(eval_tokens=131072, eval_batch=16)
SMOKE = {**COMMON, "steps": 6, "batch": 2, "seq": 16, "lrs": [1.5e-3, 6e-3], "update_frequency": 2}
SMOKE.update(eval_tokens=128, eval_batch=4)
EVAL_FRACTIONS = (1 / 3, 2 / 3, 1.0)  # the first one is the sweep point
ARMS = {
    "single": {"label": "single model", "members": 1},
    "ensemble": {"label": "full 3-model ensemble", "members": 3},
    "treenet": {"label": "dense TreeNet (density 1.0)", "members": 1, "trails": True, "density": 1.0},
    "neurotrails": {"label": "NeuroTrails (x1/density steps)", "members": 1, "trails": True, "scale_steps": True},
    "neurotrails_equal": {"label": "NeuroTrails (baseline steps)", "members": 1, "trails": True},
}
DEFAULT_ARMS = ["single", "ensemble", "treenet", "neurotrails"]
PAPER = {"single": 22.8, "ensemble": 21.3, "neurotrails": 20.7}  # LLaMA-350M on C4, perplexity


def load_data(corpus: str | None, smoke: bool, s: dict) -> dict:
    """Train blocks (file order) for the longest run, validation blocks, vocabulary size; random tokens for a smoke
    run without a corpus."""
    need = math.ceil(s["steps"] / s["density"]) * s["batch"] * s["seq"]
    if corpus is None and smoke:
        g = torch.Generator().manual_seed(0)
        train = torch.randint(0, 64, (need // s["seq"], s["seq"]), generator=g)
        val = torch.randint(0, 64, (s["eval_tokens"] // s["seq"], s["seq"]), generator=g)
        return {"train": train, "val": val, "meta": {"corpus": "random tokens", "vocab_size": 64}}
    from hf_plugins.data.corpus import PackedBlocks, read_manifest

    corpus = Path(corpus or "corpus_out")
    manifest = read_manifest(corpus)

    def stack(split, tokens):
        blocks = PackedBlocks(corpus, split, s["seq"], max_tokens=tokens)
        return torch.stack([blocks[i]["input_ids"] for i in range(len(blocks))]).to(torch.int32)

    train, val = stack("train", need), stack("validation", s["eval_tokens"])
    if train.numel() < need:
        raise ValueError(f"{corpus}: {train.numel()} training tokens, the runs need {need}; lower --steps or --batch")
    meta = {"corpus": str(corpus), "train_sha256": manifest["splits"]["train"]["sha256"], "val_tokens": val.numel()}
    meta["vocab_size"] = manifest["tokenizer"]["vocab_size"]
    return {"train": train, "val": val, "meta": meta}


class Run(sweep.TimedRun):
    """One (arm, lr, seed) run of one model or of the ensemble's three, trained on the same batches."""

    def __init__(self, ctx: dict, arm: str, lr: float, seed: int):
        from transformers import AutoModelForCausalLM, LlamaConfig

        from hf_plugins.models.neurotrails import NeuroTrailsConfig

        s, arm_cfg = ctx["settings"], ctx["arms"][arm]
        self.ctx, self.settings, self.arm_cfg = ctx, s, arm_cfg
        total = round(s["steps"] / s["density"]) if arm_cfg.get("scale_steps") else s["steps"]
        super().__init__(arm, lr, seed, total, {max(1, round(f * total)) for f in EVAL_FRACTIONS}, ctx["device"])
        shape = {k: v for k, v in ctx["shape"].items() if k != "blocks_in_head"}
        common = {**shape, "vocab_size": ctx["data"]["meta"]["vocab_size"], "max_position_embeddings": s["seq"]}
        common["tie_word_embeddings"] = False
        self.models = []
        for member in range(arm_cfg["members"]):
            if arm_cfg.get("trails"):
                config = NeuroTrailsConfig(
                    **common,
                    num_trails=3,
                    blocks_in_head=ctx["shape"]["blocks_in_head"],
                    density=arm_cfg.get("density", s["density"]),
                    update_frequency=s["update_frequency"],
                    diversity_tokens=0,  # measured on the whole validation set instead
                )
            else:
                config = LlamaConfig(**common)
            torch.manual_seed(1000 * seed + member)
            with self.device:
                self.models.append(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train())
        self.sparse = bool(arm_cfg.get("trails")) and self.models[0].config.density < 1.0
        self.heads = 3 if arm_cfg.get("trails") else arm_cfg["members"]
        self.params = [p for m in self.models for p in m.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=lr, weight_decay=0.0, fused=self.cuda)
        self.warmup = max(1, round(s["warmup_fraction"] * total))

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine to min_lr_ratio (official schedule)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        low = self.settings["min_lr_ratio"]
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))

    def train_step(self) -> torch.Tensor:
        b = self.settings["batch"]
        for group in self.opt.param_groups:
            group["lr"] = self.lr * self.lr_factor(self.step)
        ids = self.ctx["data"]["train"][self.step * b : (self.step + 1) * b].to(self.device, torch.long)
        total = 0.0
        for model in self.models:  # the ensemble's members one after another (one Adam over all: same as three)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                loss = model(input_ids=ids, labels=ids).loss  # NeuroTrails: sum of the trails' losses (official)
            loss.backward()
            total = total + loss.detach().float()
        self.opt.step()
        if self.sparse:  # masks after every step; prune and regrow every update_frequency steps
            self.models[0].sparsity_step(self.opt, step=self.step, total_steps=self.total_steps, seed=self.seed)
        self.opt.zero_grad(set_to_none=True)
        return total / self.heads  # mean cross-entropy per head

    def head_logits(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Each head's logits [B, T, V]: the ensemble's members, or each trail's output layer."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            if self.arm_cfg.get("trails"):
                model = self.models[0]
                hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state  # [trails, B, T, H], normed
                return [head(hidden[h]) for h, head in enumerate(model.lm_heads)]
            return [m(input_ids=ids, use_cache=False).logits for m in self.models]

    @torch.no_grad()
    def evaluate(self) -> None:
        """Perplexity of the averaged logits and of each head; the heads' mean pairwise KL and disagreement."""
        val, bs = self.ctx["data"]["val"], self.settings["eval_batch"]
        for m in self.models:
            m.eval()
        avg_nll, head_nll, kl, disagree, n = 0.0, 0.0, 0.0, 0.0, 0
        for i in range(0, len(val), bs):
            ids = val[i : i + bs].to(self.device, torch.long)
            target = ids[:, 1:].reshape(-1)
            logps = [torch.log_softmax(lg[:, :-1].float().flatten(0, 1), dim=-1) for lg in self.head_logits(ids)]
            # The mean of the log-softmaxes is the mean of the logits minus a per-token constant: the same softmax.
            avg_nll += F.cross_entropy(sum(logps) / len(logps), target, reduction="sum").item()
            head_nll = head_nll + torch.stack([F.nll_loss(lp, target, reduction="sum") for lp in logps])
            if len(logps) > 1:
                pairs = list(itertools.permutations(range(len(logps)), 2))
                kl += sum((logps[a].exp() * (logps[a] - logps[b])).sum().item() for a, b in pairs) / len(pairs)
                preds = [lp.argmax(-1) for lp in logps]
                combos = list(itertools.combinations(range(len(preds)), 2))
                disagree += sum((preds[a] != preds[b]).sum().item() for a, b in combos) / len(combos)
            n += target.numel()
        for m in self.models:
            m.train()
        ppl = lambda nll: math.exp(min(nll / n, 50.0))  # noqa: E731
        point = {"step": self.step, "ppl": ppl(avg_nll), "head_ppl": [ppl(v) for v in head_nll.tolist()]}
        point["train_loss"] = self.mean_train_loss()
        if self.heads > 1:
            point.update(kl=kl / n, disagreement=disagree / n)
        self.curve.append(point)
        self.diverged = not math.isfinite(avg_nll)

    def record(self) -> dict:
        s = self.settings
        total = sum(p.numel() for p in self.params)
        masked = [m for model in self.models if hasattr(model, "sparse_modules") for _, m in model.sparse_modules()]
        nonzero = total - sum(m.weight_mask.numel() - int(m.weight_mask.sum()) for m in masked)
        info = {"params": total, "nonzero": nonzero}
        return {**self.base_record(s["batch"] * s["seq"], self.arm_cfg["label"]), **info}

    def close(self) -> None:
        last = self.curve[-1] if self.curve else {}
        heads = ", ".join(f"{p:.1f}" for p in last.get("head_ppl", []))
        ppl, kl = last.get("ppl", math.nan), last.get("kl", math.nan)
        line = f"  {self.arm:18s} lr {self.lr:<7g} seed {self.seed}  steps {self.step:4d}  val ppl {ppl:8.2f}"
        print(f"{line}  heads [{heads}]  kl {kl:.3f}", flush=True)
        self.free("models", "opt", "params")


# ---- merge: rows, table, plot ----

METRICS = ("ppl", "mean_head_ppl", "best_head_ppl", "kl", "disagreement")


def final_values(run: dict) -> dict:
    """The metrics of a run's last evaluation."""
    p = run["curve"][-1]
    out = {"ppl": p["ppl"], "mean_head_ppl": sum(p["head_ppl"]) / len(p["head_ppl"])}
    out["best_head_ppl"] = min(p["head_ppl"])
    out.update({k: p[k] for k in ("kl", "disagreement") if k in p})
    return out


def summarize(runs: list[dict]) -> dict:
    """Per arm at its best lr, over the finished runs: final metrics (spread over seeds), parameter counts."""
    out = {}
    for arm, entry in sorted(sweep.merge(runs, "ppl").items(), key=lambda kv: list(ARMS).index(kv[0])):
        done = [r for r in entry["runs"] if not r["diverged"] and r["steps_done"] == r["total_steps"]]
        if not done:
            continue
        finals = [final_values(r) for r in done]
        out[arm] = {
            "label": ARMS[arm]["label"],
            "lr": entry["lr"],
            "sweep_scores": entry["scores"],
            "seeds": sorted(r["seed"] for r in done),
            "steps": done[0]["total_steps"],
            "params": done[0]["params"],
            "nonzero": done[0]["nonzero"],
            "final": {k: sweep.spread([f[k] for f in finals if k in f]) for k in METRICS},
            "points": [{"seed": r["seed"], **f} for r, f in zip(done, finals)],
        }
    return out


def make_rows(summary: dict, meta: dict) -> list[dict]:
    s, sh = meta["settings"], meta["shape"]
    source = "random tokens" if meta["data"]["corpus"] == "random tokens" else "project corpus"
    case = (
        f"{source}, {sh['num_hidden_layers']}x{sh['hidden_size']} Llama (untied), {s['steps']} steps x "
        f"{s['batch']}x{s['seq']} tokens (NeuroTrails {round(s['steps'] / s['density'])}), 3 trails x "
        f"{sh['blocks_in_head']} blocks, density {s['density']} ERK, update every {s['update_frequency']}, lr per "
        f"arm from {s['lrs']} at 1/3 of the run"
    )
    rows = []

    def add(metric, x, y, ours_text, base_text):
        rows.append({"case": case, "metric": metric, "ours": x, "baseline": y, "ratio": common.ratio(x, y),
                     "ours_text": ours_text, "base_text": base_text})  # fmt: skip

    def compare(metric, a, b, key, digits=2):
        if a in summary and b in summary:
            x, y = summary[a]["final"][key], summary[b]["final"][key]
            lrs = f"lr {summary[a]['lr']:g} vs {summary[b]['lr']:g}"
            metric = f"{metric} ({lrs}), mean [min, max] over {x['n']}/{y['n']} seeds"
            rows.append(common.compare_row(case, metric, x, y, lambda v: common.spread_text(v, digits)))

    def paper(a, b):
        return f"; paper (LLaMA-350M, C4) {PAPER[a]} vs {PAPER[b]} = {PAPER[a] / PAPER[b]:.3f}"

    avg = "val ppl of the averaged logits"
    compare(f"{avg}, NeuroTrails vs single model" + paper("neurotrails", "single"), "neurotrails", "single", "ppl")
    compare(
        f"{avg}, NeuroTrails vs full ensemble" + paper("neurotrails", "ensemble"), "neurotrails", "ensemble", "ppl"
    )
    compare(f"{avg}, NeuroTrails vs dense TreeNet", "neurotrails", "treenet", "ppl")
    compare(f"{avg}, full ensemble vs single model" + paper("ensemble", "single"), "ensemble", "single", "ppl")
    compare(f"{avg}, dense TreeNet vs single model", "treenet", "single", "ppl")
    compare(f"{avg}, NeuroTrails at the baselines' steps vs single model", "neurotrails_equal", "single", "ppl")
    for base in ("treenet", "ensemble", "single"):
        compare(f"mean per-head val ppl, NeuroTrails vs {ARMS[base]['label']}", "neurotrails", base, "mean_head_ppl")
    for key, name in (("kl", "mean pairwise KL(p_i ‖ p_j), nats"), ("disagreement", "argmax disagreement rate")):
        for base in ("treenet", "ensemble"):
            compare(f"head diversity, {name}, NeuroTrails vs {ARMS[base]['label']}", "neurotrails", base, key, 4)
    for arm in ("neurotrails", "treenet", "ensemble"):
        if arm in summary:  # what averaging buys over the heads it averages
            f = summary[arm]["final"]
            metric = f"ensembling gain, {ARMS[arm]['label']}: val ppl of the averaged logits vs mean per-head ppl"
            text = lambda v: common.spread_text(v, 2)  # noqa: E731
            add(metric, f["ppl"]["mean"], f["mean_head_ppl"]["mean"], text(f["ppl"]), text(f["mean_head_ppl"]))
    for base in ("ensemble", "single"):
        if "neurotrails" in summary and base in summary:
            nz, p = summary["neurotrails"]["nonzero"] / 1e6, summary[base]["params"] / 1e6
            add(f"parameters M, NeuroTrails non-zero vs {ARMS[base]['label']}", nz, p, f"{nz:.2f}", f"{p:.2f}")
    return rows


def table(summary: dict) -> str:
    """Markdown table of every arm at its best lr (for docs/neurotrails.md)."""
    lines = [
        "| arm | lr (sweep: val ppl at 1/3) | seeds | steps | params M (non-zero) | val ppl, averaged logits | "
        "mean head ppl | KL between heads | disagreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in summary.values():
        f = a["final"]
        scores = common.sweep_text(a["sweep_scores"], fmt=lambda v: f"{v:.1f}", sep=", ")
        cells = [
            common.spread_text(f[k], d) for k, d in (("ppl", 1), ("mean_head_ppl", 1), ("kl", 3), ("disagreement", 3))
        ]
        params = f"{a['params'] / 1e6:.1f} ({a['nonzero'] / 1e6:.1f})"
        head = f"| {a['label']} | **{a['lr']:g}** ({scores}) | {len(a['seeds'])} | {a['steps']} | {params} |"
        lines.append(f"{head} {' | '.join(cells)} |")
    lines.append(
        "| paper, LLaMA-350M on C4: single / full ensemble / NeuroTrails | | | | | 22.8 / 21.3 / 20.7 | | | |"
    )
    return "\n".join(lines)


def build(meta: dict, runs: list[dict]):
    summary = summarize(runs)
    return summary, make_rows(summary, meta), table(summary)


def plot(summary: dict, meta: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(summary)
    for i, arm in enumerate(names):
        for key, dx, style, label in (
            ("ppl", -0.15, "o", "averaged logits"),
            ("mean_head_ppl", 0.15, "s", "mean head"),
        ):
            v = summary[arm]["final"][key]
            err = [[v["mean"] - v["min"]], [v["max"] - v["mean"]]]
            color = "C0" if key == "ppl" else "C1"
            ax.errorbar(
                [i + dx], [v["mean"]], yerr=err, fmt=style, color=color, capsize=4, label=label if i == 0 else None
            )
    ax.set_xticks(range(len(names)), [summary[a]["label"] for a in names], rotation=15, fontsize=8)
    ax.set(ylabel="validation perplexity", title=f"{meta['data']['corpus']}: mean over seeds, min-max bars")
    ax.legend(fontsize=8)
    for i, arm in enumerate(names):
        pts = [p for p in summary[arm]["points"] if "kl" in p]
        if pts:
            ax2.scatter([p["kl"] for p in pts], [p["ppl"] for p in pts], color=f"C{i}", label=summary[arm]["label"])
            ax2.scatter([p["kl"] for p in pts], [p["mean_head_ppl"] for p in pts], color=f"C{i}", marker="x")
    ax2.set(xlabel="mean pairwise KL between heads (nats)", ylabel="validation perplexity")
    ax2.set_title("diversity vs perplexity (o: averaged logits, x: mean head)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---- command line ----


def main(argv=None) -> int:
    p = sweep.parser(__doc__, DEFAULT_ARMS)
    p.add_argument("--corpus", help="directory written by `hf-plugins corpus build` (default corpus_out)")
    args = p.parse_args(argv)
    if args.merge:
        return sweep.merge_and_report(args, ("settings", "shape", "data"), build, plot)
    s = sweep.settings_from(args, SMOKE, FULL)
    sweep.check_arms(args.arms, ARMS)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    t0 = time.perf_counter()
    data = load_data(args.corpus, args.smoke, s)
    data.update(train=data["train"].to(device), val=data["val"].to(device))
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    ctx = {"settings": s, "shape": shape, "data": data, "arms": ARMS, "device": device}
    make_run = lambda arm, lr, seed: Run(ctx, arm, lr, seed)  # noqa: E731
    return sweep.train_and_report(
        args, SCRIPT, make_run, "ppl", s, device, t0, build, plot, shape=shape, data=data["meta"]
    )


if __name__ == "__main__":
    sys.exit(main())
