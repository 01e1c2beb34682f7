"""The stock baselines every plugin is compared with: `--method full`, `--method lora`, `--optim adamw`."""

from __future__ import annotations

from .registry import register_method, register_optimizer


# LoRA's CLI defaults: rank 16 on every linear layer of the blocks, alpha = 2r, no dropout, lr 1e-3 (choices for
# small models and short runs, like the main job's baseline).
LORA_DEFAULTS = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "task_type": "CAUSAL_LM",
}


def _full(model, options: dict):
    if options:
        raise ValueError(f"--method full takes no --method_args, got {sorted(options)}")


def _lora(model, options: dict):
    from peft import LoraConfig

    return LoraConfig(**{**LORA_DEFAULTS, **options})


def _adamw(training_args, options: dict):
    if options:
        raise ValueError(
            "--optim adamw is the Trainer's own AdamW; set its hyperparameters with the stock --adam_beta1, "
            f"--adam_beta2, --adam_epsilon and --weight_decay, not --optim_args (got {sorted(options)})"
        )


register_method("full", _full, "full fine-tuning (every parameter trains)", defaults={"learning_rate": 5e-5})
register_method(
    "lora",
    _lora,
    "PEFT LoRA, r=16, alpha=32, all linear layers (override with --method_args r=8 ...)",
    defaults={"learning_rate": 1e-3},
    paper="arXiv 2106.09685",
)
register_optimizer("adamw", _adamw, "the Trainer's own optimizer (the stock --optim default)")
