"""NeuroTrails training throughput vs three independent models (the ensemble it replaces), side by side in one
process, and the cost of its topology update.

LLaMA-130M shape (the NeuroTrails code's `configs/llama_130m.json`: hidden 768, 12 layers, 12 heads, MLP 2048,
vocab 32000), bf16 weights, SDPA, fused AdamW, random tokens, B=32 x T=1024. One training step = forward +
backward + optimizer step (+ the mask multiply for NeuroTrails). Arms, built and measured one after the other:

- NeuroTrails: 3 trails, blocks_in_head 8 (4 shared + 3 x 8 trail blocks), density 0.9, ERK, `sparsity_step` after
  every optimizer step; the topology update (prune + regrow + moment reset over every sparse layer, every 50
  steps) is timed on its own and amortised;
- ensemble: three independent `LlamaForCausalLM` of the same depth, one optimizer (the stock alternative);
- `--all-arms` adds the dense TreeNet (the same architecture at density 1.0: the cost of the masks alone) and one
  dense model of the same depth.

Per arm: `--repeats` blocks of timed steps after warm-up (CUDA-synchronised wall time), each block's median one
repeat; tokens/s; peak `torch.cuda.max_memory_allocated`. NeuroTrails: one topology update and one mask multiply
per repeat, and their share of training time at update_frequency 50.

    python benchmarks/neurotrails_bench.py --append          # one GPU, ~30 s (fits an 80 GB H100)
    python benchmarks/neurotrails_bench.py --smoke           # tiny sizes on the CPU
"""

from __future__ import annotations

import statistics
import time

import _results
import torch


SCRIPT = "neurotrails_bench.py"
SHAPE = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 1024,
}
SMOKE_SHAPE = {**SHAPE, "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128}  # fmt: skip
TRAILS = {"num_trails": 3, "blocks_in_head": 8, "update_frequency": 50}
SMOKE_TRAILS = {**TRAILS, "blocks_in_head": 2}


def _build(arm: str, shape: dict, trails: dict, device) -> list:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hf_plugins.models.neurotrails import NeuroTrailsConfig

    torch.manual_seed(0)
    kw = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    with torch.device(device):
        if arm in ("neurotrails", "treenet"):
            density = 0.9 if arm == "neurotrails" else 1.0
            config = NeuroTrailsConfig(**shape, **trails, density=density, diversity_tokens=0)
            return [AutoModelForCausalLM.from_config(config, **kw).train()]
        config = LlamaConfig(**shape, tie_word_embeddings=False)
        return [AutoModelForCausalLM.from_config(config, **kw).train() for _ in range(3 if arm == "ensemble" else 1)]


def _run_arm(arm, shape, trails, device, batch, warmup, steps, repeats) -> dict:
    models = _build(arm, shape, trails, device)
    params = [p for m in models for p in m.parameters()]
    nt = models[0] if arm == "neurotrails" else None
    n_params = nonzero = sum(p.numel() for p in params)
    if nt is not None:
        nonzero -= sum(m.weight.numel() - m.nt_num_active for _, m in nt.sparse_modules())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def step():
        for m in models:
            m(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        if nt is not None:  # a step index that never triggers a topology update: the update is timed below
            nt.sparsity_step(opt, step=0, total_steps=10_000)
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _results.peak_reset(device)
    step_s = []
    for _ in range(repeats):
        times = []
        for _ in range(steps):
            _results.sync(device)
            t0 = time.perf_counter()
            step()
            _results.sync(device)
            times.append(time.perf_counter() - t0)
        step_s.append(statistics.median(times))
    out = {"params": n_params, "nonzero": nonzero, "step_s": step_s}
    out["tokens_per_s"] = [batch.numel() / s for s in step_s]
    out["peak_gib"] = _results.peak_gib(device)
    if nt is not None:
        update, apply = [], []
        for k in range(repeats):
            nt(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            _results.sync(device)
            t0 = time.perf_counter()
            nt.apply_masks()
            _results.sync(device)
            t1 = time.perf_counter()
            if nt.sparsity_step(opt, step=(k + 1) * 50 - 1, total_steps=10_000) is None:
                raise RuntimeError("the topology update did not run at a multiple of update_frequency")
            _results.sync(device)
            apply.append(t1 - t0)
            update.append(time.perf_counter() - t1)
            opt.zero_grad(set_to_none=True)
        freq = trails["update_frequency"]
        out["update_s"], out["apply_s"] = update, apply
        out["update_share"] = [u / (freq * s + u) for u, s in zip(update, step_s)]
        out["apply_share"] = [a / s for a, s in zip(apply, step_s)]
        out["tokens_per_s_amortised"] = [batch.numel() / (s + u / freq) for u, s in zip(update, step_s)]
    return out  # the caller frees the models and the optimizer


def run(smoke: bool, repeats: int, all_arms: bool, batch_size: int, seq_len: int) -> tuple[list[dict], dict]:
    device = _results.pick_device(smoke)
    torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 products outside the bf16 weights, in every arm
    shape, trails = (SMOKE_SHAPE, SMOKE_TRAILS) if smoke else (SHAPE, TRAILS)
    warmup, steps = (1, 2) if smoke else (3, 5)
    batch = torch.randint(0, shape["vocab_size"], (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    batch = batch.to(device)
    res = {}
    for arm in ("neurotrails", "ensemble", *(("treenet", "single") if all_arms else ())):
        res[arm] = _run_arm(arm, shape, trails, device, batch, warmup, steps, repeats)
        _results.free_memory(device)
        print(arm, res[arm], flush=True)
    nt, ens = res["neurotrails"], res["ensemble"]
    case = (
        f"LLaMA-130M shape{' (smoke)' if smoke else ''}, 3 trails x {trails['blocks_in_head']} blocks, density 0.9, "
        f"bf16, B={batch_size} T={seq_len}, {repeats} repeats"
    )
    row = _results.row
    tps = nt["tokens_per_s_amortised"]
    rows = [row(case, "tokens/s, NeuroTrails (update amortised) vs 3 independent models", tps, ens["tokens_per_s"])]
    if all_arms:
        rows.append(row(case, "tokens/s, NeuroTrails (update amortised) vs one dense model, same depth", tps, res["single"]["tokens_per_s"]))  # fmt: skip
        rows.append(row(case, "tokens/s, NeuroTrails vs dense TreeNet (cost of the masks)", nt["tokens_per_s"], res["treenet"]["tokens_per_s"]))  # fmt: skip
    if device.type == "cuda":
        rows.append(row(case, "peak memory GiB, NeuroTrails vs 3 independent models", nt["peak_gib"], ens["peak_gib"]))
    rows += [
        row(
            case,
            "parameters M (non-zero), NeuroTrails vs 3 independent models",
            nt["nonzero"] / 1e6,
            ens["params"] / 1e6,
        ),
        row(
            case,
            "topology update share of training time at update_frequency 50 (baseline: goal)",
            nt["update_share"],
            0.02,
        ),
        row(case, "mask-multiply share of a step (baseline: goal)", nt["apply_share"], 0.02),
        row(
            case,
            "topology update ms (baseline: one NeuroTrails step ms)",
            [1e3 * u for u in nt["update_s"]],
            [1e3 * s for s in nt["step_s"]],
        ),
    ]
    return rows, {"device": device.type, **res}


def main(argv=None) -> int:
    p = _results.parser(__doc__)
    p.add_argument("--all-arms", action="store_true", help="also the dense TreeNet and one dense model")
    args = p.parse_args(argv)
    batch_size, seq_len = (2, 32) if args.smoke else (32, 1024)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, args.repeats, args.all_arms, batch_size, seq_len)
    device = _results.device_label(torch.device(raw["device"]), args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
