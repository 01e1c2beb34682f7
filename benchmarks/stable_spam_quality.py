"""Stable-SPAM quality check: pre-train a small Llama from scratch with simulated INT4 weight-and-activation
quantisation (symmetric fake quantisation with a straight-through estimator on every decoder linear layer) at a
high learning rate, AdamW vs AdamW + clip 1.0 vs Stable-SPAM vs the AdaGN-only ablation; loss spikes and final
eval loss, 2 seeds.

    python benchmarks/stable_spam_quality.py            # GPU, ~60M-shaped Llama core (~2 min on an H200)
    python benchmarks/stable_spam_quality.py --smoke    # tiny, CPU
    python benchmarks/stable_spam_quality.py --append --out stable_spam_quality.json

Data: the embedded arithmetic word problems as plain text (hf_plugins.data.arithmetic) with the in-code word-level
tokenizer, so the vocabulary is small and the ~60M-shaped model's parameters sit in the decoder layers (hidden 512,
8 layers, intermediate 1376: the spec's "60m" core). Spike: a loss above 1.5x the median of the previous 20 steps.
The paper's claim (arXiv 2502.17055 Fig. 1/6): in 4-bit training Adam spikes and ends higher; Stable-SPAM stays stable.
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
import types
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


FULL = {"hidden": 512, "layers": 8, "heads": 8, "inter": 1376, "steps": 400, "batch": 32, "seq": 128, "lr": 3e-3}
SMOKE = {"hidden": 32, "layers": 2, "heads": 4, "inter": 64, "steps": 8, "batch": 4, "seq": 32, "lr": 3e-3}


class _STEQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, dim):
        qmax = 2 ** (bits - 1) - 1
        scale = x.detach().abs().amax(dim=dim, keepdim=True).clamp_min(1e-8) / qmax
        return (x / scale).round().clamp(-qmax - 1, qmax) * scale

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def _quant_forward(self, x):
    w = _STEQuant.apply(self.weight, self.bits, 1)  # per output channel
    xq = _STEQuant.apply(x, self.bits, -1)  # per token
    return F.linear(xq, w, self.bias)


def quantise_linears(model, bits: int) -> int:
    n = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            module.bits = bits
            module.forward = types.MethodType(_quant_forward, module)
            n += 1
    return n


def make_data(tok, n_train, n_eval, seq, seed=0):
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    cfg = ArithmeticConfig(seed=seed, num_train=n_train, num_test=n_eval)
    out = {}
    for split, n in (("train", n_train), ("test", n_eval)):
        texts = [p.plain_text() for p in generate_problems(cfg, split=split)[:n]]
        ids = tok(" ".join(t + " " + tok.eos_token for t in texts))["input_ids"]
        usable = len(ids) // seq * seq
        out[split] = torch.tensor(ids[:usable]).view(-1, seq)
    return out


def run_arm(arm, cfg, data, tok, seed, device, bits):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_plugins import StableSPAM, hf_param_groups

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
    if bits:
        quantise_linears(model, bits)
    groups = hf_param_groups(model, 0.0)
    lr, steps = cfg["lr"], cfg["steps"]
    if arm.startswith("adamw"):
        opt = torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")
    else:
        kw = {"adaclip": False, "reset_interval": None} if arm == "adagn_only" else {}
        opt = StableSPAM(groups, lr=lr, total_T=steps, **kw)  # class defaults, no global clipping
    clip = 1.0 if arm == "adamw_clip1" else 0.0
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))),
    )
    gen = torch.Generator().manual_seed(seed)
    train = data["train"]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses, grad_norms = [], []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, train.shape[0], (cfg["batch"],), generator=gen)
        batch = train[idx].to(device)
        with amp:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        grad_norms.append(float(gn))
    model.eval()
    with torch.no_grad(), amp:
        test = data["test"][:256].to(device)
        eval_loss = model(input_ids=test, labels=test).loss.item()
    spikes = sum(
        1
        for i in range(20, len(losses))
        if not math.isfinite(losses[i]) or losses[i] > 1.5 * statistics.median(losses[i - 20 : i])
    )
    return {
        "eval_loss": eval_loss,
        "final_train_loss": statistics.mean(losses[-10:]),
        "spikes": spikes,
        "max_grad_norm": max(grad_norms),
        "losses": losses,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--bits", type=int, default=4, help="fake-quantisation bits (0: bf16 autocast only)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None)
    args = ap.parse_args()

    from hf_plugins.testing import tiny_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.lr:
        cfg["lr"] = args.lr
    tok = tiny_tokenizer()
    data = make_data(tok, 200 if args.smoke else 20000, 50 if args.smoke else 1000, cfg["seq"])
    arms = ["adamw", "adamw_clip1", "stable_spam", "adagn_only"]
    t0 = time.perf_counter()
    results: dict = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        for arm in arms:
            r = run_arm(arm, cfg, data, tok, seed, device, args.bits)
            results[arm].append(r)
            print(
                f"seed {seed} {arm:12s} eval loss {r['eval_loss']:.4f}  train {r['final_train_loss']:.4f}  "
                f"spikes {r['spikes']}  max grad norm {r['max_grad_norm']:.3g}  ({time.perf_counter() - t0:.0f} s)"
            )

    def mean(arm, key):
        return statistics.mean(r[key] for r in results[arm])

    import transformers

    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    case = (
        f"{'smoke ' if args.smoke else ''}Llama h{cfg['hidden']} L{cfg['layers']} from scratch, "
        f"{'INT' + str(args.bits) + ' fake-quant W+A' if args.bits else 'bf16'}, lr {cfg['lr']}, {cfg['steps']} steps, "
        f"{args.seeds} seeds"
    )
    rows = []
    for base in ("adamw", "adamw_clip1"):
        rows.append(
            (case, f"eval loss, Stable-SPAM vs {base}", mean("stable_spam", "eval_loss"), mean(base, "eval_loss"))
        )
        rows.append((case, f"loss spikes, Stable-SPAM vs {base}", mean("stable_spam", "spikes"), mean(base, "spikes")))
    rows.append((case, "eval loss, AdaGN-only vs adamw", mean("adagn_only", "eval_loss"), mean("adamw", "eval_loss")))
    stamp = datetime.date.today().isoformat()
    lines = [
        f"| {stamp} | stable_spam_quality.py | {dev_name} | {torch.__version__} / {transformers.__version__} | {c} | {m} "
        f"| {o:.4g} | {b:.4g} | {(o / b) if b else float('nan'):.3f} |"
        for c, m, o, b in rows
    ]
    print("\n".join(lines))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"config": cfg, "bits": args.bits, "results": results, "rows": lines}) + "\n"
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
