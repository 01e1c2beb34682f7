"""Where SEFT's evolution costs time: the grow window's first step, the cycle's last step and `seft_evolve`.

Diagnostics, no RESULTS.md rows. Qwen2-0.5B shapes in bf16 (as seft_bench.py), 50% magnitude-pruned, SEFT r=16,
B=8 x T=2048. Two ΔT=20 cycles run first (the first one re-selects every delta), so the profiled steps belong to a
steady-state third cycle. For each profiled phase it prints the wall time (CUDA-synchronised), a cProfile table of
the Python functions (cumulative time: host syncs show up in the functions that wait) and a torch.profiler table
of the operators by CPU and by CUDA time.

    python benchmarks/seft_cycle_profile.py            # H200: ~90 s
    python benchmarks/seft_cycle_profile.py --smoke    # tiny model, CPU
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import _results
import torch


def _phase(name, fn, device, top: int = 25):
    from torch.profiler import ProfilerActivity, profile

    _results.sync(device)
    prof = cProfile.Profile()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as tprof:
        prof.enable()
        fn()
        _results.sync(device)
        prof.disable()
    ms = 1000 * (time.perf_counter() - t0)
    print(f"\n===== {name}: {ms:.1f} ms (profiled) =====", flush=True)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    print(s.getvalue(), flush=True)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    print(s.getvalue(), flush=True)
    print(tprof.key_averages().table(sort_by="cpu_time_total", row_limit=top), flush=True)
    if device.type == "cuda":
        print(tprof.key_averages().table(sort_by="self_cuda_time_total", row_limit=top), flush=True)


def _timed(fn, device) -> float:
    _results.sync(device)
    t0 = time.perf_counter()
    fn()
    _results.sync(device)
    return 1000 * (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import hf_plugins  # noqa: F401  (registers SEFT)
    from hf_plugins import SeftConfig
    from hf_plugins.pruning import prune_model

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    b, t, r = (2, 32, 2) if args.smoke else (8, 2048, 16)
    torch.manual_seed(0)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(_results.qwen2_config(args.smoke), dtype=torch.bfloat16).train()
    prune_model(base, "magnitude", 0.5)
    batch = torch.randint(0, base.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0)).to(device)
    seft = get_peft_model(base, SeftConfig(r=r, update_interval=20, accumulation_steps=5, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([q for q in seft.parameters() if q.requires_grad], lr=1e-5, fused=device.type == "cuda")

    def step(i, evolve=False):
        seft.seft_prepare_step(i, 1000)
        seft(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        if evolve:
            seft.seft_evolve(opt, i, 1000)
        opt.zero_grad(set_to_none=True)

    times = {}
    for i in range(40):
        times.setdefault("cycle1" if i < 20 else "cycle2", []).append(
            _timed(lambda i=i: step(i, i % 20 == 19), device)
        )
    print({k: [round(x, 1) for x in v] for k, v in times.items()}, flush=True)
    plain = [_timed(lambda i=i: step(i), device) for i in range(40, 55)]
    print(f"plain steps (ms): {[round(x, 1) for x in plain]}", flush=True)
    _phase("grow window, first (fresh) step", lambda: step(55), device)
    window = [_timed(lambda i=i: step(i), device) for i in range(56, 59)]
    print(f"window steps (ms): {[round(x, 1) for x in window]}", flush=True)

    def last():
        seft.seft_prepare_step(59, 1000)
        seft(input_ids=batch, labels=batch).loss.backward()
        opt.step()

    _phase("cycle's last step (grow + sensitivity hooks)", last, device)
    _phase("seft_evolve (drop / grow / re-prune)", lambda: seft.seft_evolve(opt, 59, 1000), device)
    opt.zero_grad(set_to_none=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
