"""`hf-plugins depth-report MODEL`: the curse-of-depth diagnostics (LayerNorm Scaling, arXiv 2502.05795)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hf_plugins.cli import common
from hf_plugins.cli.arguments import Command, ModelArguments


@dataclass
class DepthReportArguments:
    _argument_group_name = "report"

    num_samples: int = field(default=32, metadata={"help": "held-out arithmetic texts to run"})
    max_length: int = field(default=128, metadata={"help": "truncate each text to this many tokens"})
    pruning: bool = field(default=False, metadata={"help": "also the layer-pruning curve (one forward per block)"})
    compare_lns: bool = field(
        default=False,
        metadata={
            "help": "also report the same weights with LayerNorm Scaling switched on/off (Llama/Qwen2 families)"
        },
    )
    plot: str | None = field(default=None, metadata={"help": "write a plot to this file (png/pdf; needs matplotlib)"})
    output: str | None = field(default=None, metadata={"help": "write the numbers to this JSON file"})

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {self.num_samples}")


def _batch(tokenizer, num_samples: int, max_length: int):
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    problems = generate_problems(ArithmeticConfig(seed=0, num_train=0, num_test=num_samples), split="test")
    tokenizer.padding_side = "right"
    enc = tokenizer(
        [p.plain_text() for p in problems], return_tensors="pt", padding=True, truncation=True, max_length=max_length
    )
    return enc["input_ids"], enc["attention_mask"]


def run(model_args: ModelArguments, args: DepthReportArguments) -> int:
    from hf_plugins.loading import load_model
    from hf_plugins.models.lns import to_lns
    from hf_plugins.models.lns.diagnostics import (
        depth_report,
        format_depth_report,
        layer_pruning_curve,
        plot_depth_reports,
    )

    model, tokenizer = load_model(**model_args.load_kwargs())
    input_ids, attention_mask = _batch(tokenizer, args.num_samples, args.max_length)
    name = model_args.model
    variants = {name: model}
    if args.compare_lns:
        on = bool(getattr(model.config, "layernorm_scaling", False))
        variants[f"{name} (LNS {'off' if on else 'on'})"] = to_lns(model, layernorm_scaling=not on)
    reports, curves = {}, {}
    for key, m in variants.items():
        reports[key] = depth_report(m, input_ids, attention_mask)
        curves[key] = layer_pruning_curve(m, input_ids, attention_mask) if args.pruning else None
        print(f"\n{key}: {type(m).__name__}, {reports[key]['num_layers']} blocks, {int(attention_mask.sum())} tokens")
        print(format_depth_report(reports[key], curves[key]))
    if args.plot:
        plot_depth_reports(reports, args.plot, pruning=curves if args.pruning else None)
        print(f"plot written to {args.plot}")
    if args.output:
        common.write_json(Path(args.output), {"reports": reports, "pruning": curves if args.pruning else None})
    return 0


COMMAND = Command(
    name="depth-report",
    help="per-layer residual variance and angular distance (curse of depth)",
    description=(
        "Run MODEL on held-out arithmetic texts and report, per decoder block, the variance of its output and the "
        "angular distance arccos(cos(h_l-1, h_l))/pi to its input, averaged over tokens; optionally the perplexity "
        "after removing each single block."
    ),
    dataclasses=(ModelArguments, DepthReportArguments),
    positionals=(("model", "'smollm2', 'tiny', a local model directory or a Hub id"),),
    run=run,
)
