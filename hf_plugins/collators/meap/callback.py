"""`MEAPCallback`: unmasked evaluation, resumable mask streams and masked-token logging for the Trainer."""

from __future__ import annotations

from transformers import TrainerCallback

from .collator import DataCollatorForMEAP


def find_meap_collator(obj, depth: int = 4) -> DataCollatorForMEAP | None:
    """The `DataCollatorForMEAP` behind a dataloader or a wrapping collator (e.g. the Trainer's
    `RemoveColumnsCollator`), or None."""
    for _ in range(depth):
        if obj is None or isinstance(obj, DataCollatorForMEAP):
            return obj
        obj = getattr(obj, "collate_fn", None) or getattr(obj, "data_collator", None)
    return obj if isinstance(obj, DataCollatorForMEAP) else None


class MEAPCallback(TrainerCallback):
    """
    Trainer callback for `DataCollatorForMEAP`; the Trainer uses one collator for training and evaluation, but
    MEAP's validation is unmasked (official pre-training code).

    - `on_train_begin`: masking on (off until the first `on_evaluate` with `eval_on_start`); the collator's batch
      counter is set to `global_step * gradient_accumulation_steps`, so after `resume_from_checkpoint` the masks
      continue the uninterrupted run's stream (the Trainer skips consumed batches without collating them).
    - `on_step_end`: masking off when `control.should_evaluate` is set (the default flow callback, which runs
      first, has decided it); batches of the next step were already collated by then.
    - `on_evaluate`: masking back on. `on_train_end`: masking off (later `trainer.evaluate()` calls are unmasked).
    - `on_log`: adds `meap_masked_tokens`, `meap_mask_fraction` (masked / eligible) and `meap_mask_ratio` over
      the batches collated since the last log to the training logs and to `state.log_history`. Logging
      integrations that run before this callback (e.g. `report_to`) do not see them.

    The collator is found through the training dataloader (`collate_fn`), or pass it explicitly. With
    `dataloader_num_workers > 0` the workers hold copies: switching and counters do not reach them.
    """

    def __init__(self, collator: DataCollatorForMEAP | None = None):
        self.collator = collator
        self._last = (0, 0, 0)

    def _resolve(self, kwargs) -> DataCollatorForMEAP | None:
        if self.collator is None:
            self.collator = find_meap_collator(kwargs.get("train_dataloader"))
        return self.collator

    def on_train_begin(self, args, state, control, **kwargs):
        collator = self._resolve(kwargs)
        if collator is not None:
            collator.enabled = not args.eval_on_start
            collator.num_batches = state.global_step * args.gradient_accumulation_steps
            self._last = (collator.num_batches, collator.num_masked_tokens, collator.num_eligible_tokens)

    def on_step_end(self, args, state, control, **kwargs):
        if self.collator is not None and control.should_evaluate:
            self.collator.enabled = False

    def on_evaluate(self, args, state, control, **kwargs):
        if self.collator is not None:
            self.collator.enabled = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.collator is not None:
            self.collator.enabled = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        collator = self.collator
        if collator is None or logs is None or "loss" not in logs:
            return
        batches, masked, eligible = collator.num_batches, collator.num_masked_tokens, collator.num_eligible_tokens
        d_masked, d_eligible = masked - self._last[1], eligible - self._last[2]
        if batches == self._last[0]:
            return
        extra = {
            "meap_masked_tokens": d_masked,
            "meap_mask_fraction": d_masked / d_eligible if d_eligible else 0.0,
            "meap_mask_ratio": collator.last_mask_ratio,
        }
        self._last = (batches, masked, eligible)
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(extra)
