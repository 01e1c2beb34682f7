"""Where a LIFT / SEFT training step spends its GPU time, next to full fine-tuning (diagnostics, no rows).

Qwen2-0.5B shapes in bf16 (as lift_bench.py and seft_bench.py), 50% magnitude-pruned for SEFT, B=8 x T=2048. SEFT first runs two
ΔT=20 cycles (the first re-selects every delta) so the profiled steps are steady-state ones (re-pruned set R
non-empty). Then `torch.profiler` records 3 plain training steps of each arm (full FT, LIFT, SEFT) and prints the
top operators by total CUDA time and the step time. No rows for RESULTS.md: the profile explains the ratios that
lift_bench.py and seft_bench.py report.

    python benchmarks/sparse_delta_profile.py            # H200: ~60 s
    python benchmarks/sparse_delta_profile.py --smoke    # tiny model, CPU
"""

from __future__ import annotations

import argparse
import copy
import time

import _results
import torch


def _model(smoke: bool, device):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(_results.qwen2_config(smoke), dtype=torch.bfloat16).train()


def _step(model, opt, batch):
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _profile(name, model, opt, batch, device, steps: int = 3, top: int = 18):
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        _step(model, opt, batch)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _results.sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            _step(model, opt, batch)
        _results.sync(device)
    ms = 1000 * (time.perf_counter() - t0) / steps
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n===== {name}: {ms:.1f} ms/step (profiled) =====", flush=True)
    print(prof.key_averages().table(sort_by=key, row_limit=top), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    from peft import get_peft_model

    import hf_plugins  # noqa: F401  (registers LIFT and SEFT)
    from hf_plugins import LiftConfig, SeftConfig
    from hf_plugins.pruning import prune_model

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    b, t = (2, 32) if args.smoke else (8, 2048)
    base = _model(args.smoke, device)
    batch = torch.randint(0, base.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0)).to(device)
    fused = device.type == "cuda"

    full = copy.deepcopy(base)
    _profile("full FT", full, torch.optim.AdamW(full.parameters(), lr=1e-5, fused=fused), batch, device)
    del full

    r = 2 if args.smoke else 16
    lift = get_peft_model(copy.deepcopy(base), LiftConfig(r=r, update_interval=None, task_type="CAUSAL_LM"))
    lift.initialize_masks()
    opt = torch.optim.AdamW([q for q in lift.parameters() if q.requires_grad], lr=1e-5, fused=fused)
    _profile(f"LIFT r{r}", lift, opt, batch, device)
    del lift, opt

    pruned = copy.deepcopy(base)
    prune_model(pruned, "magnitude", 0.5)
    seft = get_peft_model(pruned, SeftConfig(r=r, update_interval=20, accumulation_steps=5, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([q for q in seft.parameters() if q.requires_grad], lr=1e-5, fused=fused)
    for step in range(40):  # two cycles: the profiled steps are steady-state ones
        seft.seft_prepare_step(step, 1000)
        seft(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        if step % 20 == 19:
            seft.seft_evolve(opt, step, 1000)
        opt.zero_grad(set_to_none=True)
    sizes = [(len(m.seft_pruned_indices["default"]), m.seft_values["default"].numel()) for m in seft.modules()
             if hasattr(m, "seft_pruned_indices")]  # fmt: skip
    print(f"SEFT after 2 cycles: |R| total {sum(r for r, _ in sizes):,}, |A| total {sum(a for _, a in sizes):,}")
    seft.seft_prepare_step(40, 1000)  # a plain step of cycle 3 (no hook armed)
    _profile(f"SEFT r{r} (steady state, plain step)", seft, opt, batch, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
