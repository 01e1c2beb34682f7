"""`hf-plugins train`: fine-tune (or pre-train) a model with the stock Trainer / TRL SFTTrainer and a plugin."""

from __future__ import annotations

import argparse

from hf_plugins.cli import common


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune or pre-train a model with a plugin (the main job)",
        description=(
            "Fine-tune a causal LM with the stock TRL SFTTrainer (or pre-train from scratch with the stock "
            "Trainer when --model-config is given) and one plugin per slot: --method (PEFT tuner or full), "
            "--optim (optimizer), --collator (data collator). With no model or data flags it fine-tunes the "
            "embedded SmolLM2-135M-Instruct on the embedded arithmetic problems and prints exact-match "
            "accuracy before and after. Writes a run directory: run_config.json, metrics.json, the "
            "adapter or model under model/."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_args(p)
    common.add_data_args(p)
    common.add_plugin_args(p)
    common.add_training_args(p)
    common.add_eval_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from hf_plugins.cli.train_job import run_training

    result = run_training(args)
    common.print_summary(result)
    return 0
