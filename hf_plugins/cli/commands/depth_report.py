"""`hf-plugins depth-report MODEL`: the curse-of-depth diagnostics (LayerNorm Scaling, arXiv 2502.05795)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_plugins.cli import common


def register(sub) -> None:
    p = sub.add_parser(
        "depth-report",
        help="per-layer residual variance and angular distance (curse of depth)",
        description=(
            "Run MODEL on held-out arithmetic texts and report, per decoder block, the variance of its output "
            "and the angular distance arccos(cos(h_l-1, h_l))/pi to its input, averaged over tokens; optionally "
            "the perplexity after removing each single block. MODEL is 'smollm2', 'tiny' or a local directory."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="'smollm2', 'tiny' or a local model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--num-samples", type=int, default=32, help="held-out arithmetic texts to run")
    p.add_argument("--max-length", type=int, default=128, help="truncate each text to this many tokens")
    p.add_argument("--pruning", action="store_true", help="also the layer-pruning curve (one forward per block)")
    p.add_argument(
        "--compare-lns",
        action="store_true",
        help="also report the same weights with LayerNorm Scaling switched on/off (Llama/Qwen2 families)",
    )
    p.add_argument("--plot", default=None, help="write a plot to this file (png/pdf; needs matplotlib)")
    p.add_argument("--output", default=None, help="write the numbers to this JSON file")
    p.set_defaults(func=run)


def _batch(tokenizer, num_samples: int, max_length: int):
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    problems = generate_problems(ArithmeticConfig(seed=0, num_train=0, num_test=num_samples), split="test")
    tokenizer.padding_side = "right"
    enc = tokenizer(
        [p.plain_text() for p in problems], return_tensors="pt", padding=True, truncation=True, max_length=max_length
    )
    return enc["input_ids"], enc["attention_mask"]


def run(args) -> int:
    from hf_plugins.models.lns import to_lns
    from hf_plugins.models.lns.diagnostics import (
        depth_report,
        format_depth_report,
        layer_pruning_curve,
        plot_depth_reports,
    )

    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    model, tokenizer = common.load_model(args.model, args.dtype)
    input_ids, attention_mask = _batch(tokenizer, args.num_samples, args.max_length)
    variants = {args.model: model}
    if args.compare_lns:
        on = bool(getattr(model.config, "layernorm_scaling", False))
        variants[f"{args.model} (LNS {'off' if on else 'on'})"] = to_lns(model, layernorm_scaling=not on)
    reports, curves = {}, {}
    for name, m in variants.items():
        reports[name] = depth_report(m, input_ids, attention_mask)
        curves[name] = layer_pruning_curve(m, input_ids, attention_mask) if args.pruning else None
        print(
            f"\n{name}: {type(m).__name__}, {reports[name]['num_layers']} blocks, {int(attention_mask.sum())} tokens"
        )
        print(format_depth_report(reports[name], curves[name]))
    if args.plot:
        plot_depth_reports(reports, args.plot, pruning=curves if args.pruning else None)
        print(f"plot written to {args.plot}")
    if args.output:
        common.write_json(Path(args.output), {"reports": reports, "pruning": curves if args.pruning else None})
    return 0
