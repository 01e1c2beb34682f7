"""NeuroTrails training throughput vs the models it is compared with, side by side in one run (issue 10).

LLaMA-130M shape (hidden 768, 12 layers, 12 heads, MLP 2048, vocab 32000), bf16 weights, SDPA, fused AdamW, random
tokens, B=32 x T=1024 (32k tokens per step). One training step = forward + backward + optimizer step (+ the mask
multiply for NeuroTrails). Arms, built and measured one after the other:

  - NeuroTrails: 3 trails, blocks_in_head 8 (4 shared + 3 x 8 trail blocks), density 0.9, ERK, `sparsity_step`
    after every optimizer step (the topology update, every 50 steps, is timed separately and amortised);
  - dense TreeNet: the same architecture at density 1.0 (no masks): the cost of sparsity alone;
  - single: one dense LlamaForCausalLM of the same depth (12 layers);
  - ensemble: three independent LlamaForCausalLM (the full ensemble NeuroTrails replaces), one optimizer.

Per arm: median step time over the timed steps (CUDA-synchronised, after warm-up), tokens/s, peak
torch.cuda.max_memory_allocated. For NeuroTrails also the time of one topology update (prune + regrow + moment
reset over every sparse layer; median of 3) and of the per-step mask multiply; their share of training time at
update_frequency 50 (goal <= 2%).

    python benchmarks/neurotrails_bench.py --append --out neurotrails_bench.json   # H200: ~60-90 s
    python benchmarks/neurotrails_bench.py --smoke                                  # tiny sizes, CPU, < 60 s

Needs only torch + transformers (no TRL / datasets).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SCRIPT = "neurotrails_bench.py"
GIB = 1024**3

# LLaMA-130M of the official code (configs/llama_130m.json).
SHAPE = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 1024,
}
SMOKE_SHAPE = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
}
TRAILS = {"num_trails": 3, "blocks_in_head": 8, "update_frequency": 50}
SMOKE_TRAILS = {"num_trails": 3, "blocks_in_head": 2, "update_frequency": 50}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _build(arm: str, shape: dict, trails: dict, device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hf_plugins.models.neurotrails import NeuroTrailsConfig

    torch.manual_seed(0)
    with torch.device(device):
        if arm in ("neurotrails", "treenet"):
            density = 0.9 if arm == "neurotrails" else 1.0
            config = NeuroTrailsConfig(**shape, **trails, density=density, diversity_tokens=0)
            models = [AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")]
        else:
            config = LlamaConfig(**shape, tie_word_embeddings=False)
            n = 3 if arm == "ensemble" else 1
            models = [
                AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
                for _ in range(n)
            ]
    for m in models:
        m.train()
    return models


def _run_arm(arm, shape, trails, device, batch, warmup, steps):
    models = _build(arm, shape, trails, device)
    params = [p for m in models for p in m.parameters()]
    n_params = sum(p.numel() for p in params)
    nonzero = n_params
    nt = models[0] if arm == "neurotrails" else None
    if nt is not None:
        nonzero = n_params - sum(m.weight.numel() - m.nt_num_active for _, m in nt.sparse_modules())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def step(i):
        for m in models:
            m(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        if nt is not None:
            # a step index that never triggers a topology update: the update is measured below
            nt.sparsity_step(opt, step=0, total_steps=10_000)
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step(i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    out = {
        "arm": arm,
        "params": n_params,
        "nonzero": nonzero,
        "step_s": step_s,
        "tokens_per_s": batch.numel() / step_s,
        "peak_gib": torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan"),
    }
    if nt is not None:
        update, apply = [], []
        for k in range(3):
            nt(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            _sync(device)
            t0 = time.perf_counter()
            nt.apply_masks()
            _sync(device)
            t1 = time.perf_counter()
            info = nt.sparsity_step(opt, step=(k + 1) * 50 - 1, total_steps=10_000)
            _sync(device)
            t2 = time.perf_counter()
            assert info is not None  # the update ran
            apply.append(t1 - t0)
            update.append(t2 - t1)
            opt.zero_grad(set_to_none=True)
        out["update_s"] = statistics.median(update)
        out["apply_s"] = statistics.median(apply)
        # the step time above includes one mask multiply; the update happens once per update_frequency steps
        freq = trails["update_frequency"]
        out["update_share"] = out["update_s"] / (freq * step_s + out["update_s"])
        out["apply_share"] = out["apply_s"] / step_s
        out["tokens_per_s_amortised"] = batch.numel() / (step_s + out["update_s"] / freq)
    return out


def run(smoke: bool, batch_size: int, seq_len: int, warmup: int, steps: int) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    shape, trails = (SMOKE_SHAPE, SMOKE_TRAILS) if smoke else (SHAPE, TRAILS)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = torch.randint(0, shape["vocab_size"], (batch_size, seq_len), generator=g).to(device)
    res = {}
    for arm in ("neurotrails", "treenet", "single", "ensemble"):
        res[arm] = _run_arm(arm, shape, trails, device, batch, warmup, steps)
        gc.collect()  # the arm's models and optimizer went out of scope with _run_arm
        if device.type == "cuda":
            torch.cuda.empty_cache()
        r = res[arm]
        extra = (
            f", update {r['update_s'] * 1e3:.1f} ms, mask multiply {r['apply_s'] * 1e3:.2f} ms"
            if "update_s" in r
            else ""
        )
        print(
            f"{arm:12s} params {r['params'] / 1e6:7.1f}M (non-zero {r['nonzero'] / 1e6:7.1f}M)  step "
            f"{r['step_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:10.0f} tok/s  peak {r['peak_gib']:.1f} GiB{extra}",
            flush=True,
        )
    nt = res["neurotrails"]
    case = (
        f"LLaMA-130M shape{' (smoke)' if smoke else ''}, 3 trails x {trails['blocks_in_head']} blocks, density 0.9, "
        f"bf16, B={batch_size} T={seq_len}"
    )
    rows = []

    def row(metric, ours, baseline):
        rows.append({"case": case, "metric": metric, "ours": ours, "baseline": baseline, "ratio": ours / baseline})

    tps = nt["tokens_per_s_amortised"]
    row("tokens/s, NeuroTrails (update amortised) vs 3 independent models", tps, res["ensemble"]["tokens_per_s"])
    row("tokens/s, NeuroTrails (update amortised) vs one dense model, same depth", tps, res["single"]["tokens_per_s"])
    row("tokens/s, NeuroTrails vs dense TreeNet (cost of the masks)", tps, res["treenet"]["tokens_per_s"])
    row("peak memory GiB, NeuroTrails vs 3 independent models", nt["peak_gib"], res["ensemble"]["peak_gib"])
    row("peak memory GiB, NeuroTrails vs one dense model", nt["peak_gib"], res["single"]["peak_gib"])
    row(
        "parameters M (non-zero), NeuroTrails vs 3 independent models",
        nt["nonzero"] / 1e6,
        res["ensemble"]["params"] / 1e6,
    )
    row("topology update share of training time at update_frequency 50 (baseline: goal)", nt["update_share"], 0.02)
    row("mask-multiply share of a step (baseline: goal)", nt["apply_share"], 0.02)
    row("topology update ms (baseline: one NeuroTrails step ms)", nt["update_s"] * 1e3, nt["step_s"] * 1e3)
    for r in rows:
        print(f"{r['metric']}: ours {_fmt(r['ours'])}, baseline {_fmt(r['baseline'])}, ratio {r['ratio']:.3f}")
    return rows


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 32; smoke 2)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; smoke 32)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per arm (default 3; smoke 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per arm (default 10; smoke 2)")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md (not with --smoke)")
    p.add_argument("--out", default=None, help="write the rows to this JSON file")
    args = p.parse_args()
    batch_size = args.batch_size or (2 if args.smoke else 32)
    seq_len = args.seq_len or (32 if args.smoke else 1024)
    warmup = args.warmup or (1 if args.smoke else 3)
    steps = args.steps or (2 if args.smoke else 10)
    t0 = time.perf_counter()
    rows = run(args.smoke, batch_size, seq_len, warmup, steps)
    print(f"wall {time.perf_counter() - t0:.1f} s")

    import transformers

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu"
    stack = f"{torch.__version__.split('+')[0]} / {transformers.__version__}"
    if args.out:
        meta = {"date": date, "script": SCRIPT, "device": device, "stack": stack}
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    if args.append and args.smoke:
        print("--append ignored with --smoke: RESULTS.md holds full-size measurements only")
    elif args.append:
        lines = [
            f"| {date} | {SCRIPT} | {device} | {stack} | {r['case']} | {r['metric']} | {_fmt(r['ours'])} | "
            f"{_fmt(r['baseline'])} | {r['ratio']:.3f} |"
            for r in rows
        ]
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
