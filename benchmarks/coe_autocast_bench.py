"""CoE training under bf16 autocast with fp32 master weights (the stock `Trainer(bf16=True)` set-up): expert products
in the autocast dtype (ours, `_experts_forward`) vs transformers' default dispatch, which casts the activations to
the fp32 weight dtype (issue 16 found the 1-GPU CoE run 4x slower than its bf16 FSDP2 run).

Side by side in one process: the multi-GPU benchmark's CoE model (0.65B, 16 experts of 704, top-4, 2 iterations,
`grouped_mm`), fused AdamW, B=16 x T=1024 random tokens, interleaved rounds of steps, median step time. Also the
loss of the first step of each arm from the same weights (they differ only by bf16 vs fp32 expert products).

    python benchmarks/coe_autocast_bench.py --append   # H200: ~60 s
    python benchmarks/coe_autocast_bench.py --smoke    # tiny model, CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import _results  # benchmarks/_results.py: RESULTS.md rows and output files
import torch


SCRIPT = "coe_autocast_bench.py"


def _step(model, opt, batch, device):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def _timed(model, opt, batch, device, n):
    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _step(model, opt, batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--append", action="store_true")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    import hf_plugins  # noqa: F401  (registers CoE)
    from hf_plugins.distributed.harness import _base_config, _model
    from hf_plugins.models import modeling_coe as M

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    size = "tiny" if args.smoke else "bench"
    extra = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
    if not args.smoke:
        extra = {"num_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 704}
    model = _model(_base_config("coe", size, router_aux_loss_coef=0.0, **extra), 0).to(device)
    model.set_experts_implementation("grouped_mm")
    b, t = (2, 32) if args.smoke else (16, 1024)
    batch = torch.randint(0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    arms = {"ours": M._experts_forward, "default": M._experts_dispatch}
    first_loss = {}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, fwd in arms.items():  # first-step loss of each arm from the same weights
        M.CoEExperts.forward = fwd
        model.load_state_dict(state)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            first_loss[name] = float(model(input_ids=batch, labels=batch).loss)
    times = {k: [] for k in arms}
    for _ in range(args.rounds):
        for name, fwd in arms.items():
            M.CoEExperts.forward = fwd
            steps = _timed(model, opt, batch, device, 3)
            times[name] += steps[1:]  # the first step of each round warms the arm up
    M.CoEExperts.forward = M._experts_forward
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)"
    prefix = _results.row_prefix(SCRIPT, dev)
    case = f"CoE {'tiny' if args.smoke else '0.65B (16x704 experts, top-4, 2 iterations)'}, grouped_mm, fp32 weights + bf16 autocast, B={b} T={t}"
    tok = b * t
    rows = [
        f"{prefix} {case} | tokens/s, experts in autocast dtype vs transformers' default (fp32 experts) | {tok / med['ours']:,.0f} | {tok / med['default']:,.0f} | {med['default'] / med['ours']:.2f} |",
        f"{prefix} {case} | first-step loss, ours vs default | {first_loss['ours']:.4f} | {first_loss['default']:.4f} | {first_loss['ours'] / first_loss['default']:.4f} |",
    ]  # fmt: skip
    print("\n".join(rows))
    _results.write_outputs(rows, append=args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
