"""`hf-plugins train --collator meap`: wrap the trainer's own collator in `DataCollatorForMEAP`."""

from __future__ import annotations

import dataclasses
import logging

from hf_plugins.registry import register_collator

from .callback import MEAPCallback
from .collator import DataCollatorForMEAP, MaskRatioSchedule
from .tokens import DEFAULT_MASK_TOKEN, add_mask_token


logger = logging.getLogger(__name__)

_COLLATOR_OPTIONS = {f.name for f in dataclasses.fields(DataCollatorForMEAP) if f.init} - {
    "base",
    "tokenizer",
    "return_tensors",
    "enabled",
}
_SCHEDULE_OPTIONS = {"mask_ratio_start", "mask_ratio_batches", "mask_ratio_schedule"}


def build_meap_collator(tokenizer, model, options: dict) -> DataCollatorForMEAP:
    """Registry builder. `options["base"]` is the trainer's collator (TRL's for SFT -> `mode="sft"`, transformers'
    `DataCollatorForLanguageModeling` for pre-training -> `mode="pretrain"`; override with `mode=`).

    Other options: the `DataCollatorForMEAP` fields (`mask_ratio`, `sft_mode`, `min_answer_length`, `seed`, ...),
    `mask_token` (string used when the tokenizer has none; default "[MASK]": added and the embeddings resized),
    and a ramp `mask_ratio_start` -> `mask_ratio` over `mask_ratio_batches` batches (`mask_ratio_schedule`:
    "linear" or "cosine")."""
    options = dict(options)
    base = options.pop("base", None)
    mask_token = options.pop("mask_token", DEFAULT_MASK_TOKEN)
    unknown = sorted(set(options) - _COLLATOR_OPTIONS - _SCHEDULE_OPTIONS)
    if unknown:
        raise ValueError(
            f"--collator meap got unknown options {unknown}; known: "
            f"{sorted(_COLLATOR_OPTIONS | _SCHEDULE_OPTIONS | {'mask_token'})}"
        )
    if "mode" not in options:
        options["mode"] = "sft" if base is not None and type(base).__module__.startswith("trl") else "pretrain"
    if {"mask_ratio_start", "mask_ratio_batches"} & set(options):
        end = options.pop("mask_ratio", 0.15 if options["mode"] == "pretrain" else 0.1)
        options["mask_ratio"] = MaskRatioSchedule(
            start=options.pop("mask_ratio_start", 0.0),
            end=end,
            num_batches=options.pop("mask_ratio_batches", 1000),
            kind=options.pop("mask_ratio_schedule", "linear"),
        )
    if options.get("mask_token_id") is None:
        add_mask_token(tokenizer, model, mask_token)
    collator = DataCollatorForMEAP(base=base, tokenizer=tokenizer, **options)
    logger.warning(
        "MEAP: mode=%s, mask token id %d, mask ratio %s%s",
        collator.mode,
        collator.mask_token_id,
        collator.mask_ratio,
        f", sft_mode={collator.sft_mode}" if collator.mode == "sft" else "",
    )
    return collator


register_collator(
    "meap",
    build_meap_collator,
    "MEAP (arXiv 2502.07490): mask a fraction of input tokens, keep next-token targets; wraps the trainer's "
    "collator (pre-training: mask_ratio=0.15; SFT: 0.1, sft_mode=separate_rows|concat); adds [MASK] if needed",
    callbacks=lambda options: [MEAPCallback()],
    paper="arXiv 2502.07490",
)
