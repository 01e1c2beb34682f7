"""SEFT vs full fine-tuning and LoRA r=16 on a 50%-Wanda-pruned Qwen2-0.5B-shaped model: step time over SEFT's
drop/grow/re-prune cycle, peak memory, and (with `--pruning`) Wanda vs SparseGPT pruning time.

Side by side in one process, pure bf16 weights, random tokens, no gradient checkpointing, fused AdamW in every arm:

- pruning: Wanda (unstructured 50%) of the model built in code, calibrated on 16 synthetic windows x 512 tokens
  (the papers use 128 x 2048-4096 C4 tokens; calibration forwards scale linearly). `--pruning` also times SparseGPT.
- full FT: every parameter of the pruned model trains (the sparsity is lost; the speed reference);
- LoRA: PEFT `LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")` (fp32 adapter and states);
- SEFT: `SeftConfig(r=16, update_interval=20, accumulation_steps=5)` on the same seven projections (LoRA-r16's
  trainable-entry budget), with its default effective-weight cache; `--cache-off` adds an arm without it
  (`cache_effective_weight=False`: W_eff rebuilt in every layer's forward and backward, the memory-lean setting).

SEFT's first ΔT=20 cycle re-selects every delta (`full_first_reselection`, once per run): it runs alone, is timed on
its own and gives SEFT's peak memory. Then `--repeats` steady cycles (20 steps: 15 plain, 4 grow-window, the last
with the sensitivity hook, then `seft_evolve`) run interleaved step by step with full FT steps, so both arms see the
same machine state; each cycle gives one repeat: SEFT's mean step including the cycle vs full FT's mean step. LoRA
and full FT alone: `--repeats` blocks of timed steps after warm-up, and their peak memory.

    python benchmarks/seft_bench.py --append                 # one GPU, ~60 s (fits an 80 GB H100)
    python benchmarks/seft_bench.py --smoke                  # tiny model on the CPU
"""

from __future__ import annotations

import copy
import statistics
import time

import _results
import torch


SCRIPT = "seft_bench.py"


def _prune(model, calib, methods: list[str], repeats: int) -> dict:
    """Seconds per repeat of each pruning method from the same dense weights; Wanda last: its result stays."""
    from hf_plugins.pruning import prunable_linears, prune_model

    backup = {n: lin.weight.detach().clone() for n, lin in prunable_linears(model).items()}
    out = {m: [] for m in methods}
    for _ in range(repeats):
        for method in methods:
            with torch.no_grad():
                for n, lin in prunable_linears(model).items():
                    lin.weight.copy_(backup[n])
            t0 = time.perf_counter()
            prune_model(model.eval(), method, 0.5, calibration=calib, batch_size=4)
            _results.sync(calib.device)
            out[method].append(time.perf_counter() - t0)
    return out


def _arm(name: str, base, r: int, cache: bool = True):
    from peft import LoraConfig, get_peft_model

    from hf_plugins import SeftConfig

    model = copy.deepcopy(base).train()
    if name == "lora":
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    elif name == "seft":
        seft = SeftConfig(r=r, update_interval=20, accumulation_steps=5, cache_effective_weight=cache)
        model = get_peft_model(model, seft)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=params[0].device.type == "cuda")
    return model, opt, sum(p.numel() for p in params)


def _train_step(model, opt, batch):
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()


def _baseline(name, base, batch, device, r, warmup, timed, repeats) -> dict:
    """Per-repeat median step ms (blocks of `timed` steps after warm-up) and peak GiB of full FT or LoRA alone."""
    model, opt, trainable = _arm(name, base, r)
    _results.peak_reset(device)
    ms = []
    for rep in range(repeats):
        times = []
        for _ in range((warmup if rep == 0 else 0) + timed):
            with _results.Timer(device) as t:
                _train_step(model, opt, batch)
                opt.zero_grad(set_to_none=True)
            times.append(t.ms)
        ms.append(statistics.median(times[-timed:]))
    out = {"ms": ms, "peak_gib": _results.peak_gib(device), "trainable": trainable}
    del model, opt
    _results.free_memory(device)
    return out


def _cycle(model, opt, batch, device, first_step: int, full=None) -> dict:
    """One ΔT=20 cycle from `first_step`: 15 plain steps, 4 grow-window steps, the last step (grow + sensitivity
    hooks) and `seft_evolve`. With `full` = (model, optimizer) a full FT step runs and is timed after each SEFT step."""
    ms, full_ms = [], []
    for i in range(20):
        model.seft_prepare_step(first_step + i, 1000)
        with _results.Timer(device) as t:
            _train_step(model, opt, batch)
            if i == 19:
                model.seft_evolve(opt, first_step + i, 1000)
            opt.zero_grad(set_to_none=True)
        ms.append(t.ms)
        if full is not None:
            with _results.Timer(device) as t_full:
                _train_step(*full, batch)
                full[1].zero_grad(set_to_none=True)
            full_ms.append(t_full.ms)
    return {
        "step_ms": sum(ms) / 20,  # the cycle's cost spread over its 20 steps
        "plain_ms": statistics.median(ms[:15]),
        "window_ms": statistics.median(ms[15:19]),
        "last_and_cycle_ms": ms[19],
        "full_ms": sum(full_ms) / len(full_ms) if full_ms else float("nan"),
    }


def _seft(base, batch, device, r, repeats, cache: bool) -> dict:
    """The first cycle alone (its peak memory is SEFT's), then `repeats` steady cycles interleaved with full FT."""
    model, opt, trainable = _arm("seft", base, r, cache)
    _results.peak_reset(device)
    first = _cycle(model, opt, batch, device, 0)
    peak = _results.peak_gib(device)
    cache_gib = model.base_model.weight_cache.nbytes / _results.GIB
    full = _arm("full", base, r)[:2]
    for _ in range(2):  # warms the full FT arm up (its optimizer states, kernels)
        _train_step(*full, batch)
        full[1].zero_grad(set_to_none=True)
    steady = [_cycle(model, opt, batch, device, 20 + 20 * k, full) for k in range(repeats)]
    kept = all(v["support"] == v["target_nnz"] for v in model.seft_sparsity().values())
    del model, opt, full
    _results.free_memory(device)
    cycles = {key: [c[key] for c in steady] for key in steady[0]}
    return {**cycles, "first": first, "peak_gib": peak, "cache_gib": cache_gib, "trainable": trainable, "support_kept": kept}  # fmt: skip


def run(smoke: bool, r: int, repeats: int, pruning: bool, cache_off: bool) -> tuple[list[dict], dict]:
    device = _results.pick_device(smoke)
    config = _results.qwen2_config(smoke)
    bsz, seqlen = (2, 32) if smoke else (8, 2048)
    nsamples, calib_len = (4, 32) if smoke else (16, 512)
    warmup, timed = (1, 2) if smoke else (2, 5)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, config.vocab_size, (nsamples, calib_len), generator=g).to(device)
    batch = torch.randint(0, config.vocab_size, (bsz, seqlen), generator=g).to(device)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    raw = {"device": device.type, "batch": [bsz, seqlen], "calib": [nsamples, calib_len], "r": r}
    raw["pruning_s"] = _prune(base, calib, ["sparsegpt", "wanda"] if pruning else ["wanda"], repeats if pruning else 1)
    base.train()
    for name in ("full", "lora"):
        raw[name] = _baseline(name, base, batch, device, r, warmup, timed, repeats)
        print(name, raw[name], flush=True)
    raw["seft"] = _seft(base, batch, device, r, repeats, cache=True)
    print("seft", raw["seft"], flush=True)
    if cache_off:
        raw["seft_cache_off"] = _seft(base, batch, device, r, repeats, cache=False)
        print("seft, cache off", raw["seft_cache_off"], flush=True)
    return _rows(raw, smoke, repeats), raw


def _rows(raw: dict, smoke: bool, repeats: int) -> list[dict]:
    shape = "tiny Qwen2 (smoke)" if smoke else "Qwen2-0.5B shape"
    bsz, seqlen = raw["batch"]
    case = f"{shape}, 50% Wanda, bf16, B={bsz}, T={seqlen}, r={raw['r']}, {repeats} repeats"
    s, f, lo = raw["seft"], raw["full"], raw["lora"]
    tok_s = [1000 * bsz * seqlen / ms for ms in s["step_ms"]]
    full_tok_s = [1000 * bsz * seqlen / ms for ms in s["full_ms"]]
    row = _results.row
    gpu = raw["device"] == "cuda"
    rows = [
        row(case, "step ms, SEFT (avg over a steady ΔT=20 cycle) vs full FT", s["step_ms"], s["full_ms"]),
        row(case, "step ms, SEFT (avg over a steady ΔT=20 cycle) vs LoRA", s["step_ms"], lo["ms"]),
        row(case, "tokens/s, SEFT vs full FT", tok_s, full_tok_s),
        *([row(case, "peak GiB, SEFT vs LoRA", s["peak_gib"], lo["peak_gib"])] if gpu else []),
        *([row(case, "peak GiB, SEFT vs full FT", s["peak_gib"], f["peak_gib"])] if gpu else []),
        row(case, "step ms, SEFT plain step (no hook) vs full FT", s["plain_ms"], s["full_ms"]),
        row(case, "step ms, SEFT grow-window step vs full FT", s["window_ms"], s["full_ms"]),
        row(
            case,
            "ms, SEFT cycle's last step + drop/grow/re-prune cycle vs full FT step",
            s["last_and_cycle_ms"],
            s["full_ms"],
        ),
        row(
            case,
            "ms, SEFT first cycle's last step + full re-selection cycle vs full FT step",
            s["first"]["last_and_cycle_ms"],
            f["ms"],
        ),
        row(case, "trainable params, SEFT vs LoRA", s["trainable"], lo["trainable"]),
    ]
    if "seft_cache_off" in raw:
        b = raw["seft_cache_off"]
        metric = "step ms, SEFT cache_effective_weight=False (avg over a steady ΔT=20 cycle) vs full FT"
        rows.append(row(case, metric, b["step_ms"], b["full_ms"]))
        if gpu:
            rows.append(row(case, "peak GiB, SEFT cache_effective_weight=False vs LoRA", b["peak_gib"], lo["peak_gib"]))  # fmt: skip
            rows.append(row(case, "GiB, SEFT effective-weight cache vs SEFT peak", s["cache_gib"], s["peak_gib"]))
    if "sparsegpt" in raw["pruning_s"]:
        calib = f"{raw['calib'][0]}x{raw['calib'][1]} synthetic calibration tokens, {repeats} repeats"
        pr = raw["pruning_s"]
        rows.append(row(f"{shape}, bf16, 50% unstructured, {calib}", "pruning s, Wanda vs SparseGPT", pr["wanda"], pr["sparsegpt"]))  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = _results.parser(__doc__)
    p.add_argument("--pruning", action="store_true", help="also time SparseGPT against Wanda (~25 s each on a GPU)")
    p.add_argument("--cache-off", action="store_true", help="also a SEFT arm without the effective-weight cache")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, 4 if args.smoke else 16, args.repeats, args.pruning, args.cache_off)
    device = _results.device_label(torch.device(raw["device"]), args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
