"""Stable-SPAM optimizer step time vs torch's fused AdamW and pytorch-optimizer's StableSPAM, on the same parameters.

Parameters: Qwen2-0.5B's linear weights and embedding in fp32 (488.5M: 72 MLP matrices of 4864x896, 48 attention
matrices of 896x896, the 151936x896 embedding), fixed synthetic gradients. Contenders, each with fresh state: ours
fused (the Triton path, the CUDA default) and foreach; torch AdamW fused (the stock alternative) and foreach;
pytorch-optimizer's StableSPAM (foreach and plain, when the package is installed; skipped with a note otherwise).
Per repeat and contender: warm-up steps, then the median of the timed steps (CUDA events); the repeats give the
median [min, max] and the paired per-repeat ratios. Also the extra memory a step allocates (peak minus before).

    python benchmarks/stable_spam_bench.py --append      # one GPU, ~30 s
    python benchmarks/stable_spam_bench.py --smoke       # tiny shapes on the CPU
"""

from __future__ import annotations

import statistics
import time

import _results
import torch


SCRIPT = "stable_spam_bench.py"
FULL_SHAPES = [(4864, 896)] * 72 + [(896, 896)] * 48 + [(151936, 896)]
SMOKE_SHAPES = [(96, 32)] * 6 + [(32, 32)] * 4 + [(1000, 32)]


def _contenders(device) -> tuple[dict, list[str]]:
    from hf_plugins import StableSPAM
    from hf_plugins.optim import _stable_spam_triton

    hp = {"lr": 1e-3, "weight_decay": 0.1}
    arms = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, **hp, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, **hp, foreach=True),
        "ours StableSPAM foreach": lambda ps: StableSPAM(ps, **hp, total_T=10_000, fused=False),
    }
    notes = []
    if device.type == "cuda" and _stable_spam_triton.available():
        arms["ours StableSPAM fused"] = lambda ps: StableSPAM(ps, **hp, total_T=10_000, fused=True)
    else:
        notes.append("ours fused (Triton, the CUDA default) skipped: needs CUDA and triton")
    try:
        import importlib.metadata

        import pytorch_optimizer as po

        name = f"pytorch-optimizer {importlib.metadata.version('pytorch_optimizer')} StableSPAM"
        arms[f"{name} foreach"] = lambda ps: po.StableSPAM(ps, **hp, t_max=10_000, foreach=True)
        arms[name] = lambda ps: po.StableSPAM(ps, **hp, t_max=10_000)
    except ImportError:
        notes.append("pytorch-optimizer not installed: its StableSPAM is not compared")
    return arms, notes


def _time(make_opt, params, device, warmup: int, iters: int) -> tuple[float, float]:
    """Median step ms of a fresh optimizer, and the extra GiB its steps allocate at peak (NaN on the CPU)."""
    opt = make_opt(params)
    for _ in range(warmup):
        opt.step()
    _results.peak_reset(device)
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    times = []
    for _ in range(iters):
        with _results.Timer(device) as t:
            opt.step()
        times.append(t.ms)
    extra = (torch.cuda.max_memory_allocated() - before) / _results.GIB if device.type == "cuda" else float("nan")
    del opt
    _results.free_memory(device)
    return statistics.median(times), extra


def run(smoke: bool, repeats: int) -> tuple[list[dict], dict]:
    device = _results.pick_device(smoke)
    shapes = SMOKE_SHAPES if smoke else FULL_SHAPES
    warmup, iters = (1, 3) if smoke else (3, 20)
    torch.manual_seed(0)
    params = [torch.randn(s, device=device, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    n_params = sum(p.numel() for p in params)
    arms, notes = _contenders(device)
    ms = {name: [] for name in arms}
    extra = {name: [] for name in arms}
    for _ in range(repeats):
        for name, make in arms.items():
            step_ms, gib = _time(make, params, device, warmup, iters)
            ms[name].append(step_ms)
            extra[name].append(gib)
    for name in arms:
        print(f"{name:52s} {statistics.median(ms[name]):9.3f} ms/step (median of {repeats})", flush=True)
    for note in notes:
        print("note:", note)

    shape = "tiny shapes" if smoke else "Qwen2-0.5B shapes"
    case = f"{shape}, {n_params / 1e6:.1f}M fp32 params, synthetic grads, {repeats} repeats"
    stock = "torch AdamW fused"
    po_names = [k for k in arms if k.startswith("pytorch-optimizer")]
    po_best = min(po_names, key=lambda k: statistics.median(ms[k]), default=None)
    rows = []
    for ours in ("ours StableSPAM fused", "ours StableSPAM foreach"):
        if ours not in arms:
            continue
        rows.append(_results.row(case, f"step ms, {ours} vs {stock}", ms[ours], ms[stock]))
        if po_best:
            rows.append(_results.row(case, f"step ms, {ours} vs {po_best}", ms[ours], ms[po_best]))
        if device.type == "cuda":
            metric = f"peak extra GiB in step, {ours} vs {stock}"
            rows.append(_results.row(case, metric, extra[ours], extra[stock]))
    rows.append(_results.row(case, "step ms, torch AdamW foreach vs fused (reference)", ms["torch AdamW foreach"], ms[stock]))  # fmt: skip
    return rows, {"device": device.type, "n_params": n_params, "step_ms": ms, "extra_gib": extra, "notes": notes}


def main(argv=None) -> int:
    args = _results.parser(__doc__).parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, args.repeats)
    device = _results.device_label(torch.device(raw["device"]), args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
