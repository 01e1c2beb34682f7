"""AlphaDecay's cost on a Qwen2-0.5B-shaped model: one ESD refresh of its 168 linear weights vs a per-matrix
eigenvalue loop, and the training-step overhead of AlphaDecay(AdamW) over the Trainer's fused AdamW.

- Refresh: ours (`esd_alphas`, default backend `auto`) vs a per-matrix loop of `torch.linalg.eigvalsh` on each
  Gram matrix (the stock way); `--refresh-variants` adds a per-matrix `svdvals` loop and each backend side by side
  (batched cuSOLVER, cuSOLVER on 4 streams, LAPACK threads, hybrid = LAPACK threads + the GPU on one queue).
  Random weights: the time does not depend on the spectrum. Each repeat times each contender once.
- Training step at B=8 x T=2048 (bf16 autocast, fp32 weights, random tokens): torch's fused AdamW with the
  Trainer's two groups (`hf_param_groups`, the stock alternative) vs AlphaDecay(AdamW) as shipped, on one model and
  batch, the arms alternating in rounds; per repeat the median step of each arm, and of `optimizer.step` alone.
  The overhead at the paper's refresh interval 500 adds a refresh every 500 steps (timed inside the optimizer). On
  a card with less than 100 GiB free the model runs with activation checkpointing (`--checkpointing`, said in the
  rows' case): the step then fits an 80 GB H100 at the same batch; the optimizer-step difference does not depend
  on it.

    python benchmarks/alphadecay_bench.py --append           # one GPU, ~60 s
    python benchmarks/alphadecay_bench.py --smoke            # tiny shapes on the CPU
"""

from __future__ import annotations

import statistics
import time

import _results
import torch


SCRIPT = "alphadecay_bench.py"
CHECKPOINTING_BELOW_GIB = 100  # free GPU memory under which the B=8 x T=2048 step runs with activation checkpointing


def _timed_s(fn, device) -> tuple[float, object]:
    _results.sync(device)
    t0 = time.perf_counter()
    out = fn()
    _results.sync(device)
    return time.perf_counter() - t0, out


def _linear_weights(config, device) -> list[torch.Tensor]:
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)] * config.num_hidden_layers
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(s, device=device, generator=g) * 0.02 for s in shapes]


def _eigvalsh_loop(weights) -> list[float]:
    from hf_plugins.optim.esd import hill_alpha

    return [float(hill_alpha(torch.linalg.eigvalsh(w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T))) for w in weights]  # fmt: skip


def _svdvals_loop(weights) -> list[float]:
    from hf_plugins.optim.esd import hill_alpha

    return [float(hill_alpha(torch.linalg.svdvals(w).flip(0) ** 2)) for w in weights]


def refresh(config, device, repeats: int, variants: bool) -> dict:
    """Seconds per repeat of one ESD refresh by each contender, and the largest alpha difference to ours."""
    from hf_plugins import esd_alphas
    from hf_plugins.optim.esd import default_cpu_threads, resolve_backend

    weights = _linear_weights(config, device)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the same fp32 Gram for every contender
    threads = default_cpu_threads()
    contenders = {"ours": lambda: esd_alphas(weights), "eigvalsh loop": lambda: _eigvalsh_loop(weights)}
    if variants:
        contenders["svdvals loop"] = lambda: _svdvals_loop(weights)
        kws = {"cuda": {"backend": "cuda"}, f"cpu_threads ({threads} threads)": {"backend": "cpu_threads"}}
        if device.type == "cuda":
            kws["cuda, 4 streams"] = {"backend": "cuda", "num_streams": 4}
            kws[f"hybrid ({max(1, threads - 1)} LAPACK threads + GPU)"] = {"backend": "hybrid"}
        for name, kw in kws.items():
            contenders[f"backend {name}"] = lambda kw=kw: esd_alphas(weights, cpu_threads=threads, **kw)
    esd_alphas(weights[:7], backend="cuda")  # warm-up on one block: solver handles, kernels, thread pools
    esd_alphas(weights[:7], backend="cpu_threads")
    _eigvalsh_loop(weights[:7])
    seconds = {name: [] for name in contenders}
    alphas = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            s, alphas[name] = _timed_s(fn, device)
            seconds[name].append(s)
    torch.backends.cuda.matmul.allow_tf32 = old_tf32
    diff = {k: max(abs(a - b) for a, b in zip(alphas["ours"], v)) for k, v in alphas.items() if k != "ours"}
    auto = resolve_backend("auto", threads, device.type)
    return {"seconds": seconds, "max_alpha_diff_vs_ours": diff, "auto": auto, "threads": threads, "n": len(weights)}


def train_step(
    config, device, batch: int, seq: int, repeats: int, rounds: int, iters: int, checkpointing: str
) -> dict:
    """Per repeat: the two arms alternate for `rounds` rounds of `iters` steps; medians of each arm's steps and of
    its `optimizer.step` (synchronised around it). Then one in-optimizer refresh per repeat."""
    from transformers import Qwen2ForCausalLM

    from hf_plugins import AlphaDecay, hf_param_groups

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).train()
    if checkpointing == "auto":
        free_gib = torch.cuda.mem_get_info()[0] / _results.GIB if device.type == "cuda" else float("inf")
        checkpointing = "on" if free_gib < CHECKPOINTING_BELOW_GIB else "off"
    if checkpointing == "on":
        model.config.use_cache = False
        # newer transformers renamed gradient_checkpointing_enable (the old name warns there)
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    fused = device.type == "cuda"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    min_eigs = min(50, config.hidden_size // 4)
    arms = {
        "adamw": torch.optim.AdamW(hf_param_groups(model, 0.1), lr=1e-5, fused=fused),
        "alphadecay": AlphaDecay()(model, lr=1e-5, weight_decay=0.1, interval=500, fused=fused, min_eigs=min_eigs),
    }

    def steps(opt, n):
        step_s, opt_s = [], []
        for _ in range(n):
            _results.sync(device)
            t0 = time.perf_counter()
            with amp:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            _results.sync(device)
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _results.sync(device)
            t2 = time.perf_counter()
            step_s.append(t2 - t0)
            opt_s.append(t2 - t1)
        return step_s, opt_s

    for opt in arms.values():
        steps(opt, iters)  # warm-up: optimizer states, kernels, the first refresh
    out = {name: {"step_s": [], "opt_s": []} for name in arms}
    out["refresh_s"] = []
    for rep in range(repeats):
        rec = {name: ([], []) for name in arms}
        for r in range(rounds):
            for name in arms if (rep + r) % 2 == 0 else reversed(list(arms)):
                s, o = steps(arms[name], iters)
                rec[name][0].extend(s)
                rec[name][1].extend(o)
        for name, (s, o) in rec.items():
            out[name]["step_s"].append(statistics.median(s))
            out[name]["opt_s"].append(statistics.median(o))
        out["refresh_s"].append(_timed_s(arms["alphadecay"].refresh_decays, device)[0])
    out.update(checkpointing=checkpointing == "on", n_params=sum(p.numel() for p in model.parameters()))
    return out  # the caller frees the model and optimizers


def run(smoke: bool, repeats: int, variants: bool, checkpointing: str) -> tuple[list[dict], dict]:
    device = _results.pick_device(smoke)
    config = _results.qwen2_config(smoke)
    batch, seq = (2, 16) if smoke else (8, 2048)
    ref = refresh(config, device, repeats, variants)
    tr = train_step(config, device, batch, seq, repeats, 2, 2 if smoke else 5, checkpointing)
    _results.free_memory(device)
    tag = "tiny (smoke)" if smoke else "Qwen2-0.5B-shaped"
    case_esd = f"{tag} {ref['n']} linear weights, fp32, {repeats} repeats"
    ckpt = ", activation checkpointing" if tr["checkpointing"] else ""
    case_tr = f"{tag} model, B={batch} T={seq}, bf16 autocast, fp32 weights{ckpt}, {repeats} repeats"
    sec = ref["seconds"]
    ours = f"ours (auto = {ref['auto']}, {ref['threads']} CPU threads)"
    row = _results.row
    rows = [row(case_esd, f"ESD refresh s, {ours} vs per-matrix Gram eigvalsh", sec["ours"], sec["eigvalsh loop"])]
    if variants:
        rows.append(row(case_esd, f"ESD refresh s, {ours} vs per-matrix svdvals", sec["ours"], sec["svdvals loop"]))
        rows += [
            row(case_esd, f"ESD refresh s, {name} vs per-matrix Gram eigvalsh", s, sec["eigvalsh loop"])
            for name, s in sec.items()
            if name.startswith("backend")
        ]
    ad, aw = tr["alphadecay"], tr["adamw"]
    with_refresh = [s + r / 500 for s, r in zip(ad["step_s"], tr["refresh_s"])]
    from_parts = [a + (o_ad - o_aw) + r / 500 for a, o_ad, o_aw, r in zip(aw["step_s"], ad["opt_s"], aw["opt_s"], tr["refresh_s"])]  # fmt: skip
    stock = "AdamW (HF 2 groups)"
    rows += [
        row(case_tr, f"train step s (median, interleaved), AlphaDecay(AdamW) vs {stock}", ad["step_s"], aw["step_s"]),
        row(
            case_tr, f"optimizer.step s (median, interleaved), AlphaDecay(AdamW) vs {stock}", ad["opt_s"], aw["opt_s"]
        ),
        row(case_tr, f"step + refresh/500 s, AlphaDecay(AdamW) vs {stock}", with_refresh, aw["step_s"]),
        # the overhead from its parts (whole-step medians jitter by more than 1%): AdamW's step plus the
        # optimizer.step difference plus refresh/500, over AdamW's step
        row(
            case_tr,
            "AdamW step + optimizer.step difference + refresh/500 s, AlphaDecay(AdamW) vs AdamW step",
            from_parts,
            aw["step_s"],
        ),
    ]
    return rows, {"device": device.type, "refresh": ref, "train": tr}


def main(argv=None) -> int:
    p = _results.parser(__doc__)
    p.add_argument("--refresh-variants", action="store_true", help="also a per-matrix svdvals loop and each backend")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto", help=f"activation checkpointing of the training step (auto: on below {CHECKPOINTING_BELOW_GIB} GiB of free GPU memory)")  # fmt: skip
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(args.smoke, args.repeats, args.refresh_variants, args.checkpointing)
    device = _results.device_label(torch.device(raw["device"]), args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
