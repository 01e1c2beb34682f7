"""SEFT vs LoRA r=16 vs full fine-tuning on a 50%-pruned Qwen2-0.5B-shaped model, plus pruning time (issue 4).

Side by side in one run, pure bf16 weights, random tokens, no gradient checkpointing, fused AdamW in every arm:

- pruning: Wanda and SparseGPT (unstructured 50%) on the model built in code, calibrated on synthetic tokens
  (16 windows x 512 tokens; the papers use 128 x 2048-4096 C4 tokens: calibration forwards scale linearly,
  SparseGPT's per-layer Cholesky and column loop do not depend on the calibration size).
- full FT: every parameter of the Wanda-pruned model trains (the sparsity is lost; reference speed).
- LoRA: PEFT `LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")` (fp32 adapter and states).
- SEFT: `SeftConfig(r=16, update_interval=20, accumulation_steps=5)` on the same seven projections: LoRA-r16's
  trainable-entry budget. Timed separately: plain steps (no hook), grow-window steps (gradient hook armed),
  the cycle's last step (grow + sensitivity hook) and the drop/grow/re-prune cycle itself; the step time reported
  against the baselines is the average over one steady-state cycle of ΔT=20 steps (15 plain, 4 window, 1 last +
  cycle): the second cycle. The first cycle re-selects every delta (`full_first_reselection`, once per run) and is
  reported on its own. A third cycle repeats the second with the effective-weight cache off
  (`cache_effective_weight=False`: W_eff rebuilt in every layer's forward and backward), the memory-lean setting.
  Four more steady cycles run interleaved step by step with full FT (both arms see the same machine state),
  alternating the cache on (cycles 4, 6) and off (5, 7).

Goals (issue 4): SEFT step time <= 1.2x full FT's; SEFT peak memory <= LoRA's.

    python benchmarks/seft_bench.py --append --out seft_bench.json   # H200: ~60-100 s
    python benchmarks/seft_bench.py --smoke                            # tiny model, CPU, < 60 s
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import time

import _results  # benchmarks/_results.py: RESULTS.md rows and output files
import torch


SCRIPT = "seft_bench.py"
GIB = 1024**3


def _config(smoke: bool):
    from transformers import Qwen2Config

    if smoke:
        return Qwen2Config(
            vocab_size=256,  # 151936
            hidden_size=64,  # 896
            intermediate_size=128,  # 4864
            num_hidden_layers=2,  # 24
            num_attention_heads=4,  # 14
            num_key_value_heads=2,  # 2
            tie_word_embeddings=True,
        )
    return Qwen2Config(  # Qwen2-0.5B shapes: 494.0M parameters with tied embeddings
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
    return model


class _Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = 1000 * (time.perf_counter() - self.t0)


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device) -> float:
    return torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")


def _prune_times(model, calib, device) -> dict:
    from hf_plugins.pruning import prunable_linears, prune_model

    backup = {n: lin.weight.detach().clone() for n, lin in prunable_linears(model).items()}
    out = {}
    for method in ("sparsegpt", "wanda"):  # Wanda last: its result is the base of the training arms
        with torch.no_grad():
            for n, lin in prunable_linears(model).items():
                lin.weight.copy_(backup[n])
        _peak_reset(device)
        t0 = time.perf_counter()
        report = prune_model(model.eval(), method, 0.5, calibration=calib, batch_size=4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[method] = {"seconds": time.perf_counter() - t0, "sparsity": report.overall, "peak_gib": _peak(device)}
        print(f"{method}: {out[method]['seconds']:.1f} s, sparsity {report.overall:.4f}", flush=True)
    del backup
    return out


def _train_step(model, opt, batch):
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()


def _arm(name: str, base, r: int):
    from peft import LoraConfig, get_peft_model

    from hf_plugins import SeftConfig

    model = copy.deepcopy(base).train()
    if name == "lora":
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    elif name == "seft":
        model = get_peft_model(model, SeftConfig(r=r, update_interval=20, accumulation_steps=5))
    params = [p for p in model.parameters() if p.requires_grad]
    fused = next(model.parameters()).device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=1e-5, fused=fused)
    return model, opt, sum(p.numel() for p in params)


def _measure_baseline(name, base, batch, device, r, warmup, timed) -> dict:
    model, opt, trainable = _arm(name, base, r)
    _peak_reset(device)
    times = []
    for i in range(warmup + timed):
        with _Timer(device) as t:
            _train_step(model, opt, batch)
            opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(t.ms)
    out = {"step_ms": statistics.median(times), "peak_gib": _peak(device), "trainable": trainable}
    del model, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _timed_cycle(model, opt, batch, device, first_step: int, warmup: int, full=None) -> dict:
    """Time one ΔT=20 cycle starting at `first_step`: 15 plain steps (no hook), 4 grow-window steps, the last step
    (grow + sensitivity hooks) and `seft_evolve`. The first `warmup` plain steps are not timed. With `full` =
    (model, optimizer), one full fine-tuning step runs and is timed after every SEFT step (interleaved: both arms
    see the same machine state; the host-bound SEFT step time drifts by +-10% between runs)."""
    plain, window, full_ms = [], [], []

    def full_step():
        if full is not None:
            with _Timer(device) as t_full:
                _train_step(*full, batch)
                full[1].zero_grad(set_to_none=True)
            full_ms.append(t_full.ms)

    for i in range(15):
        model.seft_prepare_step(first_step + i, 1000)
        with _Timer(device) as t:
            _train_step(model, opt, batch)
            opt.zero_grad(set_to_none=True)
        if i >= warmup:
            plain.append(t.ms)
        full_step()
    for i in range(15, 19):  # the grow window (fresh at 15)
        model.seft_prepare_step(first_step + i, 1000)
        with _Timer(device) as t:
            _train_step(model, opt, batch)
            opt.zero_grad(set_to_none=True)
        window.append(t.ms)
        full_step()
    model.seft_prepare_step(first_step + 19, 1000)  # last step of the cycle: grow + sensitivity hooks
    with _Timer(device) as t_last:
        _train_step(model, opt, batch)
    with _Timer(device) as t_cycle:
        counts = model.seft_evolve(opt, first_step + 19, 1000)
    opt.zero_grad(set_to_none=True)
    full_step()
    p_ms, w_ms = statistics.median(plain), statistics.median(window)
    return {
        "plain_ms": p_ms,
        "window_ms": w_ms,
        "fresh_window_ms": window[0],
        "last_ms": t_last.ms,
        "cycle_ms": t_cycle.ms,
        "step_ms": (15 * p_ms + 4 * w_ms + t_last.ms + t_cycle.ms) / 20,
        "mean_step_ms": (sum(plain) / len(plain) * 15 + sum(window) + t_last.ms + t_cycle.ms) / 20,
        "full_ms": statistics.median(full_ms) if full_ms else math.nan,
        "full_mean_ms": sum(full_ms) / len(full_ms) if full_ms else math.nan,
        "cycle_counts": counts,
    }


def _measure_seft(base, batch, device, r, warmup, timed) -> dict:
    """Cycle 1 (the first one re-selects every delta: `full_first_reselection`) is timed on its own; the reported
    average step is that of cycle 2, a steady-state cycle (drop fraction p, what every later cycle costs). Then a
    third cycle with the effective-weight cache off (its peak memory measured on its own)."""
    model, opt, trainable = _arm("seft", base, r)
    _peak_reset(device)
    first = _timed_cycle(model, opt, batch, device, 0, warmup)
    steady = _timed_cycle(model, opt, batch, device, 20, 1)
    peak = _peak(device)
    cache = model.base_model.weight_cache
    cache_gib = cache.nbytes / GIB
    cache.enabled["default"] = False
    cache.clear()  # frees the buffer; rebuilt when the cache is switched on again
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _peak_reset(device)
    transient = _timed_cycle(model, opt, batch, device, 40, 1)
    transient["peak_gib"] = _peak(device)
    cache.enabled["default"] = True
    full_model, full_opt, _ = _arm("full", base, r)  # four more steady cycles, each interleaved with full FT
    interleaved, interleaved_off = [], []
    for first_step in (60, 80, 100, 120):
        on = first_step in (60, 100)
        cache.enabled["default"] = on
        if not on:
            cache.clear()
        cycle = _timed_cycle(model, opt, batch, device, first_step, 1, (full_model, full_opt))
        (interleaved if on else interleaved_off).append(cycle)
    cache.enabled["default"] = True
    del full_model, full_opt
    sparsity = model.seft_sparsity()
    kept = all(v["support"] == v["target_nnz"] for v in sparsity.values())
    out = {
        **steady,
        "first_cycle": first,
        "transient": transient,
        "cache_gib": cache_gib,
        "interleaved": interleaved,
        "interleaved_cache_off": interleaved_off,
        "peak_gib": peak,
        "trainable": trainable,
        "support_equals_target": kept,
    }
    print(f"seft: {out}", flush=True)
    del model, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run(smoke: bool, r: int) -> tuple[list[dict], dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    config = _config(smoke)
    bsz, seqlen = (2, 64) if smoke else (8, 2048)
    nsamples, calib_len = (4, 64) if smoke else (16, 512)
    warmup, timed = (1, 2) if smoke else (2, 5)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, config.vocab_size, (nsamples, calib_len), generator=g).to(device)
    batch = torch.randint(0, config.vocab_size, (bsz, seqlen), generator=g).to(device)

    base = _build(config, device)
    raw = {"device": device.type, "batch": [bsz, seqlen], "calib": [nsamples, calib_len], "r": r}
    raw["pruning"] = _prune_times(base, calib, device)
    base.train()
    raw["full"] = _measure_baseline("full", base, batch, device, r, warmup, timed)
    print(f"full: {raw['full']}", flush=True)
    raw["lora"] = _measure_baseline("lora", base, batch, device, r, warmup, timed)
    print(f"lora: {raw['lora']}", flush=True)
    raw["seft"] = _measure_seft(base, batch, device, r, warmup, timed)
    return _rows(raw, smoke), raw


def _rows(raw: dict, smoke: bool) -> list[dict]:
    shape = "tiny Qwen2 (smoke)" if smoke else "Qwen2-0.5B shape"
    bsz, seqlen = raw["batch"]
    case = f"{shape}, 50% Wanda, bf16, B={bsz}, T={seqlen}, r={raw['r']}"
    s, f, lo = raw["seft"], raw["full"], raw["lora"]
    b = s["transient"]
    tok = bsz * seqlen
    pr = raw["pruning"]

    def row(case_, metric, ours, baseline):
        ratio = ours / baseline if baseline and not math.isnan(baseline) else float("nan")
        return {"case": case_, "metric": metric, "ours": ours, "baseline": baseline, "ratio": ratio}

    return [
        row(case, "step ms, SEFT (avg over a steady ΔT=20 cycle) vs full FT", s["step_ms"], f["step_ms"]),
        row(case, "step ms, SEFT (avg over a steady ΔT=20 cycle) vs LoRA", s["step_ms"], lo["step_ms"]),
        row(case, "tokens/s, SEFT vs full FT", 1000 * tok / s["step_ms"], 1000 * tok / f["step_ms"]),
        row(case, "peak GiB, SEFT vs LoRA", s["peak_gib"], lo["peak_gib"]),
        row(case, "peak GiB, SEFT vs full FT", s["peak_gib"], f["peak_gib"]),
        row(case, "step ms, SEFT plain step (no hook) vs full FT", s["plain_ms"], f["step_ms"]),
        row(case, "step ms, SEFT grow-window step vs full FT", s["window_ms"], f["step_ms"]),
        row(
            case,
            "ms, SEFT cycle's last step + drop/grow/re-prune cycle vs full FT step",
            s["last_ms"] + s["cycle_ms"],
            f["step_ms"],
        ),
        row(
            case,
            "ms, SEFT first cycle's last step + full re-selection cycle vs full FT step",
            s["first_cycle"]["last_ms"] + s["first_cycle"]["cycle_ms"],
            f["step_ms"],
        ),
        row(
            case,
            "step ms, SEFT cache_effective_weight=False (avg over a steady ΔT=20 cycle) vs full FT",
            b["step_ms"],
            f["step_ms"],
        ),
        row(case, "step ms, SEFT cache_effective_weight=False plain step vs full FT", b["plain_ms"], f["step_ms"]),
        row(case, "peak GiB, SEFT cache_effective_weight=False vs LoRA", b["peak_gib"], lo["peak_gib"]),
        row(case, "GiB, SEFT effective-weight cache vs SEFT peak", s["cache_gib"], s["peak_gib"]),
        *(
            row(
                case,
                f"step ms, SEFT (mean over steady ΔT=20 cycle {n}) vs full FT interleaved step by step",
                c["mean_step_ms"],
                c["full_mean_ms"],
            )
            for n, c in zip((4, 6), s["interleaved"])
        ),
        *(
            row(
                case,
                f"step ms, SEFT cache_effective_weight=False (mean over steady cycle {n}) vs full FT interleaved",
                c["mean_step_ms"],
                c["full_mean_ms"],
            )
            for n, c in zip((5, 7), s.get("interleaved_cache_off", []))
        ),
        row(
            case,
            "step ms, SEFT plain step vs full FT, interleaved (medians, cycles 4 and 6)",
            statistics.median([c["plain_ms"] for c in s["interleaved"]]),
            statistics.median([c["full_ms"] for c in s["interleaved"]]),
        ),
        row(case, "trainable params, SEFT vs LoRA", float(s["trainable"]), float(lo["trainable"])),
        row(
            f"{shape}, bf16, 50% unstructured, {raw['calib'][0]}x{raw['calib'][1]} synthetic calibration tokens",
            "pruning s, Wanda vs SparseGPT",
            pr["wanda"]["seconds"],
            pr["sparsegpt"]["seconds"],
        ),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny Qwen2 on the CPU (checks the script, < 60 s)")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write rows and raw results as JSON here")
    p.add_argument("--r", type=int, default=None, help="LoRA rank and SEFT's LoRA-equivalent budget (16; smoke: 4)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, args.r or (4 if args.smoke else 16))
    device = _results.device_label(raw["device"] == "cuda", args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, out=args.out, append=args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
