"""Chain-of-Experts quality check at the paper's protocol, scaled to a few GPU-minutes (arXiv 2506.18945).

The paper's runs (official code, `runs/run.sh`, plot data `scripts/plot/data*.tsv`): 4 layers, hidden 1024,
63 routed + 1 shared experts of width 704, MoE(K=8) vs CoE(C=2, K=4), AdamW lr 3e-4, betas (0.9, 0.95), wd 0.01,
clip 1.0, 10% warm-up then constant, batch 64 x 512 tokens, 1,000 steps (~33M tokens incl. padding) on MetaMathQA;
validation loss MoE 2.4632 / 1.6754 / 1.1958 vs CoE 2.4452 / 1.6280 / 1.1211 at steps 200 / 500 / 1,000.

Here, from scratch, every arm with the same data, order and tokens per seed:
  arms      MoE K=8 and CoE C=2 K=4, each in our layout (`residual_mode="pre_ln"`, the library default) and in the
            official one (`residual_mode="official"`, the layout the paper trained). Expert fields as the official
            config: 63 routed + 1 shared expert run in every iteration (`shared_experts_every_iteration`), raw
            softmax gates, sequence-level balance loss 0.001. Routed compute is equal (C x K = 8 expert FFNs per
            token and layer); with the shared expert CoE runs 10 FFNs against MoE's 9 (+11%), as in the paper's
            runs. Optional arms `coe_shared_once` / `coe_official_shared_once` run the shared expert once (9 FFNs,
            exactly equal compute) and `coe_official_shared_router` the paper's one-router ablation.
  model     hidden 512 (paper 1024), 4 layers, 8 heads (MHA), experts of width 352 (704 x 512/1024), Llama GQA
            attention with RoPE instead of DeepSeek-V2 MLA (docs/coe.md), untied embeddings.
  data      the project's arithmetic word problems with worked steps (hf_plugins.data.arithmetic, up to 4
            operations, numbers up to 100, factors up to 9: harder than the generator's defaults), word-level
            tokens with digits split (vocabulary 115), problems packed into blocks of 512 tokens with EOS between
            them (the paper pads one example per sequence). Training problems are never repeated within a run;
            validation is a fixed set of blocks from the generator's held-out split (256 x 512 = 131k tokens; the
            paper's curves use 128 examples).
  schedule  the paper's: 1,000 steps, AdamW (0.9, 0.95), wd 0.01 on every parameter, clip 1.0, 10% linear warm-up
            then constant; fp32 master weights with bf16 autocast; batch 12 x 512 = 6,144 tokens per step (the
            paper's 32,768; 6.1M tokens per run). Validation every 50 steps and at 200 / 500 / 1,000.
  lr sweep  per arm {3e-4 (paper), 1e-3, 3e-3}: seed 0 at each to step 200, the best (validation loss at step
            200) continues to step 1,000; seed 1 runs at that lr. Rows: mean [min, max] over seeds.

Shardable: each process runs a subset of `--arms` / `--lrs` / `--seeds` and writes its runs to `--out`; `--merge`
reads the partial files, picks each arm's lr on validation and writes rows, JSON and the plot:

    python benchmarks/coe_quality.py --arms moe --out coe_moe.json --deadline-s 330     # one process per arm
    python benchmarks/coe_quality.py --merge coe_*.json --out coe_quality.json --plot docs/img/coe_quality.png --append
    python benchmarks/coe_quality.py --probe 30 --arms coe          # ms/step and the planned seconds of an arm
    python benchmarks/coe_quality.py --smoke                        # tiny sizes on the CPU, a few seconds

Needs only torch + transformers (+ matplotlib for `--plot`, wherever `--merge` runs).
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings `_results`, `_lr_sweep`, `_sweep_common`

import _lr_sweep as sweep  # noqa: E402
import _sweep_common as common  # noqa: E402


SCRIPT = "coe_quality.py"
MODEL = {  # official values in comments
    "hidden_size": 512,  # 1024
    "num_hidden_layers": 4,  # 4
    "num_attention_heads": 8,  # 8 (MHA)
    "num_key_value_heads": 8,  # 8
    "num_experts": 63,  # 63 routed + 1 shared
    "n_shared_experts": 1,  # 1
    "moe_intermediate_size": 352,  # 704
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,  # 1e-6
    "tie_word_embeddings": False,  # untied
}
SMOKE_MODEL = {
    **MODEL,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_experts": 15,
    "moe_intermediate_size": 16,
    "max_position_embeddings": 32,
}
COMMON = {
    "eval_every": 50,
    "val_blocks": 256,
    "eval_batch": 64,
    "warmup_fraction": 0.1,
    "seeds": [0, 1],
    "num_test": 4000,
}
FULL = {**COMMON, "steps": 1000, "batch": 12, "seq": 512, "sweep_step": 200, "k_moe": 8, "lrs": [3e-4, 1e-3, 3e-3]}
SMOKE = {**COMMON, "steps": 8, "batch": 2, "seq": 32, "sweep_step": 4, "k_moe": 4, "lrs": [1e-3, 3e-3]}
SMOKE.update(eval_every=4, val_blocks=4, eval_batch=4, num_test=100)
DATA = {"max_ops": 4, "max_value": 100, "max_factor": 9}  # ArithmeticConfig knobs
CHECKPOINTS = (0.2, 0.5, 1.0)  # the paper's steps 200 / 500 / 1,000 as fractions of the run
PAPER = {0.2: (2.4632, 2.4452), 0.5: (1.6754, 1.6280), 1.0: (1.1958, 1.1211)}  # (MoE K=8, CoE C=2 K=4), official
DEFAULT_ARMS = ["moe", "coe", "moe_official", "coe_official"]
LAYOUTS = {"pre_ln": "ours (pre-LN)", "official": "official"}


def arms(k: int) -> dict[str, dict]:
    """Arm name -> label and CoEConfig fields; K = `k` for the MoE, k/2 per CoE iteration."""
    out = {}
    for layout, suffix in (("pre_ln", ""), ("official", "_official")):
        moe = {"residual_mode": layout, "num_iterations": 1, "num_experts_per_tok": k}
        coe = {"residual_mode": layout, "num_iterations": 2, "num_experts_per_tok": k // 2}
        tail = f", {LAYOUTS[layout]}"
        out["moe" + suffix] = {"label": f"MoE K={k}{tail}", "fields": moe}
        out["coe" + suffix] = {"label": f"CoE C=2 K={k // 2}{tail}", "fields": coe}
        out[f"coe{suffix}_shared_once"] = {
            "label": f"CoE C=2 K={k // 2}, shared expert once{tail}",
            "fields": {**coe, "shared_experts_every_iteration": False},
        }
    out["coe_official_shared_router"] = {
        "label": f"CoE C=2 K={k // 2}, one router, official",
        "fields": {**out["coe_official"]["fields"], "router_per_iteration": False},
    }
    return out


def baseline_of(arm: str) -> str:
    """The MoE arm of the same layout."""
    return "moe_official" if "official" in arm else "moe"


def is_coe(arm: str) -> bool:
    return arm.startswith("coe")


# ---- data: arithmetic text, word-level tokens, packed blocks ----

_WORDS = re.compile(r"\d|\w+|[^\w\s]")  # the tiny tokenizer's pre-tokenisation: words, single digits, punctuation


def encode(texts: list[str], vocab: dict[str, int], unk: int, eos: int) -> list[int]:
    """Token ids of `texts`, EOS after each: the ids of `hf_plugins.testing.tiny_tokenizer()` (tested), 5x faster
    than its word-level pipeline."""
    ids: list[int] = []
    for text in texts:
        ids += [vocab.get(w, unk) for w in _WORDS.findall(text)]
        ids.append(eos)
    return ids


def make_data(s: dict) -> dict:
    """Train blocks [steps x batch, seq] (int16, each problem once), validation blocks, vocabulary, token counts."""
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems
    from hf_plugins.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    vocab, unk, eos = tok.get_vocab(), tok.unk_token_id, tok.eos_token_id
    need = s["steps"] * s["batch"] * s["seq"]
    num_train = need // 80 + 100  # ~94 tokens per problem at these knobs; grown below if short
    while True:
        cfg = ArithmeticConfig(seed=0, num_train=num_train, num_test=s["num_test"], **DATA)
        train_ids = encode([p.plain_text() for p in generate_problems(cfg, "train")], vocab, unk, eos)
        if len(train_ids) >= need:
            break
        num_train = int(num_train * 1.3)
    val_ids = encode([p.plain_text() for p in generate_problems(cfg, "test")], vocab, unk, eos)
    n_val = min(s["val_blocks"], len(val_ids) // s["seq"])

    def blocks(ids, n):
        return torch.tensor(ids[: n * s["seq"]], dtype=torch.int16).view(n, s["seq"])

    meta = {
        "train_tokens_per_run": need,
        "train_problems": num_train,
        "tokens_per_problem": len(train_ids) / num_train,
    }
    meta.update(val_tokens=n_val * s["seq"], knobs=DATA, vocab_size=len(tok))
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": eos}
    return {
        "train": blocks(train_ids, s["steps"] * s["batch"]),
        "val": blocks(val_ids, n_val),
        "ids": ids,
        "meta": meta,
    }


# ---- one training run ----


class Run(sweep.TimedRun):
    """One (arm, lr, seed) run of a CoE model; `sweep_arm` drives it (see benchmarks/_lr_sweep.py)."""

    def __init__(self, ctx: dict, arm: str, lr: float, seed: int):
        from transformers import AutoModelForCausalLM

        from hf_plugins.models.coe import CoEConfig

        s = self.settings = ctx["settings"]
        evals = set(range(s["eval_every"], s["steps"] + 1, s["eval_every"]))
        evals |= {max(1, round(f * s["steps"])) for f in CHECKPOINTS}
        super().__init__(arm, lr, seed, s["steps"], evals, ctx["device"])
        self.sweep_step = s["sweep_step"]
        self.eval_steps.add(self.sweep_step)
        self.ctx = ctx
        fields = {**ctx["model"], **ctx["arms"][arm]["fields"], **ctx["data"]["ids"]}
        config = CoEConfig(vocab_size=ctx["data"]["meta"]["vocab_size"], **fields)
        torch.manual_seed(seed)
        with self.device:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, experts_implementation="grouped_mm")
        self.model = model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01, fused=self.cuda)
        self.warmup = max(1, round(s["warmup_fraction"] * s["steps"]))
        order = torch.randperm(len(ctx["data"]["train"]), generator=torch.Generator().manual_seed(seed))
        self.order = order.to(self.device)  # the data already lives on the device (no copy per step)
        c, k = config.num_iterations, config.num_experts_per_tok
        shared = config.n_shared_experts * (c if config.shared_experts_every_iteration else 1)
        self.info = {"params": sum(p.numel() for p in self.params), "expert_ffns_per_token_layer": c * k + shared}

    def train_step(self) -> torch.Tensor:
        b = self.settings["batch"]
        for group in self.opt.param_groups:  # 10% linear warm-up, then constant (official)
            group["lr"] = self.lr * min(1.0, (self.step + 1) / self.warmup)
        x = self.ctx["data"]["train"][self.order[self.step * b : (self.step + 1) * b]].to(self.device, torch.long)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            loss = self.model(input_ids=x, labels=x).loss  # CE + 0.001 x balance loss (training mode)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach().float()

    @torch.no_grad()
    def evaluate(self) -> None:
        """Mean token cross-entropy on the validation blocks and each iteration's balance loss (1.0 = uniform)."""
        val, bs = self.ctx["data"]["val"], self.settings["eval_batch"]
        self.model.eval()
        loss, balance = 0.0, 0.0
        for i in range(0, len(val), bs):
            x = val[i : i + bs].to(self.device, torch.long)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                out = self.model(input_ids=x, labels=x, output_router_logits=True, use_cache=False)
            loss += out.loss.float().item() * len(x)
            balance = balance + out.aux_losses.float().mean(0) * len(x)  # [iterations], mean over layers
        self.model.train()
        point = {"step": self.step, "val_loss": loss / len(val), "train_loss": self.mean_train_loss()}
        point["balance"] = [round(v, 4) for v in (balance / len(val)).tolist()]
        self.curve.append(point)
        self.diverged = not math.isfinite(point["val_loss"])

    def record(self) -> dict:
        label = self.ctx["arms"][self.arm]["label"]
        return {**self.base_record(self.settings["batch"] * self.settings["seq"], label), **self.info}

    def close(self) -> None:
        r = self.record()
        last = r["curve"][-1]["val_loss"] if r["curve"] else math.nan
        print(f"  {self.arm:24s} lr {self.lr:<7g} seed {self.seed}  steps {self.step:5d}  val loss {last:.4f}  "
              f"{r['tokens_per_s']:,.0f} tok/s", flush=True)  # fmt: skip
        self.free("model", "opt", "params")


# ---- merge: rows, table, plot ----


def at(fraction: float, steps: int) -> int:
    return max(1, round(fraction * steps))


def summarize(runs: list[dict], s: dict) -> dict:
    """Per arm at its best lr: sweep scores, checkpoint spreads, mean curve with its min/max, tokens/s."""
    out = {}
    order = list(arms(s["k_moe"]))
    for arm, entry in sorted(sweep.merge(runs, "val_loss").items(), key=lambda kv: order.index(kv[0])):
        done = [r for r in entry["runs"] if not r["diverged"]]
        if not done:
            continue
        steps = sorted({p["step"] for r in done for p in r["curve"]})
        out[arm] = {
            "label": done[0]["label"],
            "lr": entry["lr"],
            "sweep_scores": entry["scores"],
            "seeds": sorted(r["seed"] for r in done),
            "checkpoints": {
                f: sweep.spread(sweep.values_at(done, at(f, s["steps"]), "val_loss")) for f in CHECKPOINTS
            },
            "curve": [{"step": st, **sweep.spread(sweep.values_at(done, st, "val_loss"))} for st in steps],
            "tokens_per_s": sweep.spread([r["tokens_per_s"] for r in done]),
            "expert_ffns": done[0]["expert_ffns_per_token_layer"],
        }
    return out


def make_rows(summary: dict, meta: dict) -> list[dict]:
    s, m, d = meta["settings"], meta["model"], meta["data"]
    case = (
        f"arithmetic QA text, {s['steps']} steps x {s['batch']}x{s['seq']} tokens "
        f"({d['train_tokens_per_run'] / 1e6:.1f}M per run), hidden {m['hidden_size']}, {m['num_hidden_layers']} "
        f"layers, {m['num_experts']}+{m['n_shared_experts']} experts x {m['moe_intermediate_size']}, lr per arm "
        f"from {s['lrs']} at step {s['sweep_step']}"
    )
    rows = []

    def row(metric, a: dict, b: dict, text=common.spread_text):
        rows.append(common.compare_row(case, metric, a, b, text))

    for arm, a in summary.items():
        moe = summary.get(baseline_of(arm))
        if not is_coe(arm) or moe is None:
            continue
        pair = f"{a['label']} (lr {a['lr']:g}) vs {moe['label']} (lr {moe['lr']:g})"
        ffn = f"{a['expert_ffns']} vs {moe['expert_ffns']} expert FFNs per token and layer"
        for f in CHECKPOINTS:
            pm, pc = PAPER[f]
            paper = f"; paper (official, MetaMathQA) {pc} vs {pm} = {pc / pm:.3f}" if arm == "coe_official" else ""
            n = f"{a['checkpoints'][f]['n']}/{moe['checkpoints'][f]['n']}"
            row(
                f"val loss @ step {at(f, s['steps'])}, {pair}, mean [min, max] over {n} seeds; {ffn}{paper}",
                a["checkpoints"][f],
                moe["checkpoints"][f],
            )
        tps = lambda x: f"{x['mean']:,.0f}"  # noqa: E731
        row(
            f"train tokens/s, {pair} (run mean; processes shared the GPU)", a["tokens_per_s"], moe["tokens_per_s"], tps
        )
    for kind in ("moe", "coe"):
        if kind in summary and f"{kind}_official" in summary:
            a, b = summary[f"{kind}_official"], summary[kind]
            row(
                f"val loss @ step {s['steps']}, {kind.upper()}: official vs our layout (lr {a['lr']:g} vs "
                f"{b['lr']:g}), mean [min, max] over seeds",
                a["checkpoints"][1.0],
                b["checkpoints"][1.0],
            )
    return rows


def table(summary: dict, s: dict) -> str:
    """Markdown table of every arm at its best lr (for docs/coe.md)."""
    head = f"| arm | lr (sweep: val loss at step {s['sweep_step']}) | seeds | "
    head += " | ".join(f"val loss @ {at(f, s['steps'])}" for f in CHECKPOINTS) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(CHECKPOINTS)]
    for a in summary.values():
        scores = common.sweep_text(a["sweep_scores"], fmt=lambda v: f"{v:.3f}", sep=", ")
        cells = " | ".join(common.spread_text(a["checkpoints"][f]) for f in CHECKPOINTS)
        lines.append(f"| {a['label']} | **{a['lr']:g}** ({scores}) | {len(a['seeds'])} | {cells} |")
    paper = " | ".join(f"{PAPER[f][0]} / {PAPER[f][1]}" for f in CHECKPOINTS)
    lines.append(f"| paper (official layout, MetaMathQA): MoE K=8 / CoE C=2 K=4 | 3e-4 | 1 | {paper} |")
    return "\n".join(lines)


def build(meta: dict, runs: list[dict]):
    summary = summarize(runs, meta["settings"])
    return summary, make_rows(summary, meta), table(summary, meta["settings"])


def plot(summary: dict, meta: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = meta["settings"]["steps"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, a in summary.items():
        pts = [p for p in a["curve"] if p["n"]]
        xs = [p["step"] for p in pts]
        style = "--" if "official" in arm else "-"
        (line,) = ax.plot(xs, [p["mean"] for p in pts], style, label=f"{a['label']} (lr {a['lr']:g})")
        ax.fill_between(xs, [p["min"] for p in pts], [p["max"] for p in pts], color=line.get_color(), alpha=0.2)
    ax.set(xlabel="step", ylabel="validation loss", title="arithmetic QA text: mean over seeds, min-max band")
    ax.legend(fontsize=7)
    for coe, a in summary.items():
        moe = summary.get(baseline_of(coe))
        if is_coe(coe) and moe is not None:
            m = {p["step"]: p["mean"] for p in moe["curve"] if p["n"]}
            c = {p["step"]: p["mean"] for p in a["curve"] if p["n"]}
            xs = sorted(set(m) & set(c))
            ax2.plot(xs, [c[x] / m[x] for x in xs], "--" if "official" in coe else "-", label=a["label"])
    paper = [PAPER[f][1] / PAPER[f][0] for f in CHECKPOINTS]
    ax2.plot([at(f, steps) for f in CHECKPOINTS], paper, "ko", label="paper: CoE C=2 K=4, official (MetaMathQA)")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xlabel="step", ylabel="val loss / MoE's (same layout)", title="CoE vs MoE: below 1, CoE is better")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---- command line ----


def main(argv=None) -> int:
    p = sweep.parser(__doc__, DEFAULT_ARMS)
    p.add_argument("--sweep-step", type=int, help="step at which each arm's lr is chosen (default 200)")
    args = p.parse_args(argv)
    if args.merge:
        return sweep.merge_and_report(args, ("settings", "model", "data"), build, plot)
    s = sweep.settings_from(args, SMOKE, FULL)
    s["sweep_step"] = args.sweep_step or s["sweep_step"]
    if not 1 <= s["sweep_step"] <= s["steps"]:
        raise ValueError(f"--sweep-step must be in [1, steps={s['steps']}], got {s['sweep_step']}")
    all_arms = arms(s["k_moe"])
    sweep.check_arms(args.arms, all_arms)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    t0 = time.perf_counter()
    data = make_data(s)
    data.update(train=data["train"].to(device), val=data["val"].to(device))
    print(f"data in {time.perf_counter() - t0:.1f} s: {data['meta']}", flush=True)
    model = SMOKE_MODEL if args.smoke else MODEL
    ctx = {"settings": s, "model": model, "data": data, "arms": all_arms, "device": device}
    make_run = lambda arm, lr, seed: Run(ctx, arm, lr, seed)  # noqa: E731
    return sweep.train_and_report(
        args, SCRIPT, make_run, "val_loss", s, device, t0, build, plot, model=model, data=data["meta"]
    )


if __name__ == "__main__":
    sys.exit(main())
