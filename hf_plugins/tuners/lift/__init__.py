"""LIFT (arXiv 2506.00772) as a PEFT tuner type: `get_peft_model(model, LiftConfig(...))`.

Importing this package registers the PEFT type "LIFT" and the CLI entry `--method lift`.
"""

from hf_plugins.peft_registration import register_peft_type
from hf_plugins.registry import register_method

from .callback import LiftRefreshCallback, find_lift_model
from .config import LiftConfig
from .layer import LiftLayer, Linear, select_masks
from .model import LIFT_TARGET_MODULES, LiftModel
from .selection import low_rank_approximation, select_principal_indices


register_peft_type("lift", LiftConfig, LiftModel)


def _cli_config(model, options: dict) -> LiftConfig:
    # LoRA-r16-equivalent budget by default, like `--method lora`; everything else is LiftConfig's defaults.
    kwargs = {"r": 16, "task_type": "CAUSAL_LM", **options}
    return LiftConfig(**kwargs)


register_method(
    "lift",
    _cli_config,
    "LIFT: train the principal weights (top-k of a rank-r approximation), k = LoRA-r16 budget, re-selected every "
    "400 updates (override with --method-arg r=... update_interval=... lra_rank=...)",
    callbacks=lambda options: [LiftRefreshCallback()],
    # lr 1e-3, not the paper's 2e-4 (Tables 5-6: r=128 on 1B-8B models, ~2,000 updates): at the CLI's r=16 on a
    # 135M model and tens of updates (the main job on a CPU) larger steps learn more; benchmarks/lift_quality.py's
    # grid on SmolLM2-135M picked 1e-3 over 2e-4 by validation accuracy (benchmarks/RESULTS.md, 2026-11-29).
    # Betas (0.9, 0.95) and eps 1e-6: the official sparseAdam.
    defaults={"learning_rate": 1e-3, "adam_beta2": 0.95, "adam_epsilon": 1e-6},
    paper="arXiv 2506.00772",
)

__all__ = [
    "LIFT_TARGET_MODULES",
    "LiftConfig",
    "LiftLayer",
    "LiftModel",
    "LiftRefreshCallback",
    "Linear",
    "find_lift_model",
    "low_rank_approximation",
    "select_masks",
    "select_principal_indices",
]
