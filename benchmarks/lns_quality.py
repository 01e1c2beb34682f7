"""LayerNorm Scaling quality check (issue 9): pre-train Pre-LN vs LNS Llamas of 12 and 24 layers on the project
corpus at equal tokens, same data order, seed, precision and schedule; report token-weighted validation
perplexity, the layer-pruning curve (perplexity after removing each single block), and the per-layer residual
variance / consecutive-layer angular distance at init and after training.

Setup (spec lns.md, "What a small-scale check should show"): narrow Llamas (hidden 256, 4 heads, intermediate
688, untied), Adam without weight decay and without clipping, cosine to 0.1x peak after linear warm-up (the
official recipe); bf16 autocast with fp32 master weights on GPU for BOTH arms (the paper used pure bf16 weights;
we keep the comparison fair instead). Recorded whatever the outcome.

    python benchmarks/lns_quality.py --corpus corpus_out            # H200: 2 depths x 2 arms x 2 seeds, ~150 s
    python benchmarks/lns_quality.py --smoke                        # CPU, arithmetic texts, tiny sizes, < 60 s
    python benchmarks/lns_quality.py --corpus corpus_out --append --out lns_quality.json

Without `--corpus` (or `--smoke`) the embedded arithmetic texts with the in-code tokenizer are used. Needs only
torch + transformers (no TRL / datasets).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCRIPT = "lns_quality.py"


def _data(args):
    """(train LongTensor [N, T], validation LongTensor [M, T], vocab size, description)."""
    if args.corpus and not args.smoke:
        from hf_plugins.data.corpus import PackedBlocks

        train = PackedBlocks(args.corpus, "train", args.seq_len)
        val = PackedBlocks(args.corpus, "validation", args.seq_len, max_tokens=args.eval_tokens)
        n_train = min(len(train), args.batch_size * args.steps)
        tr = torch.stack([train[i]["input_ids"] for i in range(n_train)])
        va = torch.stack([val[i]["input_ids"] for i in range(len(val))])
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(Path(args.corpus) / "tokenizer"))
        return tr, va, vocab, f"corpus {args.corpus}"
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems
    from hf_plugins.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    n_problems = 300 if args.smoke else 3000
    problems = generate_problems(ArithmeticConfig(seed=0, num_train=n_problems, num_test=0))
    ids = []
    for p in problems:
        ids += tok(p.plain_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = torch.tensor(ids)
    n = len(stream) // args.seq_len
    blocks = stream[: n * args.seq_len].view(n, args.seq_len)
    n_val = min(max(2, n // 10), args.eval_tokens // args.seq_len)
    return blocks[n_val:], blocks[:n_val], len(tok), "arithmetic texts (tiny tokenizer)"


def _model(lns: bool, layers: int, vocab: int, args, seed: int, device):
    from transformers import AutoConfig, AutoModelForCausalLM

    import hf_plugins  # noqa: F401

    fields = {
        "vocab_size": vocab,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": args.heads,
        "max_position_embeddings": max(args.seq_len, 128),
        "tie_word_embeddings": False,  # untied, as the official LLaMA configs
        "initializer_range": 0.02,  # no depth-scaled init
    }
    config = AutoConfig.for_model("lns_llama" if lns else "llama", **fields)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).to(device)


@torch.no_grad()
def _ppl(model, val, args, device, bf16, skip: int | None = None) -> float:
    from hf_plugins.models.lns.diagnostics import _skip_block

    nll, count = 0.0, 0
    ctx = _skip_block(model.model.layers[skip]) if skip is not None else None
    if ctx:
        ctx.__enter__()
    try:
        for start in range(0, len(val), args.batch_size):
            ids = val[start : start + args.batch_size].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=ids, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            nll += float(loss)
            count += ids[:, 1:].numel()
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    return math.exp(nll / count)


def _train(model, train, args, device, bf16, steps: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=0.0)
    warm = max(1, int(steps * args.warmup_ratio))

    def lr_at(s):  # linear warm-up, cosine to 0.1x peak (official training_utils)
        if s < warm:
            return (s + 1) / warm
        t = (s - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses = []
    model.train()
    for s in range(steps):
        idx = torch.arange(s * args.batch_size, (s + 1) * args.batch_size) % len(train)  # same order for both arms
        ids = train[idx].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()  # no gradient clipping (official scripts)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    model.eval()
    return losses


def run(args) -> tuple[list[dict], dict]:
    from hf_plugins.models.lns.diagnostics import depth_report

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    bf16 = device.type == "cuda"
    train, val, vocab, source = _data(args)
    probe = val[: min(len(val), 8)]
    print(f"data: {source}; train blocks {len(train)}, validation blocks {len(val)} of {args.seq_len} tokens")
    results = {}
    for layers in args.depths:
        for lns in (False, True):
            arm = f"{'LNS' if lns else 'Pre-LN'} {layers}L"
            runs = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                model = _model(lns, layers, vocab, args, seed, device)
                init_report = depth_report(model, probe)
                losses = _train(model, train, args, device, bf16, args.steps)
                full = _ppl(model, val, args, device, bf16)
                pruned = [_ppl(model, val[: args.prune_blocks], args, device, bf16, skip=i) for i in range(layers)]
                pruned_full = _ppl(model, val[: args.prune_blocks], args, device, bf16)
                runs.append({
                    "seed": seed, "ppl": full, "final_train_loss": losses[-1], "pruning_full": pruned_full,
                    "pruning": pruned, "depth_init": init_report, "depth_trained": depth_report(model, probe),
                    "seconds": time.perf_counter() - t0,
                })  # fmt: skip
                print(
                    f"{arm:12s} seed {seed}: ppl {full:9.3f}  train loss {losses[-1]:.4f}  ({runs[-1]['seconds']:.0f} s)"
                )
                del model
            results[arm] = runs
    rows = []
    tokens = args.steps * args.batch_size * args.seq_len
    for layers in args.depths:
        pre, lns = results[f"Pre-LN {layers}L"], results[f"LNS {layers}L"]
        case = f"{layers}L x {args.hidden}, {tokens / 1e6:.3g}M tokens, {len(args.seeds)} seeds, {source.split()[0]}"
        mp, ml = statistics.mean(r["ppl"] for r in pre), statistics.mean(r["ppl"] for r in lns)
        rows.append({"case": case, "metric": "val perplexity (mean over seeds)", "ours": ml, "baseline": mp})

        # Mean perplexity increase when removing one block of the deeper half: larger = deep blocks matter more.
        def deep_damage(runs, half=layers // 2):
            return statistics.mean(statistics.mean(r["pruning"][half:]) / r["pruning_full"] for r in runs)

        rows.append({"case": case, "metric": "ppl ratio removing a deep-half block", "ours": deep_damage(lns),
                     "baseline": deep_damage(pre)})  # fmt: skip
        rows.append({"case": case, "metric": "last-layer var / embedding var (trained)",
                     "ours": statistics.mean(r["depth_trained"]["variance"][-1] / r["depth_trained"]["variance"][0] for r in lns),
                     "baseline": statistics.mean(r["depth_trained"]["variance"][-1] / r["depth_trained"]["variance"][0] for r in pre)})  # fmt: skip
    for r in rows:
        r["ratio"] = r["ours"] / r["baseline"]
        print(
            f"{r['case']:48s} {r['metric']:42s} LNS {r['ours']:10.4g}  Pre-LN {r['baseline']:10.4g}  ratio {r['ratio']:.3f}"
        )
    return rows, results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="corpus_out", help="directory written by `hf-plugins corpus build`")
    p.add_argument("--smoke", action="store_true", help="CPU, arithmetic texts, tiny sizes")
    p.add_argument("--depths", type=int, nargs="+", default=None, help="numbers of layers (default 12 24)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per arm")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 300; smoke 6)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (paper: 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (paper, 130M/250M: 1e-3)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="warm-up share of steps (paper: 10%%)")
    p.add_argument("--eval-tokens", type=int, default=262_144, help="validation tokens")
    p.add_argument("--prune-blocks", type=int, default=64, help="validation blocks for the pruning curve")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write rows and per-run details to this JSON file")
    args = p.parse_args()
    if args.smoke:
        args.depths = args.depths or [2, 4]
        args.steps = args.steps or 6
        args.seeds, args.batch_size, args.seq_len, args.prune_blocks = args.seeds[:1], 4, 64, 4
        args.eval_tokens = 16 * 64
        args.hidden, args.intermediate, args.heads = 32, 64, 4
    else:
        args.depths = args.depths or [12, 24]
        args.steps = args.steps or 300
        args.hidden, args.intermediate, args.heads = 256, 688, 4
        if args.corpus and not Path(args.corpus).is_dir():
            print(f"note: {args.corpus} not found; using the embedded arithmetic texts")
            args.corpus = None
    t0 = time.perf_counter()
    rows, details = run(args)
    print(f"wall {time.perf_counter() - t0:.1f} s")

    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
    stack = f"{torch.__version__} / {transformers.__version__}"
    if args.out:
        Path(args.out).write_text(
            json.dumps({"device": device, "stack": stack, "rows": rows, "runs": details}, indent=2) + "\n"
        )
    if args.append:
        date = datetime.date.today().isoformat()
        lines = [
            f"| {date} | {SCRIPT} | {device} | {stack} | {r['case']} | {r['metric']} | {r['ours']:.4g} | "
            f"{r['baseline']:.4g} | {r['ratio']:.3f} |"
            for r in rows
        ]
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
