"""SRLM (arXiv 2506.13404 v3, CPAL 2026): SFT, knowledge distillation and GRPO stages, in any order, each a
stock TRL trainer. TRL and datasets are imported only when a stage runs."""

from .config import DIVERGENCES, STAGE_KINDS, KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig, parse_stages
from .kd import check_same_vocabulary, logit_kd_loss
from .pipeline import evaluate_arithmetic, run_srlm
from .teacher import ArithmeticTeacher, sample_teacher_solutions


__all__ = [
    "DIVERGENCES",
    "STAGE_KINDS",
    "ArithmeticTeacher",
    "KdStageConfig",
    "RlStageConfig",
    "SftStageConfig",
    "SrlmConfig",
    "check_same_vocabulary",
    "evaluate_arithmetic",
    "logit_kd_loss",
    "parse_stages",
    "run_srlm",
    "sample_teacher_solutions",
]
