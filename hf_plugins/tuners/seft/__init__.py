"""SEFT: Sparsity Evolution Fine-Tuning of pruned LLMs (arXiv 2505.24037) as a PEFT tuner type ("SEFT").

Importing registers `PeftType.SEFT` with PEFT and the CLI methods `seft`, `lora_star` and `sqft`.
"""

from hf_plugins.peft_registration import register_peft_type

from .callback import SeftCallback
from .config import SeftConfig
from .layer import Linear, SeftLayer
from .model import SeftModel


register_peft_type("seft", SeftConfig, SeftModel)

from . import methods  # noqa: E402  (registers --method seft / lora_star / sqft)
from .baselines import LoraStarCallback, SqftCallback, lora_star_merge_, sqft_merge_  # noqa: E402


__all__ = [
    "Linear",
    "LoraStarCallback",
    "SeftCallback",
    "SeftConfig",
    "SeftLayer",
    "SeftModel",
    "SqftCallback",
    "lora_star_merge_",
    "sqft_merge_",
]
