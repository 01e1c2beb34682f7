"""MEAP: Mask-Enhanced Autoregressive Prediction (arXiv 2502.07490) as a data collator. See docs/meap.md."""

from . import cli  # registers `--collator meap`
from .callback import MEAPCallback, find_meap_collator
from .collator import DataCollatorForMEAP, MaskRatioSchedule
from .tokens import add_mask_token


__all__ = ["DataCollatorForMEAP", "MEAPCallback", "MaskRatioSchedule", "add_mask_token", "find_meap_collator"]
