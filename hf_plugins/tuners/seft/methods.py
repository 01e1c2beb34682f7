"""CLI entries: `--method seft`, `--method lora_star`, `--method sqft` (see docs/seft.md)."""

from __future__ import annotations

from peft import LoraConfig

from ...builtin_methods import LORA_DEFAULTS
from ...registry import register_method
from .baselines import LoraStarCallback, SqftCallback
from .callback import SeftCallback
from .config import SeftConfig


_LORA_STAR_KEYS = ("calib_text", "calib_nsamples", "calib_seqlen", "n_m")
_SQFT_KEYS = ("mask_in_training",)


def _seft(model, options: dict):
    return SeftConfig(**{"task_type": "CAUSAL_LM", **options})


def _seft_callbacks(options: dict):
    return [SeftCallback()]


def _lora(options: dict, own_keys):
    kwargs = {**LORA_DEFAULTS, **{k: v for k, v in options.items() if k not in own_keys}}
    return LoraConfig(**kwargs)


def _lora_star_callbacks(options: dict):
    return [
        LoraStarCallback(
            calib_text=options.get("calib_text"),
            nsamples=int(options.get("calib_nsamples", 32)),
            seqlen=int(options.get("calib_seqlen", 256)),
            n_m=options.get("n_m"),
        )
    ]


def _sqft_callbacks(options: dict):
    return [SqftCallback(mask_in_training=bool(options.get("mask_in_training", True)))]


register_method(
    "seft",
    _seft,
    "SEFT sparse-delta fine-tuning of a pruned model, keeping its sparsity (density=0.01, update_interval=20; "
    "any SeftConfig field via --method-arg)",
    callbacks=_seft_callbacks,
    defaults={"learning_rate": 2e-4},
    paper="arXiv 2505.24037",
)
register_method(
    "lora_star",
    lambda model, options: _lora(options, _LORA_STAR_KEYS),
    "LoRA* baseline: LoRA r=16 on the pruned model, merged and re-pruned with Wanda to the base's sparsity after "
    "training (calib_text=, calib_nsamples=32, calib_seqlen=256, n_m=)",
    callbacks=_lora_star_callbacks,
    defaults={"learning_rate": 1e-3},
)
register_method(
    "sqft",
    lambda model, options: _lora(options, _SQFT_KEYS),
    "SQFT-like baseline: LoRA r=16 whose delta is masked by the base's support in training and at merge "
    "(mask_in_training=True)",
    callbacks=_sqft_callbacks,
    defaults={"learning_rate": 1e-3},
)
