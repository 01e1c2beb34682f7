"""LayerNorm Scaling training throughput: `lns_llama` / `lns_qwen2` vs transformers' Llama / Qwen2 with the same
config, side by side in one process.

Cases: the LNS paper's LLaMA-130M (arXiv 2502.05795, its `configs/llama_130m.json`: hidden 768, MLP 2048, 12
layers, 12 heads, vocab 32000) at B=64 x T=256, and the Qwen2-0.5B shape at B=8 x T=2048. One training step =
forward + backward + fused AdamW step, pure bf16 weights (the paper's precision policy, both arms), SDPA attention.
Each repeat builds and times ours, then the stock model (warm-up, then the median of the timed steps, CUDA events);
peak memory from `torch.cuda.max_memory_allocated`.

    python benchmarks/lns_bench.py --append                  # one GPU, ~45 s (fits an 80 GB H100)
    python benchmarks/lns_bench.py --smoke                   # tiny sizes on the CPU
"""

from __future__ import annotations

import statistics
import time

import _results
import torch


SCRIPT = "lns_bench.py"
LLAMA_130M = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12}  # fmt: skip
CASES = {
    "LLaMA-130M (paper), bf16, B=64, T=256": ("llama", LLAMA_130M, 64, 256),
    "Qwen2-0.5B shape, bf16, B=8, T=2048": ("qwen2", _results.QWEN2_05B, 8, 2048),
}
SMOKE = {"smoke: tiny llama, fp32, B=2, T=32": ("llama", {**LLAMA_130M, "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}, 2, 32)}  # fmt: skip


def _build(family: str, fields: dict, lns: bool, device, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    import hf_plugins  # noqa: F401  (registers lns_llama / lns_qwen2)

    config = AutoConfig.for_model(f"lns_{family}" if lns else family, attn_implementation="sdpa", **fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.train()


def _measure(family, fields, lns, batch, warmup, steps, device, dtype) -> tuple[float, float]:
    """Median step seconds and peak GiB (NaN on the CPU) of one freshly built model."""
    model = _build(family, fields, lns, device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    _results.peak_reset(device)
    times = []
    for _ in range(warmup + steps):
        with _results.Timer(device) as t:
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(t.ms / 1e3)
    peak = _results.peak_gib(device)
    del model, opt
    _results.free_memory(device)
    return statistics.median(times[warmup:]), peak


def run(smoke: bool, repeats: int) -> tuple[list[dict], dict]:
    device = _results.pick_device(smoke)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    warmup, steps = (1, 2) if smoke else (3, 8)
    rows = []
    for case, (family, fields, bsz, seqlen) in (SMOKE if smoke else CASES).items():
        batch = torch.randint(0, fields["vocab_size"], (bsz, seqlen), generator=torch.Generator().manual_seed(0))
        batch = batch.to(device)
        sec, peak = {True: [], False: []}, {True: [], False: []}
        for _ in range(repeats):
            for lns in (True, False):
                s, gib = _measure(family, fields, lns, batch, warmup, steps, device, dtype)
                sec[lns].append(s)
                peak[lns].append(gib)
        label = f"{case}, {repeats} repeats"
        tok = {k: [bsz * seqlen / s for s in v] for k, v in sec.items()}
        ms = {k: [1e3 * s for s in v] for k, v in sec.items()}
        rows.append(_results.row(label, "tokens/s, lns vs stock transformers model", tok[True], tok[False]))
        rows.append(_results.row(label, "ms/step (median), lns vs stock transformers model", ms[True], ms[False]))
        if device.type == "cuda":
            rows.append(_results.row(label, "peak memory GiB, lns vs stock transformers model", peak[True], peak[False]))  # fmt: skip
    return rows, {"device": device.type}


def main(argv=None) -> int:
    args = _results.parser(__doc__).parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, args.repeats)
    device = _results.device_label(torch.device(raw["device"]), args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
