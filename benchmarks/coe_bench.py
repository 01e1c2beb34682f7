"""Chain-of-Experts training throughput and memory vs transformers' Qwen3-MoE at the same expert shapes.

Both models: 64 experts of width 512, hidden 1024, 8 layers, 16 heads / 4 KV heads, vocab 32000, no shared expert,
bf16 weights, SDPA, `grouped_mm` experts requested explicitly (0.89B parameters each). Pairs:

- same compute: CoE(C=2, K=4) vs Qwen3-MoE(K=8), equal active expert FFNs per token;
- `--memory-pair` adds CoE(C=2, K=8) vs Qwen3-MoE(K=16), the paper's memory comparison (arXiv 2506.18945).

One step = forward + backward with labels (cross-entropy plus each model's load-balancing loss at coefficient
0.001), no optimizer. Each repeat builds and times ours, then the stock model (warm-up, then the median of the
timed steps, CUDA events); peak memory = `torch.cuda.max_memory_allocated` over the steps. Qwen3-MoE has QK-norm in
attention and CoE (Llama attention) has not: a small cost difference outside the experts.

    python benchmarks/coe_bench.py --append                  # one GPU, ~35 s
    python benchmarks/coe_bench.py --smoke                   # tiny sizes on the CPU
"""

from __future__ import annotations

import statistics
import time

import _results
import torch


SCRIPT = "coe_bench.py"
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
# (label, CoE (C, K), Qwen3-MoE K)
PAIRS = {"same compute": ((2, 4), 8), "memory": ((2, 8), 16)}
SMOKE_PAIRS = {"same compute": ((2, 2), 4), "memory": ((2, 4), 8)}


def _build(kind: str, shape: dict, k: int, c: int, device, dtype):
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
    if model.config._experts_implementation != "grouped_mm":  # a silent fallback would time another kernel
        raise RuntimeError(f"{kind}: experts run {model.config._experts_implementation!r}, not grouped_mm")
    return model.train()


def _measure(kind, shape, k, c, batch, warmup, steps, device, dtype) -> tuple[float, float, int]:
    """Median step seconds, peak GiB (NaN on the CPU) and parameter count of one freshly built model."""
    model = _build(kind, shape, k, c, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    _results.peak_reset(device)
    times = []
    for _ in range(warmup + steps):
        with _results.Timer(device) as t:
            model(input_ids=batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(t.ms / 1e3)
    peak = _results.peak_gib(device)
    del model
    _results.free_memory(device)
    return statistics.median(times[warmup:]), peak, params


def run(smoke: bool, repeats: int, memory_pair: bool, batch_size: int, seq_len: int) -> list[dict]:
    device = _results.pick_device(smoke)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape, pairs = (SMOKE_SHAPE, SMOKE_PAIRS) if smoke else (SHAPE, PAIRS)
    warmup, steps = (1, 2) if smoke else (3, 8)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, shape["vocab_size"], (batch_size, seq_len), generator=g).to(device)
    rows = []
    for label in ("same compute", "memory") if memory_pair else ("same compute",):
        (c, k_coe), k_moe = pairs[label]
        case = (
            f"{label}: CoE C={c} K={k_coe} vs Qwen3-MoE K={k_moe}; {shape['num_experts']} experts x "
            f"{shape['moe_intermediate_size']}, H={shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
            f"B={batch_size}, T={seq_len}, {str(dtype).removeprefix('torch.')}, grouped_mm, fwd+bwd, {repeats} repeats"
        )
        sec, peak, params = {"ours": [], "stock": []}, {"ours": [], "stock": []}, {}
        for _ in range(repeats):
            for arm, kind, k, cc in (("ours", "coe", k_coe, c), ("stock", "qwen3_moe", k_moe, 1)):
                s, gib, params[arm] = _measure(kind, shape, k, cc, batch, warmup, steps, device, dtype)
                sec[arm].append(s)
                peak[arm].append(gib)
        tok = {arm: [batch_size * seq_len / s for s in v] for arm, v in sec.items()}
        ms = {arm: [1e3 * s for s in v] for arm, v in sec.items()}
        new = [
            _results.row(case, "tokens/s, CoE vs Qwen3-MoE", tok["ours"], tok["stock"]),
            _results.row(case, "ms/step (median), CoE vs Qwen3-MoE", ms["ours"], ms["stock"]),
            _results.row(case, "parameters (M), CoE vs Qwen3-MoE", params["ours"] / 1e6, params["stock"] / 1e6),
        ]
        if device.type == "cuda":
            new.insert(2, _results.row(case, "peak memory GiB, CoE vs Qwen3-MoE", peak["ours"], peak["stock"]))
        rows += new
    return rows, {"device": device.type}


def main(argv=None) -> int:
    p = _results.parser(__doc__)
    p.add_argument("--memory-pair", action="store_true", help="also CoE C=2 K=8 vs Qwen3-MoE K=16")
    args = p.parse_args(argv)
    batch_size, seq_len = (2, 64) if args.smoke else (8, 2048)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, args.repeats, args.memory_pair, batch_size, seq_len)
    device = _results.device_label(torch.device(raw["device"]), args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
