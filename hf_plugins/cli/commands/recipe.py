"""`hf-plugins recipe srlm`: SFT / KD / RL stages in any order, each a stock TRL trainer (arXiv 2506.13404)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_plugins.cli import common


RECIPES = ("srlm",)


def register(sub) -> None:
    p = sub.add_parser(
        "recipe",
        help="multi-stage training recipes (srlm: SFT, KD and RL stages in any order)",
        description=(
            "Run a recipe on one model. `srlm`: the stages given by --stages (sft, kd, rl, comma-separated, any "
            "order, repeats allowed), each a stock TRL trainer (SFTTrainer; sequence-level KD through SFTTrainer "
            "or logit-level KD through DistillationTrainer / GKDTrainer; GRPOTrainer with exact-answer rewards), "
            "on the embedded SmolLM2-135M-Instruct and arithmetic problems by default. Held-out accuracy is "
            "measured before and after every stage; report.json collects everything. The defaults are small "
            "enough to finish on a 2-core CPU in minutes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("recipe", choices=RECIPES, help="which recipe")
    p.add_argument("--stages", default="sft,kd,rl", help="comma-separated stage kinds: sft, kd, rl")
    p.add_argument("--model", default="smollm2", help="'smollm2', 'tiny' or a local model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--output-dir", default=None, help="run directory (default: runs/srlm-<stages>-<time>)")
    p.add_argument("--handoff", default="memory", choices=["memory", "disk"], help="how stages pass the model on")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    g = p.add_argument_group("data and evaluation")
    g.add_argument("--num-problems", type=int, default=32, help="arithmetic training problems")
    g.add_argument("--eval-size", type=int, default=16, help="held-out problems scored after each stage (0: none)")
    g.add_argument("--eval-max-new-tokens", type=int, default=64, help="greedy generation length for evaluation")
    g.add_argument("--arith-max-ops", type=int, default=2, help="largest number of operations per problem")
    g.add_argument("--arith-max-value", type=int, default=30, help="largest starting quantity / +- operand")
    g = p.add_argument_group("stages (each overridable with --stage-arg STAGE.FIELD=VALUE)")
    g.add_argument("--sft-steps", type=int, default=4, help="optimizer steps of an sft stage")
    g.add_argument("--kd-steps", type=int, default=4, help="optimizer steps of a kd stage")
    g.add_argument("--rl-steps", type=int, default=2, help="optimizer steps of an rl stage")
    g.add_argument("--batch-size", type=int, default=4, help="sequences per step of sft / kd stages")
    g.add_argument(
        "--learning-rate", type=float, default=None, help="every stage's learning rate (default: per stage)"
    )
    g.add_argument("--method", default="full", help="'full' or a registered PEFT method (lora, ...) for every stage")
    g.add_argument("--method-arg", action="append", metavar="KEY=VALUE", help="option of --method (repeatable)")
    g.add_argument("--kd-kind", default="sequence", choices=["sequence", "logit"], help="kind of distillation")
    g.add_argument(
        "--teacher", default="arithmetic", help="'arithmetic' (programmatic), 'smollm2', 'tiny' or a directory"
    )
    g.add_argument("--divergence", default="reverse_kl", choices=["forward_kl", "jsd", "reverse_kl"], help="logit KD")
    g.add_argument("--kd-trainer", default="distillation", choices=["distillation", "gkd"], help="logit KD trainer")
    g.add_argument("--num-generations", type=int, default=4, help="GRPO completions per prompt")
    g.add_argument("--prompts-per-step", type=int, default=2, help="GRPO prompts per optimizer step")
    g.add_argument("--max-completion-length", type=int, default=64, help="GRPO / logit-KD generation length")
    g.add_argument(
        "--stage-arg",
        action="append",
        metavar="STAGE.FIELD=VALUE",
        help="any field of a stage config, e.g. rl.kl_coef=0.04 or sft.trainer_kwargs={'warmup_steps':2}",
    )
    p.set_defaults(func=run)


def build_config(args):
    import time

    from hf_plugins import registry
    from hf_plugins.recipes.srlm import KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig, parse_stages

    stages = parse_stages(args.stages)
    method_opts = registry.parse_options(args.method_arg, "--method-arg")
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
    for key, value in registry.parse_options(args.stage_arg, "--stage-arg").items():
        stage, dot, name = key.partition(".")
        if not dot or stage not in fields:
            raise ValueError(f"--stage-arg expects STAGE.FIELD=VALUE with STAGE in sft, kd, rl; got {key!r}")
        fields[stage][name] = value
    classes = {"sft": SftStageConfig, "kd": KdStageConfig, "rl": RlStageConfig}
    stage_cfgs = {}
    for stage, cls in classes.items():
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields[stage]) - known)
        if unknown:
            raise ValueError(f"--stage-arg: {cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
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


def run(args) -> int:
    from hf_plugins.recipes.srlm import run_srlm

    config = build_config(args)  # validates stage names and fields before the model is loaded
    model, tokenizer = common.load_model(args.model, args.dtype)
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
