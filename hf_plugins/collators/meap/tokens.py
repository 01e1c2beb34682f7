"""The `[MASK]` token MEAP writes into the inputs: use the tokenizer's, or add one and resize the embeddings."""

from __future__ import annotations

import logging


logger = logging.getLogger(__name__)

DEFAULT_MASK_TOKEN = "[MASK]"  # official MEAP (pre-training and SFT) adds "[MASK]" as an additional special token


def add_mask_token(tokenizer, model=None, mask_token: str = DEFAULT_MASK_TOKEN) -> int:
    """Make sure `tokenizer` has a mask token and `model` an embedding row for it; return its id.

    - If `tokenizer.mask_token` is set, it is used as is (`mask_token` is ignored).
    - Otherwise `mask_token` becomes the tokenizer's mask token (a special token, so it is never split and never
      masked itself). If the string is already in the vocabulary (e.g. a reserved special token such as
      `"<|reserved_special_token_0|>"`), its id is reused and the vocabulary does not grow; otherwise a new id is
      appended, as the official MEAP code does (`[MASK]` as an additional special token, id 32000 on Llama-2).
    - If `model` is given and its input embeddings have no row for the id, `model.resize_token_embeddings` grows
      them (and an untied `lm_head`) to `len(tokenizer)`; transformers initialises new rows to the mean of the
      old ones. `requires_grad` of the old matrices is kept: under LoRA the new row then stays frozen at that
      mean, which still gives MEAP a distinct, fixed mask vector. To train it, add the token before building the
      adapter and pass `LoraConfig(trainable_token_indices=[id])` (PEFT 0.21), or reuse a reserved token.

    All or nothing: the model is resized before the tokenizer changes, so a model that cannot be resized (e.g.
    NeuroTrails, whose several output layers have fixed sizes) raises a `ValueError` saying how to add the token
    before the config is built, and leaves the tokenizer untouched.

    Save the tokenizer with the model: the id must match at inference time.

    Example:

        >>> from hf_plugins import DataCollatorForMEAP, add_mask_token
        >>> add_mask_token(tokenizer, model)  # no-op for a tokenizer that already has a mask token
        >>> collator = DataCollatorForMEAP(tokenizer=tokenizer)
    """
    if not hasattr(tokenizer, "mask_token"):
        raise TypeError(f"`tokenizer` must be a transformers tokenizer, got {type(tokenizer).__name__}.")
    if model is not None and not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"`model` must be a transformers model (or None), got {type(model).__name__}.")
    if tokenizer.mask_token is None:
        if not mask_token:
            raise ValueError(f"`mask_token` must be a non-empty string, got {mask_token!r}.")
        existing = tokenizer.get_vocab().get(mask_token)
        # The rows the model needs once the token is added: a new token takes the next id.
        needed = max(len(tokenizer), existing + 1) if existing is not None else len(tokenizer) + 1
        if model is not None:
            _resize_for_mask_token(model, needed, mask_token)
        tokenizer.add_special_tokens({"mask_token": mask_token})
        logger.info(
            "MEAP: set %r as the tokenizer's mask token (id %d, %s)",
            mask_token,
            tokenizer.mask_token_id,
            "existing vocabulary entry" if existing is not None else "new token",
        )
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(f"The tokenizer did not assign an id to the mask token {tokenizer.mask_token!r}.")
    if model is not None:
        _resize_for_mask_token(model, max(len(tokenizer), mask_id + 1), tokenizer.mask_token)
    return mask_id


def _resize_for_mask_token(model, rows_needed: int, mask_token: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if rows >= rows_needed:
        return
    try:
        model.resize_token_embeddings(rows_needed)
    except NotImplementedError as err:  # e.g. NeuroTrails: fixed-size embedding and trail heads
        raise ValueError(
            f"MEAP needs an embedding row for the mask token {mask_token!r}, but the model has "
            f"{rows} rows and cannot grow: {err} Add the token to the tokenizer first (`add_mask_token(tokenizer)`) "
            "and build the config with `vocab_size=len(tokenizer)`, or pass `mask_token_id=` of a token already in "
            "the vocabulary."
        ) from None
    trainable = model.get_input_embeddings().weight.requires_grad
    logger.warning(
        "MEAP: resized the token embeddings from %d to %d rows for the mask token %r%s",
        rows,
        rows_needed,
        mask_token,
        "" if trainable else "; the embedding matrix is frozen, so the new row keeps its mean initialisation",
    )


def check_mask_token_id(mask_token_id: int | None, tokenizer) -> int:
    """The id the collator writes: explicit, else the tokenizer's; a clear error when there is none."""
    if mask_token_id is None and tokenizer is not None:
        mask_token_id = tokenizer.mask_token_id
    if mask_token_id is None:
        raise ValueError(
            "MEAP needs a mask token, but the tokenizer has none (`tokenizer.mask_token_id is None`) and no "
            "`mask_token_id` was passed. Call `hf_plugins.add_mask_token(tokenizer, model)` first: it adds '[MASK]' "
            "as a special token and resizes the model's embeddings (or pass `mask_token_id=` of an existing token)."
        )
    if not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(f"`mask_token_id` must be a non-negative integer, got {mask_token_id!r}.")
    if tokenizer is not None and mask_token_id >= len(tokenizer):
        raise ValueError(
            f"`mask_token_id`={mask_token_id} is outside the tokenizer's vocabulary ({len(tokenizer)} tokens)."
        )
    return mask_token_id
