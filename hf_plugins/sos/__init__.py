"""SoS-1K (arXiv 2502.20545): polynomial sum-of-squares data with proved labels, an exact checker, prompts,
boxed-answer parsing, rewards, SFT data and LM evaluation. See docs/sos.md.

Importing this package is cheap: sympy, scipy and cvxpy (the `sos` extra) are imported only when a check needs
them.
"""

from .certificates import (
    ConstantCertificate,
    DualCertificate,
    GramCertificate,
    NewtonCertificate,
    PointCertificate,
    SquaresCertificate,
    TheoryCertificate,
    UnivariateCertificate,
    certificate_from_dict,
    motzkin,
)
from .checker import CheckerConfig, SosLabel, Verdict, check_polynomial
from .evaluation import chat_prompt, evaluate_sos_model, load_eval_items, score_answers, surface_rule
from .generators import (
    CLASS_LABELS,
    CLASS_TABLE3,
    GeneratorConfig,
    SosItem,
    generate_balanced,
    generate_item,
    generate_items,
    generate_splits,
)
from .parse import ParseLimits, PolynomialParseError, TruncatedPolynomialError, parse_polynomial
from .polynomial import Polynomial
from .prompts import PROMPT_STYLES, build_prompt, parse_boxed_answer
from .rewards import make_sos_reward, sos_reward
from .sft import make_grpo_rows, make_sft_rows, reasoning_trace, to_dataset
from .sos1 import check_sos1, default_sos1_path, load_sos1, sos1_proved_labels, summarize_sos1


__all__ = [
    "CLASS_LABELS",
    "CLASS_TABLE3",
    "PROMPT_STYLES",
    "CheckerConfig",
    "ConstantCertificate",
    "DualCertificate",
    "GeneratorConfig",
    "GramCertificate",
    "NewtonCertificate",
    "ParseLimits",
    "PointCertificate",
    "Polynomial",
    "PolynomialParseError",
    "SosItem",
    "SosLabel",
    "SquaresCertificate",
    "TheoryCertificate",
    "TruncatedPolynomialError",
    "UnivariateCertificate",
    "Verdict",
    "build_prompt",
    "certificate_from_dict",
    "chat_prompt",
    "check_polynomial",
    "check_sos1",
    "default_sos1_path",
    "evaluate_sos_model",
    "generate_balanced",
    "generate_item",
    "generate_items",
    "generate_splits",
    "load_eval_items",
    "load_sos1",
    "make_grpo_rows",
    "make_sft_rows",
    "make_sos_reward",
    "motzkin",
    "parse_boxed_answer",
    "parse_polynomial",
    "reasoning_trace",
    "score_answers",
    "sos1_proved_labels",
    "sos_reward",
    "summarize_sos1",
    "surface_rule",
    "to_dataset",
]
