"""Chain-of-Experts training throughput and memory vs transformers' Qwen3-MoE, side by side in one run (issue 8).

Pairs at the same expert shapes (64 experts of width 512, hidden 1024, 8 layers, 16 heads / 4 KV heads, vocab
32000, no shared expert, bf16 weights, SDPA, `grouped_mm` experts requested explicitly):
  - CoE(C=2, K=4) vs Qwen3-MoE(K=8): equal active expert compute (goal: CoE >= 0.9x the MoE's tokens/s);
  - CoE(C=2, K=8) vs Qwen3-MoE(K=16): the paper's memory comparison (same expert FFNs per token).
One step = forward + backward with labels (cross-entropy plus each model's own load-balancing loss at coefficient
0.001), no optimizer. Models alternate in rounds (ours, stock, ours, stock) to average out drift; per-step CUDA-event
times, median after warm-up; peak memory = torch.cuda.max_memory_allocated over the steps (weights, gradients and
activations). Qwen3-MoE has QK-norm in attention, CoE (Llama attention) does not: a small cost difference outside
the experts.

    python benchmarks/coe_bench.py                  # H200: two pairs, ~60-90 s wall
    python benchmarks/coe_bench.py --smoke          # tiny sizes on CPU, < 60 s
    python benchmarks/coe_bench.py --append --out coe.json

Needs only torch + transformers (no TRL / datasets).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SCRIPT = "coe_bench.py"

# The shape of the spec's Qwen3-MoE anchor (132,962 tokens/s with grouped_mm on one H200, spec coe.md).
SHAPE = {
    "vocab_size": 32000,
    "hidden_size": 1024,
    "moe_intermediate_size": 512,
    "intermediate_size": 2048,  # unused: every layer is MoE
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "num_experts": 64,
    "max_position_embeddings": 4096,
}
SMOKE_SHAPE = {
    "vocab_size": 256,
    "hidden_size": 64,
    "moe_intermediate_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts": 8,
    "max_position_embeddings": 256,
}
# (label, CoE (C, K), MoE K)
PAIRS = [("same compute", (2, 4), 8), ("memory", (2, 8), 16)]
SMOKE_PAIRS = [("same compute", (2, 2), 4), ("memory", (2, 4), 8)]


def _build(kind: str, shape: dict, k: int, c: int, device: str, dtype):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    from hf_plugins.models.coe import CoEConfig

    common = {"router_aux_loss_coef": 0.001, "tie_word_embeddings": False}
    if kind == "coe":
        config = CoEConfig(
            **shape, **common, num_experts_per_tok=k, num_iterations=c, n_shared_experts=0, rms_norm_eps=1e-6
        )
    else:
        config = Qwen3MoeConfig(**shape, **common, num_experts_per_tok=k, output_router_logits=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation="sdpa", experts_implementation="grouped_mm"
        )
    assert model.config._experts_implementation == "grouped_mm"
    return model.train()


def _time_model(model, batch, steps: int, warmup: int, device: str) -> list[float]:
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        if device == "cuda":
            end.record()
            torch.cuda.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(dt)
    return times


def _measure(kind, shape, k, c, batch, steps, warmup, device, dtype):
    """(step times, peak GiB or None, parameters); a CUDA out-of-memory gives ([], 'OOM', params)."""
    model = _build(kind, shape, k, c, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        times = _time_model(model, batch, steps, warmup, device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    except torch.OutOfMemoryError:
        times, peak = [], "OOM"
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return times, peak, params


def run(smoke: bool, steps: int, warmup: int, rounds: int, batch_size: int, seq_len: int) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = SMOKE_SHAPE if smoke else SHAPE
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, shape["vocab_size"], (batch_size, seq_len), generator=g).to(device)
    rows = []
    for label, (c, k_coe), k_moe in SMOKE_PAIRS if smoke else PAIRS:
        case = (
            f"{label}: CoE C={c} K={k_coe} vs Qwen3-MoE K={k_moe}; {shape['num_experts']} experts x "
            f"{shape['moe_intermediate_size']}, H={shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
            f"B={batch_size}, T={seq_len}, {str(dtype).removeprefix('torch.')}, grouped_mm, fwd+bwd"
        )
        times = {"ours": [], "baseline": []}
        peak = {"ours": 0.0, "baseline": 0.0}
        params = {}
        for _ in range(rounds):
            for arm, kind, k, cc in (("ours", "coe", k_coe, c), ("baseline", "qwen3_moe", k_moe, 1)):
                t, p, params[arm] = _measure(kind, shape, k, cc, batch, steps, warmup, device, dtype)
                times[arm] += t
                peak[arm] = p if p == "OOM" or peak[arm] == "OOM" or p is None else max(peak[arm], p)
        tok = {a: batch_size * seq_len / statistics.median(v) if v else float("nan") for a, v in times.items()}
        ms = {a: 1e3 * statistics.median(v) if v else float("nan") for a, v in times.items()}
        new = [
            {"case": case, "metric": "tokens/s", "ours": tok["ours"], "baseline": tok["baseline"]},
            {"case": case, "metric": "ms/step (median)", "ours": ms["ours"], "baseline": ms["baseline"]},
        ]
        if device == "cuda":
            new.append({"case": case, "metric": "peak memory GiB", "ours": peak["ours"], "baseline": peak["baseline"]})
        new.append(
            {
                "case": case,
                "metric": "parameters (M)",
                "ours": params["ours"] / 1e6,
                "baseline": params["baseline"] / 1e6,
            }
        )
        print(case)
        for r in new:
            numeric = all(isinstance(r[a], float) for a in ("ours", "baseline"))
            r["ratio"] = r["ours"] / r["baseline"] if numeric else float("nan")
            print(
                f"    {r['metric']:18s} ours {_fmt(r['ours']):>10}  Qwen3-MoE {_fmt(r['baseline']):>10}  ratio {r['ratio']:.3f}"
            )
        rows += new
    return rows


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 8; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per round (default 3; smoke 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating ours/stock rounds (default 2; smoke 1)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 8; smoke 2)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 2048; smoke 64)")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md (not with --smoke)")
    p.add_argument("--out", default=None, help="write the rows to this JSON file")
    args = p.parse_args()
    steps = args.steps or (2 if args.smoke else 8)
    rounds = args.rounds or (1 if args.smoke else 2)
    warmup = args.warmup or (1 if args.smoke else 3)
    batch_size = args.batch_size or (2 if args.smoke else 8)
    seq_len = args.seq_len or (64 if args.smoke else 2048)
    t0 = time.perf_counter()
    rows = run(args.smoke, steps, warmup, rounds, batch_size, seq_len)
    wall = time.perf_counter() - t0
    print(f"wall {wall:.1f} s")

    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
    stack = f"{torch.__version__} / {transformers.__version__}"
    date = datetime.date.today().isoformat()
    if args.out:
        payload = {"device": device, "stack": stack, "wall_s": wall, "rows": rows}
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
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
