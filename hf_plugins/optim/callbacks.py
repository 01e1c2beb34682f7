"""A Trainer callback that adds an optimizer's own diagnostics (`pop_stats()`) to the Trainer's logs."""

from __future__ import annotations

from transformers import TrainerCallback


__all__ = ["OptimizerStatsCallback", "unwrap_optimizer"]


def unwrap_optimizer(optimizer):
    """The optimizer inside accelerate's `AcceleratedOptimizer` (and similar wrappers)."""
    seen = 0
    while optimizer is not None and not hasattr(optimizer, "pop_stats") and hasattr(optimizer, "optimizer"):
        optimizer, seen = optimizer.optimizer, seen + 1
        if seen > 8:
            break
    return optimizer


class OptimizerStatsCallback(TrainerCallback):
    """At every logging step, read `optimizer.pop_stats()` (StableSPAM: clipped entries and the AdaGN factor;
    AlphaDecay: alpha and decay summaries) and add the values to the logs.

    The Trainer appends a copy of the logs to `state.log_history` before calling `on_log`, so the values are also
    written into that entry; logging integrations that run before this callback (those of `report_to`) do not see
    them unless this callback is inserted first: `trainer.callback_handler.callbacks.insert(0, callback)`.
    """

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if logs is None or opt is None or not hasattr(opt, "pop_stats"):
            return
        if "loss" not in logs:  # evaluation / end-of-training summaries
            return
        stats = opt.pop_stats()
        logs.update(stats)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(stats)
