"""Argument groups shared by `hf-plugins` subcommands, and model/data loading from those arguments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _registry_help(table) -> str:
    import hf_plugins  # noqa: F401  (fills the registries)

    return "; ".join(f"{e.name}: {e.help}" for e in table.values())


def add_model_args(p: argparse.ArgumentParser) -> None:
    from hf_plugins import registry

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (the embedded SmolLM2-135M-Instruct), 'tiny' (a tiny random Llama with an in-code "
        "tokenizer, for smoke tests), or a local directory saved with save_pretrained",
    )
    g.add_argument(
        "--model-config",
        default=None,
        help="pre-train from scratch with a registered model config instead of fine-tuning --model. Known: "
        + _registry_help(registry.MODEL_CONFIGS),
    )
    g.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of --model-config (repeatable), e.g. --model-arg num_hidden_layers=4",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer for --model-config runs: 'smollm2' (default), 'tiny', or a local directory",
    )
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="arithmetic",
        help="'arithmetic' (embedded word problems) or a local .jsonl/.json file with 'messages', "
        "'prompt'/'completion' or 'text' columns",
    )
    g.add_argument("--train-size", type=int, default=400, help="arithmetic training problems to generate")
    g.add_argument("--arith-seed", type=int, default=0, help="seed of the arithmetic problem generator")
    g.add_argument("--arith-max-ops", type=int, default=2, help="largest number of operations per problem")
    g.add_argument("--arith-max-value", type=int, default=30, help="largest starting quantity / +- operand")
    g.add_argument("--max-length", type=int, default=256, help="truncate training sequences to this many tokens")


def add_plugin_args(p: argparse.ArgumentParser) -> None:
    from hf_plugins import registry

    g = p.add_argument_group("plugins")
    g.add_argument(
        "--method",
        default=None,
        help="tuning method (default: lora when fine-tuning, full with --model-config). Known: "
        + _registry_help(registry.METHODS),
    )
    g.add_argument("--method-arg", action="append", metavar="KEY=VALUE", help="option of --method (repeatable)")
    g.add_argument("--optim", default="adamw", help="optimizer. Known: " + _registry_help(registry.OPTIMIZERS))
    g.add_argument("--optim-arg", action="append", metavar="KEY=VALUE", help="option of --optim (repeatable)")
    g.add_argument(
        "--collator",
        default="default",
        help="data collator; 'default' keeps the trainer's own. Known: " + _registry_help(registry.COLLATORS),
    )
    g.add_argument("--collator-arg", action="append", metavar="KEY=VALUE", help="option of --collator (repeatable)")


def add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (each maps onto the TrainingArguments / SFTConfig field of the same name)")
    g.add_argument("--output-dir", default=None, help="run directory (default: runs/<method>-<time>)")
    g.add_argument("--max-steps", type=int, default=40, help="optimizer steps (-1: use --num-train-epochs)")
    g.add_argument("--num-train-epochs", type=float, default=1.0, help="epochs when --max-steps is -1")
    g.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: the method's)")
    g.add_argument("--per-device-train-batch-size", type=int, default=4, help="batch size per device")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay")
    g.add_argument("--warmup-steps", type=int, default=2, help="linear warm-up steps")
    g.add_argument("--lr-scheduler-type", default="linear", help="learning-rate schedule")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0 disables)")
    g.add_argument("--logging-steps", type=int, default=5, help="log every N steps")
    g.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: no checkpoints)")
    g.add_argument("--resume-from-checkpoint", default=None, help="checkpoint directory to resume from")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument(
        "--ta",
        action="append",
        metavar="KEY=VALUE",
        help="any other TrainingArguments/SFTConfig field (repeatable), e.g. --ta adam_beta2=0.95",
    )


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation (arithmetic exact match)")
    g.add_argument("--eval-size", type=int, default=64, help="held-out problems to score (0 disables)")
    g.add_argument("--eval-batch-size", type=int, default=32, help="generation batch size")
    g.add_argument("--max-new-tokens", type=int, default=96, help="generation length")
    g.add_argument("--no-eval-before", action="store_true", help="skip the evaluation before training")


def load_tokenizer(name: str | None):
    if name in (None, "smollm2"):
        from transformers import AutoTokenizer

        from hf_plugins.models.smollm2 import SMOLLM2_GGUF, smollm2_path

        tok = AutoTokenizer.from_pretrained(smollm2_path(), gguf_file=SMOLLM2_GGUF)
    elif name == "tiny":
        from hf_plugins.testing import tiny_tokenizer

        tok = tiny_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: str = "float32"):
    """`(model, tokenizer)` for `--model`."""
    import torch
    from transformers import AutoModelForCausalLM

    import hf_plugins  # noqa: F401  (our model types must be registered before loading a local directory)

    torch_dtype = getattr(torch, dtype)
    if name == "smollm2":
        from hf_plugins.models.smollm2 import load_smollm2

        return load_smollm2(dtype=torch_dtype)
    if name == "tiny":
        from hf_plugins.testing import tiny_model

        model, tok = tiny_model("llama", dtype=torch_dtype), load_tokenizer("tiny")
        return model, tok
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {name!r} is neither 'smollm2', 'tiny' nor a local directory")
    if (path / "adapter_config.json").exists():
        raise ValueError(f"{path} holds an adapter; pass the base with --model and the adapter with --adapter")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model, load_tokenizer(str(path))


def print_summary(result: dict) -> None:
    before, after = result.get("eval_before"), result.get("eval_after")
    print()
    print(f"run directory: {result['output_dir']}")
    if result.get("train_loss") is not None:
        print(f"train loss: {result['train_loss']:.4f} over {result['steps']} steps ({result['train_seconds']:.0f} s)")
    if before is not None:
        print(f"accuracy before: {before['accuracy']:.3f} ({before['correct']}/{before['n']})")
    if after is not None:
        print(f"accuracy after:  {after['accuracy']:.3f} ({after['correct']}/{after['n']})")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
