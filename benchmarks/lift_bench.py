"""LIFT vs LoRA r=16 (all-linear) vs full fine-tuning on a Qwen2-0.5B-shaped model: step time, peak memory,
optimizer state, and the time to (re-)select every mask.

Side by side in one process, pure bf16 weights, random tokens, no gradient checkpointing, fused AdamW for every arm:

- full FT: every parameter trains (bf16 states);
- LoRA: PEFT `LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")` (fp32 adapter and states);
- LIFT: `LiftConfig(r=16)` on the same seven projections (LoRA-r16's trainable-entry budget) as configured by
  default (W_eff rebuilt in every layer's forward and backward, the memory-lean setting) and with the
  effective-weight cache (`cache_effective_weight=True`: W_eff kept between steps, one more copy of the weights).

Per arm and batch shape (`--shapes`: default B=8 x T=2048, where activations dominate; `--shapes 1x256,8x2048`
adds B=1 x T=256, where weights and states do): `--repeats` blocks of timed steps after warm-up, each block's median step time (CUDA events)
one repeat; peak `torch.cuda.max_memory_allocated` over the arm's steps. For LIFT also the first selection of every
mask and each repeat's re-selection with the Adam-state remap (`refresh_masks`, `selection_method="eigh"`, the
default, and "randomized"), the mask overlap of "randomized" with "eigh", and of "eigh" with an exact fp64 SVD on
the first block.

    python benchmarks/lift_bench.py --append                 # one GPU, ~60 s (fits an 80 GB H100)
    python benchmarks/lift_bench.py --smoke                  # tiny model on the CPU
"""

from __future__ import annotations

import statistics
import time

import _results
import torch


SCRIPT = "lift_bench.py"
MIB = 1024**2


def _arm_model(arm: str, config, device, r: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hf_plugins import LiftConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).train()
    if arm == "full":
        return model
    if arm == "lora":
        lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        return get_peft_model(model, lora)
    cache = arm == "lift_cache"
    return get_peft_model(
        model, LiftConfig(r=r, update_interval=None, task_type="CAUSAL_LM", cache_effective_weight=cache)
    )


def _steps(model, opt, batch, device, warmup: int, timed: int, repeats: int) -> tuple[list[float], float]:
    """Per-repeat median ms/step and the peak GiB over all steps (the first shape's includes the state creation)."""
    _results.peak_reset(device)
    medians = []
    for rep in range(repeats):
        times = []
        for _ in range((warmup if rep == 0 else 0) + timed):
            with _results.Timer(device) as t:
                model(input_ids=batch, labels=batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times.append(t.ms)
        medians.append(statistics.median(times[-timed:]))
    return medians, _results.peak_gib(device)


def _overlap(a_pairs, b_pairs) -> float:
    hit = tot = 0
    for a, b in zip(a_pairs, b_pairs):
        hit += torch.isin(a, b).sum().item()
        tot += a.numel()
    return hit / max(tot, 1)


def _refresh(model, opt, repeats: int) -> dict:
    """Re-selection time of every mask per repeat (eigh and randomized), and the mask overlaps between methods."""
    from hf_plugins.tuners.lift import LiftLayer, low_rank_approximation

    layers = [m for m in model.modules() if isinstance(m, LiftLayer)]
    eigh_masks = [m.lift_indices["default"].clone() for m in layers]
    out = {"eigh_s": [model.refresh_masks(opt)["seconds"] for _ in range(repeats)]}
    for m in layers:
        m.lift_selection["default"]["method"] = "randomized"
    out["randomized_s"] = [model.refresh_masks(opt)["seconds"] for _ in range(repeats)]
    out["overlap_randomized_vs_eigh"] = _overlap([m.lift_indices["default"].clone() for m in layers], eigh_masks)
    for m in layers:
        m.lift_selection["default"]["method"] = "eigh"
    first = layers[:7]  # the first block's seven matrices: eigh in fp32 (as used) vs the exact fp64 SVD
    exact = []
    for m in first:
        sel = m.lift_selection["default"]
        approx = low_rank_approximation(m.current_weight("default").double(), sel["q"], "svd")
        exact.append(torch.topk(approx.abs().flatten(), sel["k"]).indices.to(torch.int32))
    model.refresh_masks(opt)
    out["overlap_eigh_vs_exact_svd_block0"] = _overlap([m.lift_indices["default"] for m in first], exact)
    return out


def run(smoke: bool, r: int, shapes: list[tuple[int, int]], repeats: int) -> tuple[list[dict], dict]:
    import hf_plugins  # noqa: F401  (registers LIFT)

    device = _results.pick_device(smoke)
    config = _results.qwen2_config(smoke)
    warmup, timed = (1, 2) if smoke else (2, 5)
    res: dict = {"device": device.type, "r": r, "shapes": shapes}
    for arm in ("full", "lora", "lift", "lift_cache"):
        _results.free_memory(device)
        model = _arm_model(arm, config, device, r)
        info = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        if arm.startswith("lift"):
            info["first_selection_s"] = model.initialize_masks()["seconds"]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda")  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        for b, t in shapes:
            batch = torch.randint(0, config.vocab_size, (b, t), generator=gen).to(device)
            info[f"B{b}xT{t}"] = dict(zip(("ms", "peak_gib"), _steps(model, opt, batch, device, warmup, timed, repeats)))  # fmt: skip
        info["state_bytes"] = sum(
            t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
        )
        if arm == "lift":
            info.update(_refresh(model, opt, repeats))
        res[arm] = info
        print(arm, info, flush=True)
        del model, opt
    return _rows(res, smoke, repeats), res


def _rows(res: dict, smoke: bool, repeats: int) -> list[dict]:
    shape = "tiny Qwen2 (smoke)" if smoke else "Qwen2-0.5B shape"
    lift, lora, full, cached = res["lift"], res["lora"], res["full"], res["lift_cache"]
    row = _results.row
    lora_name = f"LoRA r{res['r']}"
    rows = []
    for b, t in res["shapes"]:
        key = f"B{b}xT{t}"
        case = f"{shape}, bf16, {key}, r={res['r']}, {repeats} repeats"
        for name, arm in (("LIFT", lift), ("LIFT cache_effective_weight=True", cached)):
            for base_name, base in ((lora_name, lora), ("full FT", full)):
                rows.append(row(case, f"ms/step, {name} vs {base_name}", arm[key]["ms"], base[key]["ms"]))
                if res["device"] == "cuda":
                    metric = f"peak GiB, {name} vs {base_name}"
                    rows.append(row(case, metric, arm[key]["peak_gib"], base[key]["peak_gib"]))
    case = f"{shape}, bf16, r={res['r']}, {repeats} repeats"
    return rows + [
        row(case, "first selection of every mask s (eigh) vs goal", lift["first_selection_s"], 2.0),
        row(case, "optimizer state MiB, LIFT vs full FT", lift["state_bytes"] / MIB, full["state_bytes"] / MIB),
        row(case, f"optimizer state MiB, LIFT vs {lora_name}", lift["state_bytes"] / MIB, lora["state_bytes"] / MIB),
        row(case, "refresh every mask s (eigh) vs goal", lift["eigh_s"], 2.0),
        row(case, "refresh every mask s, randomized vs eigh", lift["randomized_s"], lift["eigh_s"]),
        row(case, "mask overlap, randomized vs eigh (whole model)", lift["overlap_randomized_vs_eigh"], 1.0),
        row(case, "mask overlap, eigh fp32 vs exact SVD (block 0)", lift["overlap_eigh_vs_exact_svd_block0"], 1.0),
        row(case, f"trainable entries, LIFT vs {lora_name}", lift["trainable"], lora["trainable"]),
    ]


def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in part.split("x")) for part in text.split(",")]


def main(argv=None) -> int:
    p = _results.parser(__doc__)
    p.add_argument("--shapes", type=_shapes, default=None, help="BxT[,BxT] (default 8x2048; smoke 2x32)")
    args = p.parse_args(argv)
    shapes = args.shapes or ([(2, 32)] if args.smoke else [(8, 2048)])
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, 4 if args.smoke else 16, shapes, args.repeats)
    device = _results.device_label(torch.device(raw["device"]), args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
