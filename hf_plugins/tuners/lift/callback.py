"""`LiftRefreshCallback`: LIFT's mask selection and periodic re-selection under the stock Trainer / SFTTrainer."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from .model import LiftModel


__all__ = ["LiftRefreshCallback", "find_lift_model"]

logger = logging.getLogger(__name__)


def find_lift_model(model) -> LiftModel | None:
    """The `LiftModel` inside `model` (a PeftModel, possibly wrapped by DDP or torch.compile), or None."""
    if isinstance(model, LiftModel):
        return model
    for module in model.modules() if model is not None else ():
        if isinstance(module, LiftModel):
            return module
    return None


class LiftRefreshCallback(TrainerCallback):
    """Selects LIFT masks at `on_train_begin` and re-selects them at `on_step_end` every `update_interval`
    optimizer updates, at the official code's timing: after update T - 1, 2T - 1, ... (`LiftModel.maybe_refresh`;
    gradient accumulation counts real updates), never after the last update. Adam moments of entries that stay are carried over in the
    Trainer's optimizer (accelerate's wrapper is unwrapped). All durable state lives in the adapter, so resuming
    from a checkpoint needs nothing from this callback. Under DDP and FSDP2 every rank selects from whole matrices
    (FSDP2: gathered with `full_tensor`) and rank 0's masks are broadcast (docs/distributed.md).

    Example:

        >>> trainer = SFTTrainer(model=model, args=args, train_dataset=ds, peft_config=LiftConfig(r=16),
        ...                      callbacks=[LiftRefreshCallback()])
    """

    def __init__(self):
        self.refreshes: list[dict] = []  # per refresh: step, seconds, matrices, kept_fraction

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        lift = find_lift_model(model)
        if lift is None:
            logger.warning("LiftRefreshCallback: the trained model has no LIFT adapter; the callback does nothing.")
            return
        stats = lift.initialize_masks(optimizer)
        if stats["matrices"]:
            logger.info("LIFT: selected %d masks in %.2f s", stats["matrices"], stats["seconds"])

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        lift = find_lift_model(model)
        if lift is None:
            return
        stats = lift.maybe_refresh(state.global_step, optimizer, max_steps=state.max_steps)
        if stats is not None:
            self.refreshes.append({"step": state.global_step, **stats})
            logger.info(
                "LIFT: refreshed %d masks at step %d in %.2f s (%.1f%% of entries kept)",
                stats["matrices"],
                state.global_step,
                stats["seconds"],
                100 * stats["kept_fraction"],
            )
