"""Stable-SPAM optimizer step time on Qwen2-0.5B-shaped fp32 parameters, side by side with torch AdamW (fused and
foreach) and pytorch-optimizer's StableSPAM.

    python benchmarks/stable_spam_bench.py              # GPU, 488.5M params (~40 s on an H200)
    python benchmarks/stable_spam_bench.py --smoke      # tiny shapes, CPU ok
    python benchmarks/stable_spam_bench.py --append --out stable_spam_bench.json

Goal (issue 5): ours <= 1.3x fused AdamW's step time and >= 3x faster than pytorch-optimizer's StableSPAM.
pytorch-optimizer is optional: installed, or its wheel in `.whl/` at the repository root (added to sys.path); the
column is skipped with a note otherwise. Gradients are synthetic and fixed; each optimizer gets fresh state.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


# Qwen2-0.5B linear weights as in the spec's measurement (488.5M): 24 layers x (gate, up, down) = 72 of 4864x896,
# 24 x (q, o) = 48 of 896x896, and the 151936x896 embedding.
FULL_SHAPES = [(4864, 896)] * 72 + [(896, 896)] * 48 + [(151936, 896)]
SMOKE_SHAPES = [(96, 32)] * 6 + [(32, 32)] * 4 + [(1000, 32)]


def _import_pytorch_optimizer():
    """`(module, version or note)`."""
    try:
        import importlib.metadata

        import pytorch_optimizer

        return pytorch_optimizer, importlib.metadata.version("pytorch_optimizer")
    except ImportError:
        pass
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "pytorch_optimizer-*.whl")))
    if wheels:
        sys.path.insert(0, wheels[-1])  # a pure-Python wheel imports from the zip
        try:
            import pytorch_optimizer

            return pytorch_optimizer, Path(wheels[-1]).name.split("-")[1]
        except ImportError as exc:
            return None, f"pytorch-optimizer wheel {Path(wheels[-1]).name} failed to import: {exc}"
    return None, "pytorch-optimizer not installed and no wheel in .whl/: column skipped"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(make_opt, params, grads, device, warmup, iters):
    """Median step time (ms) and peak extra memory (GiB) of `make_opt(params)`."""
    for p, g in zip(params, grads):
        p.grad = g
    opt = make_opt(params)
    for _ in range(warmup):
        opt.step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            opt.step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            opt.step()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else float("nan")
    state_gib = (
        sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)) / 2**30
    )
    del opt
    return statistics.median(times), peak, state_gib


def check_fused_equals_foreach(device):
    """Small correctness check on this device: fused vs foreach after 20 steps with a reset."""
    from hf_plugins import StableSPAM

    torch.manual_seed(0)
    shapes = [(300, 40), (77,), (64, 64)]
    grads = [[torch.randn(s, device=device) * (1 + 20 * (i % 7 == 0)) for s in shapes] for i in range(20)]
    out = []
    for fused in (False, True):
        torch.manual_seed(1)
        params = [torch.randn(s, device=device, requires_grad=True) for s in shapes]
        opt = StableSPAM(params, lr=1e-2, weight_decay=0.1, reset_interval=10, total_T=20, fused=fused)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g
            opt.step()
        out.append(params)
    return max((a - b).abs().max().item() for a, b in zip(*out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, runs on CPU")
    ap.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    ap.add_argument("--out", default=None, help="write all numbers to this JSON file")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per optimizer (default 20, smoke 5)")
    args = ap.parse_args()

    from hf_plugins import StableSPAM
    from hf_plugins.optim import _stable_spam_triton

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    shapes = SMOKE_SHAPES if args.smoke else FULL_SHAPES
    iters = args.iters or (5 if args.smoke else 20)
    warmup = 2 if args.smoke else 3
    torch.manual_seed(0)
    params = [torch.randn(s, device=device, requires_grad=True) for s in shapes]
    grads = [torch.randn(s, device=device) * 1e-2 for s in shapes]
    n_params = sum(p.numel() for p in params)
    print(f"device {device}, {len(params)} tensors, {n_params / 1e6:.1f}M fp32 params, {iters} timed steps")

    hp = {"lr": 1e-3, "weight_decay": 0.1}
    cases = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, **hp, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, **hp, foreach=True),
        "ours StableSPAM foreach": lambda ps: StableSPAM(ps, **hp, total_T=10_000, fused=False),
    }
    notes = []
    if device.type == "cuda" and _stable_spam_triton.available():
        cases["ours StableSPAM fused"] = lambda ps: StableSPAM(ps, **hp, total_T=10_000, fused=True)
    else:
        notes.append("ours fused (Triton, the CUDA default) skipped: needs CUDA + triton")
    if device.type == "cpu":
        cases["torch AdamW fused"] = lambda ps: torch.optim.AdamW(ps, **hp, fused=True)  # CPU fused exists
    po, why = _import_pytorch_optimizer()
    if po is not None:
        cases[f"pytorch-optimizer {why} StableSPAM foreach"] = lambda ps: po.StableSPAM(
            ps, **hp, t_max=10_000, foreach=True
        )
        cases[f"pytorch-optimizer {why} StableSPAM"] = lambda ps: po.StableSPAM(ps, **hp, t_max=10_000)
    else:
        notes.append(why)

    results = {}
    t_start = time.perf_counter()
    for name, make in cases.items():
        try:
            ms, peak, state = time_steps(make, params, grads, device, warmup, iters)
        except (RuntimeError, TypeError, ValueError, AttributeError) as exc:  # keep the other columns
            notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
            print(notes[-1])
            continue
        results[name] = {"step_ms": ms, "peak_extra_gib": peak, "state_gib": state}
        print(f"{name:48s} {ms:9.2f} ms/step   peak extra {peak:6.2f} GiB   state {state:6.2f} GiB")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fused_diff = None
    if "ours StableSPAM fused" in results:
        fused_diff = check_fused_equals_foreach(device)
        print(f"fused vs foreach, max |param diff| after 20 steps: {fused_diff:.3g}")
    for n in notes:
        print("note:", n)
    print(f"total {time.perf_counter() - t_start:.1f} s")

    ref = results.get("torch AdamW fused", {}).get("step_ms")
    po_name = next((k for k in results if k.startswith("pytorch-optimizer") and k.endswith("foreach")), None)
    po_plain = next((k for k in results if k.startswith("pytorch-optimizer") and not k.endswith("foreach")), None)
    po_best = min((k for k in (po_name, po_plain) if k), key=lambda k: results[k]["step_ms"], default=None)
    case = f"{'smoke ' if args.smoke else ''}Qwen2-0.5B shapes, {n_params / 1e6:.1f}M fp32 params, synthetic grads"
    rows = []
    for ours in ("ours StableSPAM fused", "ours StableSPAM foreach"):
        if ours not in results:
            continue
        if ref:
            rows.append((case, f"step ms, {ours} vs torch AdamW fused", results[ours]["step_ms"], ref))
        if po_best:
            rows.append((case, f"step ms, {ours} vs {po_best}", results[ours]["step_ms"], results[po_best]["step_ms"]))
        if device.type == "cuda" and ref:
            rows.append(
                (
                    case,
                    f"peak extra GiB in step, {ours} vs torch AdamW fused",
                    results[ours]["peak_extra_gib"],
                    results["torch AdamW fused"]["peak_extra_gib"],
                )
            )
    if "torch AdamW foreach" in results and ref:
        rows.append(
            (case, "step ms, torch AdamW foreach vs fused (reference)", results["torch AdamW foreach"]["step_ms"], ref)
        )

    import transformers

    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    stamp = datetime.date.today().isoformat()
    lines = [
        f"| {stamp} | stable_spam_bench.py | {dev_name} | {torch.__version__} / {transformers.__version__} | {c} | {m} "
        f"| {o:.3f} | {b:.3f} | {(o / b if b else float('nan')):.2f} |"
        for c, m, o, b in rows
    ]
    print("\n".join(lines))
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n".join(lines) + "\n")
    if args.out:
        payload = {
            "device": dev_name,
            "torch": torch.__version__,
            "n_params": n_params,
            "results": results,
            "fused_vs_foreach_max_diff": fused_diff,
            "notes": notes,
            "rows": lines,
        }
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
