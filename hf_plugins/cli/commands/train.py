"""`hf-plugins train`: fine-tune (or pre-train) a model with the stock Trainer / TRL SFTTrainer and a plugin.

With no flags it runs the main job: LIFT on the embedded SmolLM2-135M-Instruct and the embedded arithmetic problems,
exact-match accuracy before and after; `--compare lora,full` adds those methods side by side in one table.
"""

from __future__ import annotations

from pathlib import Path

from hf_plugins.cli import common
from hf_plugins.cli.arguments import Command


def _parse(argv: list[str]) -> tuple:
    from hf_plugins.cli.train_job import parse_train_args

    return parse_train_args(argv), list(argv)


def run(args, argv: list[str]) -> int:
    from hf_plugins.cli.train_job import compare_args, run_training

    result = run_training(args)
    result.pop("trainer")  # free the model before the next run
    common.print_summary(result)
    if not args.plugins.compare_methods:
        return 0
    results = [result]
    for method in args.plugins.compare_methods:
        print(f"\n--compare: training {method} from the same start ...")
        results.append(run_training(compare_args(args, argv, method), eval_before=result.get("eval_before")))
        results[-1].pop("trainer")
    table = common.comparison_table(results)
    print("\n" + table)
    keys = ("method", "output_dir", "trainable_params", "steps", "train_seconds", "train_loss")
    summary = [
        {**{k: r.get(k) for k in keys}, **{k: r[k]["accuracy"] for k in ("eval_before", "eval_after") if k in r}}
        for r in results
    ]
    common.write_json(Path(args.training.output_dir) / "comparison.json", summary)
    return 0


COMMAND = Command(
    name="train",
    help="fine-tune or pre-train a model with a plugin (the main job: LIFT on SmolLM2, accuracy before/after)",
    parse=_parse,
    run=run,
)
