"""`SeftCallback`: runs SEFT's drop / grow / re-prune cycle under the stock `Trainer` / TRL `SFTTrainer`."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from .model import SeftModel


__all__ = ["SeftCallback"]

logger = logging.getLogger(__name__)


def _seft_tuner(model):
    for candidate in (model, getattr(model, "base_model", None), getattr(model, "module", None)):
        if isinstance(candidate, SeftModel):
            return candidate
        inner = getattr(candidate, "base_model", None)
        if isinstance(inner, SeftModel):
            return inner
    return None


class SeftCallback(TrainerCallback):
    """Arms the gradient hooks in `on_step_begin` and runs the cycle in `on_optimizer_step` (the step's gradients
    and the optimizer state are final; `zero_grad` has not run) when `(global_step + 1) % update_interval == 0`.

    Durable state (positions, R, cycle count, the grow window's candidates) lives in the adapter's persistent
    buffers and the optimizer state, so `resume_from_checkpoint` continues exactly with default arguments.

    DDP / FSDP2: the grow and sensitivity hooks see the rank-averaged dense gradient and the cycle reads whole
    matrices and values (`full_tensor` under FSDP2), so every rank makes the same choice (docs/distributed.md)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tuner = _seft_tuner(model)
        if tuner is not None:
            tuner.seft_check_run_length(state.max_steps)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        tuner = _seft_tuner(model)
        if tuner is not None:
            tuner.seft_prepare_step(state.global_step, state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        tuner = _seft_tuner(model)
        if tuner is None:
            return
        out = tuner.seft_after_optimizer_step(optimizer, state.global_step, state.max_steps)
        if out is not None:
            logger.info("SEFT cycle at step %d: %s", state.global_step + 1, out)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        tuner = _seft_tuner(model)
        if tuner is not None:
            tuner.seft_disarm()
