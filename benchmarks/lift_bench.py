"""LIFT vs LoRA r=16 (all-linear) vs full fine-tuning on a Qwen2-0.5B-shaped model (issue 3, "Benchmarks").

Side by side in one run, pure bf16 weights, random tokens, no gradient checkpointing, fused AdamW for every arm:

- full FT: every parameter trains (bf16 states).
- LoRA: PEFT `LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")` (fp32 adapter and states).
- LIFT: `LiftConfig(r=16)` on the same seven projections: exactly LoRA-r16's trainable-entry budget, as configured
  by default (W_eff rebuilt in every layer's forward and backward, the memory-lean setting) and with the
  effective-weight cache (`cache_effective_weight=True`: W_eff kept between steps, one more copy of the weights).

Two batch shapes: B=8 x T=2048 (activations dominate) and B=1 x T=256 (weights and states dominate). Per arm and
shape: median step time (CUDA events, after warm-up), tokens/s, peak `torch.cuda.max_memory_allocated`, and the
optimizer-state bytes. For LIFT also the time to select every mask (first selection) and to re-select every mask
with the Adam-state remap (`refresh_masks`), for `selection_method="eigh"` (default) and "randomized", the mask
overlap of "randomized" with "eigh" over the whole model, and of "eigh" with the exact fp64 SVD on layer 0.

Goals (issue 3): LIFT step time <= LoRA's; peak memory <= LoRA's; optimizer state <= 10% of full FT's; one
refresh of every mask <= 2 s.

    python benchmarks/lift_bench.py --append --out lift_bench.json   # H200: ~60-90 s
    python benchmarks/lift_bench.py --smoke                            # tiny model, CPU, < 60 s
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import _results  # benchmarks/_results.py: RESULTS.md rows and output files
import torch


SCRIPT = "lift_bench.py"
GIB = 1024**3
MIB = 1024**2


def _config(smoke: bool):
    from transformers import Qwen2Config

    if smoke:
        return Qwen2Config(
            vocab_size=256,  # 151936
            hidden_size=48,  # 896
            intermediate_size=96,  # 4864
            num_hidden_layers=2,  # 24
            num_attention_heads=4,  # 14
            num_key_value_heads=2,  # 2
            tie_word_embeddings=True,
        )
    # Qwen2-0.5B shapes: 494.0M parameters with tied embeddings.
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )


def _build(config, device):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.train()


def _arm_model(arm: str, config, device, r: int):
    from peft import LoraConfig, get_peft_model

    from hf_plugins import LiftConfig

    model = _build(config, device)
    if arm == "full":
        return model
    if arm == "lora":
        return get_peft_model(
            model,
            LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    cache = arm == "lift_cache"
    return get_peft_model(
        model, LiftConfig(r=r, update_interval=None, task_type="CAUSAL_LM", cache_effective_weight=cache)
    )


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _state_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def _steps(model, opt, batch, device, warmup: int, timed: int) -> tuple[float, float]:
    """Median ms/step and peak GiB over warm-up + timed steps (peak includes optimizer-state creation)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + timed):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            ms = 1000 * (time.perf_counter() - t0)
        if i >= warmup:
            times.append(ms)
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def _overlap(a_pairs, b_pairs) -> float:
    hit = tot = 0
    for a, b in zip(a_pairs, b_pairs):
        hit += torch.isin(a, b).sum().item()
        tot += a.numel()
    return hit / max(tot, 1)


def _refresh_measurements(model, opt) -> dict:
    """Selection / re-selection times of every mask and mask overlaps between methods."""
    from hf_plugins.tuners.lift import LiftLayer, low_rank_approximation

    layers = [m for m in model.modules() if isinstance(m, LiftLayer)]
    out = {}
    eigh_masks = [m.lift_indices["default"].clone() for m in layers]
    t = []
    for _ in range(2):
        t.append(model.refresh_masks(opt)["seconds"])
    out["refresh_eigh_s"] = t[-1]
    out["refresh_eigh_first_s"] = t[0]
    for m in layers:
        m.lift_selection["default"]["method"] = "randomized"
    t = []
    for _ in range(2):
        t.append(model.refresh_masks(opt)["seconds"])
    out["refresh_randomized_s"] = t[-1]
    rand_masks = [m.lift_indices["default"].clone() for m in layers]
    out["overlap_randomized_vs_eigh"] = _overlap(rand_masks, eigh_masks)
    for m in layers:
        m.lift_selection["default"]["method"] = "eigh"
    # eigh (fp32, as used) vs the exact fp64 SVD on the first block's seven matrices
    first = layers[:7]
    exact = []
    for m in first:
        sel = m.lift_selection["default"]
        w = m.current_weight("default").double()
        approx = low_rank_approximation(w, sel["q"], "svd")
        exact.append(torch.topk(approx.abs().flatten(), sel["k"]).indices.to(torch.int32))
    model.refresh_masks(opt)
    out["overlap_eigh_vs_exact_svd_block0"] = _overlap([m.lift_indices["default"] for m in first], exact)
    return out


def run(smoke: bool, r: int) -> tuple[list[dict], dict]:
    import hf_plugins  # noqa: F401  (registers LIFT)

    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    config = _config(smoke)
    shapes = [(1, 32), (2, 64)] if smoke else [(1, 256), (8, 2048)]
    warmup, timed = (1, 2) if smoke else (3, 5)
    results: dict = {"device": device.type, "r": r, "shapes": shapes}
    for arm in ("full", "lora", "lift", "lift_cache"):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = _arm_model(arm, config, device, r)
        info = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        if arm.startswith("lift"):
            _sync(device)
            t0 = time.perf_counter()
            info["first_selection_s"] = model.initialize_masks()["seconds"]
            info["first_selection_wall_s"] = time.perf_counter() - t0
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
        gen = torch.Generator().manual_seed(0)
        for b, t in shapes:
            batch = torch.randint(0, config.vocab_size, (b, t), generator=gen).to(device)
            ms, peak = _steps(model, opt, batch, device, warmup, timed)
            info[f"B{b}xT{t}"] = {"ms_per_step": ms, "tokens_per_s": 1000 * b * t / ms, "peak_gib": peak}
        info["optimizer_state_bytes"] = _state_bytes(opt)
        if arm == "lift":  # refresh timings once (they do not involve the gradient product)
            info.update(_refresh_measurements(model, opt))
            info["fp32_out_mm"] = device.type == "cuda"  # torch.mm(..., out_dtype=float32) for the weight gradient
        results[arm] = info
        print(arm, json.dumps(info, indent=1))
        del model, opt, params
    return _rows(results), results


def _rows(res: dict) -> list[dict]:
    rows = []
    lift, lora, full = res["lift"], res["lora"], res["full"]
    cached = res.get("lift_cache")
    for b, t in res["shapes"]:
        key = f"B{b}xT{t}"
        case = f"Qwen2-0.5B shape, bf16, {key}, r={res['r']}"
        if cached is not None:
            for base_name, base in (("LoRA r16", lora), ("full FT", full), ("LIFT (cache off)", lift)):
                for what, unit in (("ms_per_step", "ms/step"), ("peak_gib", "peak GiB")):
                    rows.append(
                        {
                            "case": case,
                            "metric": f"{unit}, LIFT cache_effective_weight=True vs {base_name}",
                            "ours": cached[key][what],
                            "baseline": base[key][what],
                        }
                    )
        for base_name, base in (("LoRA r16", lora), ("full FT", full)):
            rows.append(
                {
                    "case": case,
                    "metric": f"ms/step, LIFT vs {base_name}",
                    "ours": lift[key]["ms_per_step"],
                    "baseline": base[key]["ms_per_step"],
                }
            )
            rows.append(
                {
                    "case": case,
                    "metric": f"peak GiB, LIFT vs {base_name}",
                    "ours": lift[key]["peak_gib"],
                    "baseline": base[key]["peak_gib"],
                }
            )
    case = f"Qwen2-0.5B shape, bf16, r={res['r']}"
    rows.append(
        {
            "case": case,
            "metric": "first selection of every mask s (eigh) vs goal",
            "ours": lift["first_selection_s"],
            "baseline": 2.0,
        }
    )
    rows.append(
        {
            "case": case,
            "metric": "optimizer state MiB, LIFT vs full FT",
            "ours": lift["optimizer_state_bytes"] / MIB,
            "baseline": full["optimizer_state_bytes"] / MIB,
        }
    )
    rows.append(
        {
            "case": case,
            "metric": "optimizer state MiB, LIFT vs LoRA r16",
            "ours": lift["optimizer_state_bytes"] / MIB,
            "baseline": lora["optimizer_state_bytes"] / MIB,
        }
    )
    rows.append(
        {
            "case": case,
            "metric": "refresh every mask s (eigh) vs goal",
            "ours": lift["refresh_eigh_s"],
            "baseline": 2.0,
        }
    )
    rows.append(
        {
            "case": case,
            "metric": "refresh every mask s, randomized vs eigh",
            "ours": lift["refresh_randomized_s"],
            "baseline": lift["refresh_eigh_s"],
        }
    )
    rows.append(
        {
            "case": case,
            "metric": "mask overlap, randomized vs eigh (whole model)",
            "ours": lift["overlap_randomized_vs_eigh"],
            "baseline": 1.0,
        }
    )
    rows.append(
        {
            "case": case,
            "metric": "mask overlap, eigh fp32 vs exact SVD (block 0)",
            "ours": lift["overlap_eigh_vs_exact_svd_block0"],
            "baseline": 1.0,
        }
    )
    rows.append(
        {
            "case": case,
            "metric": "trainable entries, LIFT vs LoRA r16",
            "ours": lift["trainable"],
            "baseline": lora["trainable"],
        }
    )
    for row in rows:
        row["ratio"] = row["ours"] / row["baseline"] if row["baseline"] else float("nan")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny Qwen2 on the CPU (checks the script, < 60 s)")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write rows and raw results as JSON here")
    p.add_argument("--r", type=int, default=None, help="LoRA rank and LIFT's LoRA-equivalent rank (16; smoke: 4)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, args.r or (4 if args.smoke else 16))
    device = _results.device_label(raw["device"] == "cuda", args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, out=args.out, append=args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
