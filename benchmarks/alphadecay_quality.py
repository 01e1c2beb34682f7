"""AlphaDecay quality check: pre-train a small Llama from scratch (bf16 autocast, no clipping), uniform weight decay
vs AlphaDecay at the same base decay (AdamW, wd 0.1: the paper's AdamW table), 2 seeds; eval loss / perplexity and
the alpha distribution per module type at the end (plot).

    python benchmarks/alphadecay_quality.py             # GPU, ~60M-shaped Llama core (~1-2 min on an H200)
    python benchmarks/alphadecay_quality.py --smoke     # tiny, CPU
    python benchmarks/alphadecay_quality.py --append --out alphadecay_quality.json --plot alphadecay_alphas.png

Data and model as benchmarks/stable_spam_quality.py (embedded arithmetic text, word-level tokenizer, hidden 512,
8 layers). The run is far shorter than the paper's (10K steps at 60M), so the refresh interval is 100 instead of
500 (min_eigs 50 as the paper). Paper direction (60M, AdamW 0.1): 31.95 -> 31.20 ppl; at this budget expect a
smaller gap than the seed spread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402


FULL = {"hidden": 512, "layers": 8, "heads": 8, "inter": 1376, "steps": 600, "batch": 32, "seq": 128, "lr": 1e-3}
SMOKE = {"hidden": 64, "layers": 2, "heads": 4, "inter": 128, "steps": 8, "batch": 4, "seq": 32, "lr": 1e-3}


def run_arm(arm, cfg, data, tok, seed, device, interval, min_eigs):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_plugins import AlphaDecay, hf_param_groups

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg["hidden"],
        intermediate_size=cfg["inter"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["heads"],
        max_position_embeddings=cfg["seq"],
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)
    fused = device.type == "cuda"
    if arm == "uniform":
        opt = torch.optim.AdamW(hf_param_groups(model, 0.1), lr=cfg["lr"], fused=fused)
    else:
        opt = AlphaDecay()(model, lr=cfg["lr"], weight_decay=0.1, interval=interval, min_eigs=min_eigs, fused=fused)
    steps, warmup = cfg["steps"], max(1, cfg["steps"] // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))),
    )
    gen = torch.Generator().manual_seed(seed)
    train = data["train"]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    losses = []
    for _ in range(steps):
        batch = train[torch.randint(0, train.shape[0], (cfg["batch"],), generator=gen)].to(device)
        with amp:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    with torch.no_grad(), amp:
        test = data["test"][:256].to(device)
        eval_loss = model(input_ids=test, labels=test).loss.item()
    from hf_plugins import model_esd

    alphas = {r["name"]: r["alpha"] for r in model_esd(model, min_eigs=min_eigs)}
    table = opt.alphadecay_table() if hasattr(opt, "alphadecay_table") else {}
    return {"eval_loss": eval_loss, "losses": losses, "alphas_end": alphas, "decays_end": table}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for k, (arm, runs) in enumerate(results.items()):
        by_type: dict[str, list[float]] = {}
        for name, a in runs[0]["alphas_end"].items():
            by_type.setdefault(name.rsplit(".", 1)[-1], []).append(a)
        kinds = sorted(by_type)
        for j, kind in enumerate(kinds):
            xs = [j + 0.2 * (k - 0.5)] * len(by_type[kind])
            ax.scatter(xs, by_type[kind], s=10, label=arm if j == 0 else None, color=f"C{k}")
        ax.set_xticks(range(len(kinds)), kinds, rotation=30)
    ax.set_ylabel("alpha at the end (seed 0)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None, help="PNG of the final alphas per module type")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()

    from stable_spam_quality import make_data

    from hf_plugins.testing import tiny_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cfg = SMOKE if args.smoke else FULL
    interval, min_eigs = (4, 16) if args.smoke else (100, 50)
    tok = tiny_tokenizer()
    data = make_data(tok, 200 if args.smoke else 20000, 50 if args.smoke else 1000, cfg["seq"])
    t0 = time.perf_counter()
    results: dict = {"uniform": [], "alphadecay": []}
    for seed in range(args.seeds):
        for arm in ("uniform", "alphadecay"):
            r = run_arm(arm, cfg, data, tok, seed, device, interval, min_eigs)
            results[arm].append(r)
            alphas = list(r["alphas_end"].values())
            print(
                f"seed {seed} {arm:10s} eval loss {r['eval_loss']:.4f} (ppl {math.exp(r['eval_loss']):.3f})  alpha "
                f"min/median/max {min(alphas):.2f}/{statistics.median(alphas):.2f}/{max(alphas):.2f}  "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    if args.plot:
        plot(results, args.plot)

    import transformers

    def mean(arm):
        return statistics.mean(r["eval_loss"] for r in results[arm])

    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    case = (
        f"{'smoke ' if args.smoke else ''}Llama h{cfg['hidden']} L{cfg['layers']} from scratch, AdamW lr {cfg['lr']} "
        f"wd 0.1, {cfg['steps']} steps, refresh every {interval}, {args.seeds} seeds"
    )
    rows = [
        (case, "eval loss, AlphaDecay vs uniform decay", mean("alphadecay"), mean("uniform")),
        (
            case,
            "eval perplexity, AlphaDecay vs uniform decay",
            math.exp(mean("alphadecay")),
            math.exp(mean("uniform")),
        ),
    ]
    stamp = datetime.date.today().isoformat()
    lines = [
        f"| {stamp} | alphadecay_quality.py | {dev_name} | {torch.__version__} / {transformers.__version__} | {c} | {m} "
        f"| {o:.4g} | {b:.4g} | {o / b:.4f} |"
        for c, m, o, b in rows
    ]
    print("\n".join(lines))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": cfg, "results": results, "rows": lines}) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
