"""`hf-plugins recipe srlm`: SFT / KD / RL stages in any order, each a stock TRL trainer (arXiv 2506.13404)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hf_plugins.cli.arguments import Command, ModelArguments


def _h(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class SrlmArguments:
    """`hf-plugins recipe srlm` (each stage field also settable with --stage_args STAGE.FIELD=VALUE)."""

    _argument_group_name = "recipe"

    stages: str = field(default="sft,kd,rl", metadata=_h("comma-separated stage kinds: sft, kd, rl"))
    output_dir: str | None = field(default=None, metadata=_h("run directory (default: runs/srlm-<stages>-<time>)"))
    handoff: Literal["memory", "disk"] = field(default="memory", metadata=_h("how stages pass the model on"))
    seed: int = field(default=0, metadata=_h("random seed"))
    bf16: bool = field(default=False, metadata=_h("bf16 mixed precision (GPU)"))
    num_problems: int = field(default=32, metadata=_h("arithmetic training problems"))
    eval_size: int = field(default=16, metadata=_h("held-out problems scored after each stage (0: none)"))
    eval_max_new_tokens: int = field(default=64, metadata=_h("greedy generation length for evaluation"))
    arith_max_ops: int = field(default=2, metadata=_h("largest number of operations per problem"))
    arith_max_value: int = field(default=30, metadata=_h("largest starting quantity / +- operand"))
    sft_steps: int = field(default=4, metadata=_h("optimizer steps of an sft stage"))
    kd_steps: int = field(default=4, metadata=_h("optimizer steps of a kd stage"))
    rl_steps: int = field(default=2, metadata=_h("optimizer steps of an rl stage"))
    batch_size: int = field(default=4, metadata=_h("sequences per step of sft / kd stages"))
    learning_rate: float | None = field(default=None, metadata=_h("every stage's learning rate (default: per stage)"))
    method: str = field(default="full", metadata=_h("'full' or a registered PEFT method (lora, ...) for every stage"))
    method_args: list[str] = field(
        default_factory=list,
        metadata=_h(
            "options of --method, KEY=VALUE ...", metavar="KEY=VALUE", action="extend", aliases=["--method-arg"]
        ),
    )
    kd_kind: Literal["sequence", "logit"] = field(default="sequence", metadata=_h("kind of distillation"))
    teacher: str = field(
        default="arithmetic", metadata=_h("'arithmetic' (programmatic), 'smollm2', 'tiny', a directory or a Hub id")
    )
    divergence: Literal["forward_kl", "jsd", "reverse_kl"] = field(default="reverse_kl", metadata=_h("logit KD"))
    kd_trainer: Literal["distillation", "gkd"] = field(default="distillation", metadata=_h("logit KD trainer"))
    num_generations: int = field(default=4, metadata=_h("GRPO completions per prompt"))
    prompts_per_step: int = field(default=2, metadata=_h("GRPO prompts per optimizer step"))
    max_completion_length: int = field(default=64, metadata=_h("GRPO / logit-KD generation length"))
    stage_args: list[str] = field(
        default_factory=list,
        metadata=_h(
            "any field of a stage config, STAGE.FIELD=VALUE ..., e.g. rl.kl_coef=0.04 or "
            "sft.trainer_kwargs={'warmup_steps':2}",
            metavar="STAGE.FIELD=VALUE",
            action="extend",
            aliases=["--stage-arg"],
        ),
    )


def build_config(args: SrlmArguments):
    import time

    from hf_plugins import registry
    from hf_plugins.recipes.srlm import KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig, parse_stages

    stages = parse_stages(args.stages)
    method_opts = registry.parse_options(args.method_args, "--method_args")
    registry.lookup(registry.METHODS, "--method", args.method)
    common_kw = {"learning_rate": args.learning_rate, "method": args.method, "method_options": method_opts}
    fields = {
        "sft": {**common_kw, "max_steps": args.sft_steps, "per_device_train_batch_size": args.batch_size},
        "kd": {
            **common_kw,
            "max_steps": args.kd_steps,
            "per_device_train_batch_size": args.batch_size,
            "kind": args.kd_kind,
            "teacher": args.teacher,
            "divergence": args.divergence,
            "trainer": args.kd_trainer,
            "max_completion_length": args.max_completion_length,
        },
        "rl": {
            **common_kw,
            "max_steps": args.rl_steps,
            "num_generations": args.num_generations,
            "prompts_per_step": args.prompts_per_step,
            "max_completion_length": args.max_completion_length,
        },
    }
    for key, value in registry.parse_options(args.stage_args, "--stage_args").items():
        stage, dot, name = key.partition(".")
        if not dot or stage not in fields:
            raise ValueError(f"--stage_args expects STAGE.FIELD=VALUE with STAGE in sft, kd, rl; got {key!r}")
        fields[stage][name] = value
    classes = {"sft": SftStageConfig, "kd": KdStageConfig, "rl": RlStageConfig}
    stage_cfgs = {}
    for stage, cls in classes.items():
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields[stage]) - known)
        if unknown:
            raise ValueError(f"--stage_args: {cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
        stage_cfgs[stage] = cls(**fields[stage])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return SrlmConfig(
        stages=stages,
        **stage_cfgs,
        num_problems=args.num_problems,
        eval_size=args.eval_size,
        eval_max_new_tokens=args.eval_max_new_tokens,
        arith_max_ops=args.arith_max_ops,
        arith_max_value=args.arith_max_value,
        handoff=args.handoff,
        output_dir=args.output_dir or f"runs/srlm-{'-'.join(stages) or 'eval'}-{stamp}",
        seed=args.seed,
        bf16=args.bf16,
    )


def run(model_args: ModelArguments, args: SrlmArguments) -> int:
    from hf_plugins.loading import load_model
    from hf_plugins.recipes.srlm import run_srlm

    config = build_config(args)  # validates stage names and fields before the model is loaded
    model, tokenizer = load_model(**model_args.load_kwargs())
    model, report = run_srlm(model, tokenizer, config)
    print()
    print(f"run directory: {report['output_dir']} (report.json)")
    rows = [("base", report.get("eval_before"))] + [
        (f"{s['index']}:{s['stage']}", s.get("eval")) for s in report["stages"]
    ]
    for name, ev in rows:
        if ev is not None:
            print(f"{name:>10}: accuracy {ev['accuracy']:.3f}  strict {ev['strict_accuracy']:.3f}  (n={ev['n']})")
    summary = Path(report["output_dir"]) / "summary.json"
    summary.write_text(json.dumps(dict(rows), indent=2, default=str) + "\n")
    return 0


COMMAND = Command(
    name="recipe",
    help="multi-stage training recipes (srlm: SFT, KD and RL stages in any order)",
    actions=(
        Command(
            "srlm",
            help="SFT / KD / RL stages in any order, each a stock TRL trainer (arXiv 2506.13404)",
            description=(
                "Run the stages given by --stages (sft, kd, rl, comma-separated, any order, repeats allowed) on one "
                "model, each a stock TRL trainer (SFTTrainer; sequence-level KD through SFTTrainer or logit-level KD "
                "through DistillationTrainer / GKDTrainer; GRPOTrainer with exact-answer rewards), on the embedded "
                "SmolLM2-135M-Instruct and arithmetic problems by default. Held-out accuracy is measured before and "
                "after every stage; report.json collects everything. The defaults are small enough to finish on a "
                "2-core CPU in minutes."
            ),
            dataclasses=(ModelArguments, SrlmArguments),
            run=run,
        ),
    ),
)
