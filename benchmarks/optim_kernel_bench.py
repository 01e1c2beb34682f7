"""Optimizer steps against the memory-bandwidth limit, all arms interleaved in one process on one card.

Stable-SPAM: our fused step (`fused=True`) against torch's fused AdamW on the same 488.5M fp32 parameters
(Qwen2-0.5B shapes, 121 tensors), with the card's device-to-device copy bandwidth measured in the same run, the bytes
each arm moves per parameter (docs/stable_spam.md, "Speed") turned into effective TB/s, a sweep of the element-wise
kernels' block size and warps, and the device time of every kernel (torch.profiler).

AlphaDecay: the optimizer-side cost on a Qwen2-0.5B-shaped set of modules (168 linear weights + the embedding):
merged per-matrix decays over fused AdamW, decays folded into Stable-SPAM's fused update, and the refresh update
with the spectra overlapped with a simulated forward/backward (`--fwd-bwd-ms`, the GPU and the host both busy) vs
computed inside the update; the overhead per step at interval 500 as a share of `--fwd-bwd-ms`.

    python benchmarks/optim_kernel_bench.py            # GPU (~2-3 min on an H100 / H200, ~35 GB peak)
    python benchmarks/optim_kernel_bench.py --smoke    # tiny shapes, CPU: foreach paths only
    python benchmarks/optim_kernel_bench.py --out optim_kernel_bench.json [--append]

Every timing is the median over `--repeats` rounds (arms interleaved A B C ... A B C ...) of the per-round median of
`--iters` steps, with the range of the round medians. Gradients are synthetic and fixed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402


# Qwen2-0.5B: 24 layers x (q, o: 896x896; k, v: 128x896; gate, up: 4864x896; down: 896x4864), embedding 151936x896.
FULL = {"hidden": 896, "kv": 128, "inter": 4864, "layers": 24, "vocab": 151936}
SMOKE = {"hidden": 64, "kv": 16, "inter": 128, "layers": 2, "vocab": 500}
# The Stable-SPAM benchmark's tensor list (488.5M): the MLP and q/o matrices and the embedding.
SPAM_FULL = [(4864, 896)] * 72 + [(896, 896)] * 48 + [(151936, 896)]
SPAM_SMOKE = [(96, 32)] * 6 + [(32, 32)] * 4 + [(1000, 32)]
BYTES_ADAMW = 28  # fp32: read p, g, m, v; write p, m, v
BYTES_SPAM = 32  # + one read of g for the statistics (blocks holding a clipped entry are read once more)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_once(fn, device) -> float:
    """ms of one call: CUDA events on the GPU (host enqueue gaps included, as in training), wall time on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved(arms: dict, device, repeats: int, iters: int, warmup: int) -> dict:
    """{arm: {"ms": median of round medians, "lo": min, "hi": max}}; `arms` maps a name to a zero-argument step."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    rounds: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            rounds[name].append(statistics.median(_time_once(fn, device) for _ in range(iters)))
    return {k: {"ms": statistics.median(v), "lo": min(v), "hi": max(v)} for k, v in rounds.items()}


def copy_bandwidth(device, n_bytes: int) -> float:
    """TB/s of `dst.copy_(src)` (read + write counted), the card's practical streaming ceiling."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    r = interleaved({"copy": lambda: dst.copy_(src)}, device, 3, 10, 3)["copy"]
    return 2 * n_bytes / (r["ms"] * 1e-3) / 1e12


def kernel_times(step, device, steps: int = 5) -> dict[str, float]:
    """Device µs per step of each kernel launched by `step` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    out = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if t > 0:
            out[ev.key[:90]] = t / steps
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def stable_spam_section(args, device) -> dict:
    from hf_plugins import StableSPAM
    from hf_plugins.optim import _stable_spam_triton as kernels

    shapes = SPAM_SMOKE if args.smoke else SPAM_FULL
    torch.manual_seed(0)
    params = [torch.randn(s, device=device, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    n = sum(p.numel() for p in params)
    hp = {"lr": 1e-3, "weight_decay": 0.1}
    fused = device.type == "cuda" and kernels.available()
    adamw = torch.optim.AdamW(params, **hp, fused=True)
    spam = StableSPAM(params, **hp, total_T=10_000, fused=fused or None)
    arms = {"torch AdamW fused": adamw.step, "ours StableSPAM " + ("fused" if fused else "foreach"): spam.step}
    res = interleaved(arms, device, args.repeats, args.iters, args.warmup)
    out = {"n_params": n, "arms": res}
    if device.type == "cuda":
        out["copy_TBps"] = copy_bandwidth(device, 2 * 2**30)
        for name, nbytes in (("torch AdamW fused", BYTES_ADAMW), ("ours StableSPAM fused", BYTES_SPAM)):
            if name not in res:
                continue
            res[name]["TBps"] = n * nbytes / (res[name]["ms"] * 1e-3) / 1e12
            res[name]["bytes_per_param"] = nbytes
        out["floor_ms_at_copy_bw"] = n * BYTES_SPAM / (out["copy_TBps"] * 1e12) * 1e3
    if fused:
        default = (kernels.BLOCK, kernels.NUM_WARPS)
        sweep = {}
        for block in (2048, 4096, 8192):
            for warps in (4, 8, 16):
                if block // (32 * warps) < 4:  # < 4 elements per thread and array: no 128-bit vectors
                    continue
                kernels.BLOCK, kernels.NUM_WARPS = block, warps
                r = interleaved({"cfg": spam.step, "adamw": adamw.step}, device, max(3, args.repeats // 2), 10, 2)
                sweep[f"BLOCK={block} warps={warps}"] = {**r["cfg"], "vs_adamw": r["cfg"]["ms"] / r["adamw"]["ms"]}
        kernels.BLOCK, kernels.NUM_WARPS = default
        out["sweep"] = sweep
        out["kernels_us"] = {"ours": kernel_times(spam.step, device), "adamw": kernel_times(adamw.step, device)}
    arms.clear()  # the step methods hold the optimizers
    del adamw, spam, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


class _Qwen2Linears(nn.Module):
    """The Qwen2-0.5B-shaped parameters AlphaDecay sees (no forward: the optimizer only needs the modules)."""

    def __init__(self, c):
        super().__init__()
        h, kv, i = c["hidden"], c["kv"], c["inter"]
        self.embed_tokens = nn.Embedding(c["vocab"], h)
        self.layers = nn.ModuleList()
        for _ in range(c["layers"]):
            layer = nn.Module()
            layer.self_attn = nn.ModuleDict(
                {"q_proj": nn.Linear(h, h), "k_proj": nn.Linear(h, kv), "v_proj": nn.Linear(h, kv)}
            )
            layer.self_attn["o_proj"] = nn.Linear(h, h, bias=False)
            layer.mlp = nn.ModuleDict({k: nn.Linear(h, i, bias=False) for k in ("gate_proj", "up_proj")})
            layer.mlp["down_proj"] = nn.Linear(i, h, bias=False)
            layer.input_layernorm = nn.LayerNorm(h)
            self.layers.append(layer)
        self.norm = nn.LayerNorm(h)
        self.lm_head = nn.Linear(h, c["vocab"], bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as Qwen2-0.5B


def _busy(device, ms: float, cycles_per_ms: float | None) -> None:
    """A simulated forward/backward: the stream and the host thread both busy for `ms`."""
    if device.type == "cuda" and cycles_per_ms:
        torch.cuda._sleep(int(ms * cycles_per_ms))
    time.sleep(ms / 1e3)


def _cycles_per_ms(device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda._sleep(1000)
    _sync(device)
    ms = _time_once(lambda: torch.cuda._sleep(50_000_000), device)
    return 50_000_000 / ms


def alphadecay_section(args, device) -> dict:
    from hf_plugins import AlphaDecay, StableSPAM, hf_param_groups

    model = _Qwen2Linears(SMOKE if args.smoke else FULL).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, device=device) * 1e-2
    fused = device.type == "cuda"
    base_kw = {"fused": True} if fused else {}
    ad_kw = {"lr": 1e-5, "weight_decay": 0.1, "min_eigs": 50 if not args.smoke else 8, "interval": 500}
    opts = {
        "AdamW (HF 2 groups)": torch.optim.AdamW(hf_param_groups(model, 0.1), lr=1e-5, **base_kw),
        "AlphaDecay(AdamW), merged": AlphaDecay()(model, **ad_kw, **base_kw),
        "StableSPAM (HF 2 groups)": StableSPAM(hf_param_groups(model, 0.1), lr=1e-5, **base_kw),
        "AlphaDecay(StableSPAM), decays in the update": AlphaDecay()(model, **ad_kw, base="stable_spam", **base_kw),
    }
    res = interleaved({k: o.step for k, o in opts.items()}, device, args.repeats, args.iters, args.warmup)
    out = {"n_analysed": len(opts["AlphaDecay(AdamW), merged"].alphadecay_table()), "steps": res}

    # The refresh update: interval 2 so that every other step refreshes; the step before it starts the overlapped
    # refresh, then the simulated forward/backward, then the refresh update is timed (host wall clock to completion).
    cycles = _cycles_per_ms(device)
    refresh = {}
    for overlap in (True, False):
        opt = AlphaDecay()(model, **{**ad_kw, "interval": 2}, overlap_refresh=overlap, **base_kw)
        times, plain = [], []
        for _ in range(args.repeats + 1):
            opt.step()  # update 2k + 1 (starts the background refresh of update 2k + 2 when overlapped)
            _busy(device, args.fwd_bwd_ms, cycles)
            _sync(device)
            t0 = time.perf_counter()
            opt.step()  # update 2k + 2: the refresh
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
        for _ in range(args.repeats):
            _busy(device, args.fwd_bwd_ms, cycles)
            _sync(device)
            t0 = time.perf_counter()
            opts["AlphaDecay(AdamW), merged"].step()
            _sync(device)
            plain.append((time.perf_counter() - t0) * 1e3)
        key = "overlapped" if overlap else "synchronous"
        stall = statistics.median(times[1:]) - statistics.median(plain)
        refresh[key] = {"refresh_step_ms": statistics.median(times[1:]), "plain_step_ms": statistics.median(plain)}
        refresh[key]["stall_ms"] = max(0.0, stall)
        del opt
    out["refresh"] = refresh
    step_cost = res["AlphaDecay(AdamW), merged"]["ms"] - res["AdamW (HF 2 groups)"]["ms"]
    amortised = refresh["overlapped"]["stall_ms"] / 500
    out["overhead_ms_per_step"] = step_cost + amortised
    out["overhead_pct_of_fwd_bwd"] = 100 * (step_cost + amortised) / args.fwd_bwd_ms
    return out


def _rows(out, device_name, stamp, versions) -> list[str]:
    rows = []
    s = out["stable_spam"]
    case = f"{s['n_params'] / 1e6:.1f}M fp32 params (Qwen2-0.5B shapes), median of {out['repeats']} rounds"
    ours = next(k for k in s["arms"] if k.startswith("ours"))
    a, b = s["arms"][ours], s["arms"]["torch AdamW fused"]
    metric = f"step ms, {ours} vs torch AdamW fused (range {a['lo']:.3f}-{a['hi']:.3f} / {b['lo']:.3f}-{b['hi']:.3f})"
    rows.append((case, metric, a["ms"], b["ms"]))
    d = out["alphadecay"]
    case = f"Qwen2-0.5B-shaped modules, {d['n_analysed']} analysed matrices, optimizer.step() only"
    st = d["steps"]
    for arm, ref in (
        ("AlphaDecay(AdamW), merged", "AdamW (HF 2 groups)"),
        ("AlphaDecay(StableSPAM), decays in the update", "StableSPAM (HF 2 groups)"),
    ):
        rows.append((case, f"step ms, {arm} vs {ref}", st[arm]["ms"], st[ref]["ms"]))
    r = d["refresh"]
    overlapped, sync = r["overlapped"]["refresh_step_ms"], r["synchronous"]["refresh_step_ms"]
    rows.append((case, "refresh update ms, overlapped vs synchronous", overlapped, sync))
    return [
        f"| {stamp} | optim_kernel_bench.py | {device_name} | {versions} | {c} | {m} | {o:.3f} | {ref:.3f} | "
        f"{o / ref if ref else float('nan'):.3f} |"
        for c, m, o, ref in rows
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (foreach paths)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5, smoke 2)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per round and arm (default 20, smoke 2)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--fwd-bwd-ms", type=float, default=None, help="simulated forward/backward (default 190; smoke 5)")
    ap.add_argument("--out", default=None, help="write every number to this JSON file")
    ap.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.smoke else 5)
    args.iters = args.iters or (2 if args.smoke else 20)
    args.fwd_bwd_ms = args.fwd_bwd_ms or (5.0 if args.smoke else 190.0)
    if args.smoke:
        args.warmup = 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    t0 = time.perf_counter()
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "repeats": args.repeats}
    out["stable_spam"] = stable_spam_section(args, device)
    out["alphadecay"] = alphadecay_section(args, device)
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2))

    import transformers

    versions = f"{torch.__version__} / {transformers.__version__}"
    rows = _rows(out, out["device"], datetime.date.today().isoformat(), versions)
    print("\n".join(rows))
    if args.append and not args.smoke:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n".join(rows) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({**out, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
