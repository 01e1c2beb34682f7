"""The stock baselines every plugin is compared with: `--method full`, `--method lora`, `--optim adamw`."""

from __future__ import annotations

from .registry import register_method, register_optimizer


def _full(model, options: dict):
    if options:
        raise ValueError(f"--method full takes no --method-arg, got {sorted(options)}")


def _lora(model, options: dict):
    from peft import LoraConfig

    kwargs = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
    kwargs.update(options)
    return LoraConfig(**kwargs)


def _adamw(training_args, options: dict):
    if options:
        raise ValueError(
            "--optim adamw is the Trainer's own fused AdamW; set its hyperparameters with --adam-beta1/--adam-beta2/"
            f"--adam-epsilon/--weight-decay, not --optim-arg (got {sorted(options)})"
        )


register_method("full", _full, "full fine-tuning (every parameter trains)", defaults={"learning_rate": 5e-5})
register_method(
    "lora",
    _lora,
    "PEFT LoRA, r=16, alpha=32, all linear layers (override with --method-arg r=8 ...)",
    defaults={"learning_rate": 1e-3},
)
register_optimizer("adamw", _adamw, "the Trainer's default optimizer (fused AdamW)")
