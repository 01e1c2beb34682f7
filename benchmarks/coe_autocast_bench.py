"""CoE training under bf16 autocast with fp32 master weights (the stock `Trainer(bf16=True)` set-up): expert products
in the autocast dtype (ours, `_experts_forward`) vs transformers' default expert dispatch, which casts the
activations to the fp32 weight dtype.

Side by side in one process: a 0.65B CoE (Qwen2-0.5B-like attention, 12 layers, 16 experts of width 704, top-4, 2
iterations, `grouped_mm`), fused AdamW, B=16 x T=1024 random tokens. Each repeat runs both arms on the same model
(a warm-up step, then the median of the timed steps); also the first-step loss of each arm from the same weights
(they differ only by bf16 vs fp32 expert products).

    python benchmarks/coe_autocast_bench.py --append         # one GPU, ~60 s
    python benchmarks/coe_autocast_bench.py --smoke          # tiny model on the CPU
"""

from __future__ import annotations

import statistics
import time

import _results
import torch


SCRIPT = "coe_autocast_bench.py"
BENCH = {  # Qwen2-0.5B-like attention and width, 12 layers, 16 experts of 704: ~0.65B parameters
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 12,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "moe_intermediate_size": 704,
}
SMOKE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}


def _step(model, opt, batch, device) -> float:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def main(argv=None) -> int:
    args = _results.parser(__doc__).parse_args(argv)
    from transformers import AutoModelForCausalLM

    import hf_plugins  # noqa: F401  (registers CoE)
    from hf_plugins.models import modeling_coe as M
    from hf_plugins.testing import tiny_config

    t0 = time.perf_counter()
    device = _results.pick_device(args.smoke)
    config = tiny_config("coe", router_aux_loss_coef=0.0, **(SMOKE if args.smoke else BENCH))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
    model.set_experts_implementation("grouped_mm")
    b, t = (2, 32) if args.smoke else (16, 1024)
    batch = torch.randint(0, config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    arms = {"ours": M._experts_forward, "default": M._experts_dispatch}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first_loss = {}
    for name, fwd in arms.items():  # first-step loss of each arm from the same weights
        M.CoEExperts.forward = fwd
        model.load_state_dict(state)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            first_loss[name] = float(model(input_ids=batch, labels=batch).loss)
    tok_s = {k: [] for k in arms}
    try:
        for _ in range(args.repeats):
            for name, fwd in arms.items():
                M.CoEExperts.forward = fwd
                times = []
                for _ in range(4):  # the first step warms the arm up
                    with _results.Timer(device) as timer:
                        _step(model, opt, batch, device)
                    times.append(timer.ms / 1e3)
                tok_s[name].append(b * t / statistics.median(times[1:]))
    finally:
        M.CoEExperts.forward = M._experts_forward
    size = "tiny (smoke)" if args.smoke else "0.65B (16x704 experts, top-4, 2 iterations)"
    case = f"CoE {size}, grouped_mm, fp32 weights + bf16 autocast, B={b} T={t}, {args.repeats} repeats"
    rows = [
        _results.row(
            case,
            "tokens/s, experts in autocast dtype vs transformers' default (fp32 experts)",
            tok_s["ours"],
            tok_s["default"],
        ),
        _results.row(case, "first-step loss, ours vs default", first_loss["ours"], first_loss["default"]),
    ]
    raw = {"tokens_per_s": tok_s, "first_loss": first_loss}
    device_name = _results.device_label(device, args.smoke)
    _results.report(rows, raw, SCRIPT, device_name, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
