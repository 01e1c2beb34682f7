"""LIFT (arXiv 2506.00772) as a PEFT tuner type: `get_peft_model(model, LiftConfig(...))`.

Importing this package registers the PEFT type "LIFT" and the CLI entry `--method lift`.
"""

from hf_plugins.peft_registration import register_peft_type
from hf_plugins.registry import register_method

from .callback import LiftRefreshCallback, find_lift_model
from .config import LiftConfig
from .layer import LiftLayer, Linear, select_masks
from .model import LiftModel
from .selection import low_rank_approximation, select_principal_indices


register_peft_type("lift", LiftConfig, LiftModel)


def _cli_config(model, options: dict) -> LiftConfig:
    # LiftConfig's defaults (r=128, the paper's budget) unless --method_args says otherwise.
    return LiftConfig(**{"task_type": "CAUSAL_LM", **options})


register_method(
    "lift",
    _cli_config,
    "LIFT: train the principal weights (top-k of a rank-r approximation), k = (m+n)*r per matrix with r=128 "
    "(paper), re-selected every 400 updates (override with --method_args r=16 update_interval=... lra_rank=...)",
    callbacks=lambda options: [LiftRefreshCallback()],
    # lr 2e-4: paper Table 5-6 (MATH-10K, Llama-3.2-1B); betas (0.9, 0.95) and eps 1e-6: the official optimizer's
    # settings (it adds eps before bias correction, torch's AdamW after it: docs/lift.md, Quick start).
    defaults={"learning_rate": 2e-4, "adam_beta2": 0.95, "adam_epsilon": 1e-6},
    paper="arXiv 2506.00772",
)

__all__ = [
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
