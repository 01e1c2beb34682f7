"""NeuroTrails quality check (issue 10): small-scale pre-training on the project corpus, recorded whatever the outcome.

Arms, each trained on the same batches in the same order for the same number of tokens (no 1/density scaling),
plain PyTorch loop, bf16 autocast, Adam lr 1.5e-3 (official 130M), no weight decay, no clipping (official), cosine
to 0.1x after 10% warm-up:
  - single: one dense untied LlamaForCausalLM (the paper's "single network");
  - ensemble: three independently initialised dense Llamas, prediction = mean of their logits ("full ensemble");
  - neurotrails: 3 trails, blocks_in_head = 2/3 of the depth (official 8 of 12), density 0.9, update every 50 steps,
    soft magnitude T = 3, RigL growth (`model.sparsity_step` after each optimizer step);
  - treenet: the same split at density 1.0 (separates the head split from the sparsity).
Validation: token-weighted cross-entropy of the (averaged) logits on held-out blocks -> perplexity; for NeuroTrails
also each trail's own perplexity. Parameter counts: total and non-zero. Expected direction (paper, LLaMA-350M on
C4: 22.8 single, 21.3 ensemble, 20.7 NeuroTrails): NeuroTrails < ensemble < single; one seed here.

    python benchmarks/neurotrails_quality.py --corpus corpus_out --append --out nt_quality.json   # H200: ~150 s
    python benchmarks/neurotrails_quality.py --smoke                                                # CPU, < 60 s

Needs the corpus built by `hf-plugins corpus build --out corpus_out` (--smoke uses random tokens unless --corpus
is given). Only torch + transformers.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SCRIPT = "neurotrails_quality.py"
SHAPE = {  # a narrow 12-layer Llama (the spec's "small 12-layer Llama"); vocab from the corpus tokenizer
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
SMOKE_SHAPE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


def _data(args, smoke):
    """(vocab_size, train blocks [N, T], validation blocks [M, T]) as LongTensors."""
    corpus = Path(args.corpus or "corpus_out")
    if not (smoke and args.corpus is None) and (corpus / "train.bin").exists():
        from transformers import AutoTokenizer

        from hf_plugins.data.corpus import PackedBlocks

        vocab = len(AutoTokenizer.from_pretrained(corpus / "tokenizer"))
        need = args.steps * args.batch_size
        train = PackedBlocks(corpus, "train", args.seq_len, max_tokens=need * args.seq_len)
        val = PackedBlocks(corpus, "validation", args.seq_len, max_tokens=args.eval_tokens)
        stack = lambda blocks: torch.stack([blocks[i]["input_ids"] for i in range(len(blocks))])  # noqa: E731
        return vocab, stack(train), stack(val)
    if not smoke:
        raise FileNotFoundError(f"no corpus at {corpus}: run `hf-plugins corpus build --out {corpus}`")
    g = torch.Generator().manual_seed(0)
    vocab = 128
    return vocab, torch.randint(0, vocab, (64, args.seq_len), generator=g), torch.randint(0, vocab, (8, args.seq_len))


def _build(arm, shape, vocab, seq_len, device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hf_plugins.models.neurotrails import NeuroTrailsConfig

    common = {**shape, "vocab_size": vocab, "max_position_embeddings": max(seq_len, 128), "tie_word_embeddings": False}
    b = max(1, round(shape["num_hidden_layers"] * 2 / 3))
    models = []
    for seed in range(3 if arm == "ensemble" else 1):
        torch.manual_seed(seed)
        with torch.device(device):
            if arm in ("neurotrails", "treenet"):
                density = 0.9 if arm == "neurotrails" else 1.0
                config = NeuroTrailsConfig(**common, num_trails=3, blocks_in_head=b, density=density)
            else:
                config = LlamaConfig(**common)
            models.append(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train())
    return models


@torch.no_grad()
def _evaluate(models, val, batch_size, device, bf16):
    for m in models:
        m.eval()
    total, trail_total, count = 0.0, None, 0
    for start in range(0, len(val), batch_size):
        ids = val[start : start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outs = [m(input_ids=ids, labels=ids) for m in models]
        logits = sum(o.logits.float() for o in outs) / len(outs)
        n = ids[:, 1:].numel()
        total += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        if getattr(outs[0], "trail_losses", None) is not None:
            t = outs[0].trail_losses.float().cpu() * n
            trail_total = t if trail_total is None else trail_total + t
        count += n
    for m in models:
        m.train()
    out = {"ppl": math.exp(total / count)}
    if trail_total is not None:
        out["trail_ppl"] = [math.exp(v / count) for v in trail_total.tolist()]
    return out


def _train_arm(arm, shape, vocab, train, val, args, device, bf16):
    models = _build(arm, shape, vocab, args.seq_len, device)
    params = [p for m in models for p in m.parameters()]
    n_params = sum(p.numel() for p in params)
    nt = models[0] if arm == "neurotrails" else None
    nonzero = n_params
    if nt is not None:
        nonzero -= sum(m.weight.numel() - m.nt_num_active for _, m in nt.sparse_modules())
    opt = torch.optim.Adam(params, lr=args.lr, fused=device.type == "cuda")
    warmup = max(1, args.steps // 10)

    def lr_factor(step):  # linear warm-up, cosine to 0.1x (official schedule)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(args.steps):
        ids = train[(step * args.batch_size) % len(train) :][: args.batch_size].to(device)
        for m in models:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = m(input_ids=ids, labels=ids).loss
            loss.backward()
        opt.step()
        if nt is not None:
            nt.sparsity_step(opt, step=step, total_steps=args.steps, seed=0)
        sched.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {"arm": arm, "params": n_params, "nonzero": nonzero, "train_s": seconds}
    result.update(_evaluate(models, val, args.batch_size, device, bf16))
    if nt is not None:
        densities = nt.layer_densities()
        result["min_layer_density"] = min(densities.values())
    return result


def run(args, smoke):
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    bf16 = device.type == "cuda"
    shape = SMOKE_SHAPE if smoke else SHAPE
    vocab, train, val = _data(args, smoke)
    res = {}
    for arm in ("single", "ensemble", "neurotrails", "treenet"):
        res[arm] = r = _train_arm(arm, shape, vocab, train, val, args, device, bf16)
        trails = f", trails {[round(p, 2) for p in r['trail_ppl']]}" if "trail_ppl" in r else ""
        print(
            f"{arm:12s} params {r['params'] / 1e6:6.1f}M non-zero {r['nonzero'] / 1e6:6.1f}M  "
            f"train {r['train_s']:6.1f} s  val ppl {r['ppl']:8.3f}{trails}",
            flush=True,
        )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    tokens = args.steps * args.batch_size * args.seq_len
    case = (
        f"{'smoke, ' if smoke else ''}corpus pre-training, {shape['num_hidden_layers']}x{shape['hidden_size']} Llama, "
        f"{tokens / 1e6:.1f}M tokens per arm, 3 trails x {max(1, round(shape['num_hidden_layers'] * 2 / 3))} "
        f"blocks, density 0.9, seed 0"
    )
    nt = res["neurotrails"]
    rows = []

    def row(metric, ours, baseline):
        rows.append({"case": case, "metric": metric, "ours": ours, "baseline": baseline, "ratio": ours / baseline})

    row("val perplexity, NeuroTrails vs single model", nt["ppl"], res["single"]["ppl"])
    row("val perplexity, NeuroTrails vs full 3-model ensemble", nt["ppl"], res["ensemble"]["ppl"])
    row("val perplexity, NeuroTrails vs dense TreeNet (density 1.0)", nt["ppl"], res["treenet"]["ppl"])
    row("val perplexity, NeuroTrails vs its best single trail", nt["ppl"], min(nt["trail_ppl"]))
    row("val perplexity, full ensemble vs single model", res["ensemble"]["ppl"], res["single"]["ppl"])
    row("parameters M non-zero, NeuroTrails vs full ensemble", nt["nonzero"] / 1e6, res["ensemble"]["params"] / 1e6)
    for r in rows:
        print(f"{r['metric']}: ours {r['ours']:.4g}, baseline {r['baseline']:.4g}, ratio {r['ratio']:.3f}")
    return rows, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU (random tokens without a corpus)")
    p.add_argument(
        "--corpus", default=None, help="`hf-plugins corpus build` output (default corpus_out; smoke: random tokens)"
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default 400; smoke 4)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 64; smoke 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 256, official; smoke 32)")
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (official 130M: 1.5e-3)")
    p.add_argument("--eval-tokens", type=int, default=None, help="validation tokens (default 500k; smoke 2k)")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md (not with --smoke)")
    p.add_argument("--out", default=None, help="write the rows to this JSON file")
    args = p.parse_args()
    args.steps = args.steps or (4 if args.smoke else 400)
    args.batch_size = args.batch_size or (4 if args.smoke else 64)
    args.seq_len = args.seq_len or (32 if args.smoke else 256)
    args.eval_tokens = args.eval_tokens or (2048 if args.smoke else 500_000)
    t0 = time.perf_counter()
    rows, res = run(args, args.smoke)
    print(f"wall {time.perf_counter() - t0:.1f} s")

    import transformers

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu"
    stack = f"{torch.__version__.split('+')[0]} / {transformers.__version__}"
    if args.out:
        meta = {"date": date, "script": SCRIPT, "device": device, "stack": stack, "arms": res}
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    if args.append and args.smoke:
        print("--append ignored with --smoke: RESULTS.md holds full-size measurements only")
    elif args.append:
        lines = [
            f"| {date} | {SCRIPT} | {device} | {stack} | {r['case']} | {r['metric']} | {r['ours']:.4g} | "
            f"{r['baseline']:.4g} | {r['ratio']:.3f} |"
            for r in rows
        ]
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
