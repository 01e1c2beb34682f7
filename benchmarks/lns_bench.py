"""LayerNorm Scaling training throughput: `lns_llama` / `lns_qwen2` vs transformers' Llama / Qwen2 with the same
config, side by side in one run (issue 9: tokens/s >= 0.98x).

One training step = forward + backward + fused AdamW step, pure bf16 weights (the paper's precision policy,
both arms), SDPA attention. Each model is timed in two alternating rounds (ours, stock, ours, stock) to average
out drift; per-step CUDA-event times, median after warm-up; peak memory from torch.cuda.max_memory_allocated.

    python benchmarks/lns_bench.py                   # H200: two cases, ~40-60 s wall
    python benchmarks/lns_bench.py --smoke           # tiny sizes on CPU, < 60 s
    python benchmarks/lns_bench.py --append --out lns.json

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

SCRIPT = "lns_bench.py"

CASES = {
    # The paper's LLaMA-130M (configs/llama_130m.json: 768 / 2048 / 12 / 12, vocab 32000, T=256).
    "LLaMA-130M (paper), bf16, B=64, T=256": (
        "llama",
        {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
         "num_attention_heads": 12},
        64,
        256,
    ),
    # The project's stock anchor shape (Qwen2-0.5B: 86,101 tokens/s for stock Qwen2 on one H200, spec lns.md).
    "Qwen2-0.5B shape, bf16, B=8, T=2048": (
        "qwen2",
        {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
         "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True},
        8,
        2048,
    ),
}  # fmt: skip
SMOKE = {
    "smoke: tiny llama, fp32, B=2, T=64": (
        "llama",
        {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
         "num_attention_heads": 4},
        2,
        64,
    ),
}  # fmt: skip


def _build(family: str, fields: dict, lns: bool, device: str, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    import hf_plugins  # noqa: F401  (registers lns_llama / lns_qwen2)

    config = AutoConfig.for_model(f"lns_{family}" if lns else family, attn_implementation="sdpa", **fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.train()


def _time_model(model, batch, steps: int, warmup: int, device: str) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            end.record()
            torch.cuda.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    del opt
    return times


def run(smoke: bool, steps: int, warmup: int, rounds: int) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for case, (family, fields, bsz, seqlen) in (SMOKE if smoke else CASES).items():
        g = torch.Generator().manual_seed(0)
        batch = torch.randint(0, fields["vocab_size"], (bsz, seqlen), generator=g).to(device)
        step_times = {True: [], False: []}
        peak = {True: 0.0, False: 0.0}
        for _ in range(rounds):
            for lns in (True, False):
                model = _build(family, fields, lns, device, dtype)
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                step_times[lns] += _time_model(model, batch, steps, warmup, device)
                if device == "cuda":
                    peak[lns] = max(peak[lns], torch.cuda.max_memory_allocated() / 2**30)
                del model
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
        tok = {k: bsz * seqlen / statistics.median(v) for k, v in step_times.items()}
        ms = {k: 1e3 * statistics.median(v) for k, v in step_times.items()}
        rows.append({"case": case, "metric": "tokens/s", "ours": tok[True], "baseline": tok[False]})
        rows.append({"case": case, "metric": "ms/step (median)", "ours": ms[True], "baseline": ms[False]})
        if device == "cuda":
            rows.append({"case": case, "metric": "peak memory GiB", "ours": peak[True], "baseline": peak[False]})
        for r in rows[-3:]:
            if r["case"] == case:
                r["ratio"] = r["ours"] / r["baseline"]
                print(
                    f"{case:45s} {r['metric']:18s} ours {r['ours']:12.2f}  stock {r['baseline']:12.2f}  ratio {r['ratio']:.3f}"
                )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 10; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per round (default 3; smoke 1)")
    p.add_argument("--rounds", type=int, default=2, help="alternating ours/stock rounds")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write the rows to this JSON file")
    args = p.parse_args()
    steps = args.steps or (3 if args.smoke else 10)
    warmup = args.warmup or (1 if args.smoke else 3)
    t0 = time.perf_counter()
    rows = run(args.smoke, steps, warmup, args.rounds)
    print(f"wall {time.perf_counter() - t0:.1f} s")

    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
    stack = f"{torch.__version__} / {transformers.__version__}"
    date = datetime.date.today().isoformat()
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "stack": stack, "rows": rows}, indent=2) + "\n")
    if args.append:
        lines = [
            f"| {date} | {SCRIPT} | {device} | {stack} | {r['case']} | {r['metric']} | {r['ours']:.4g} | "
            f"{r['baseline']:.4g} | {r['ratio']:.3f} |"
            for r in rows
        ]
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
