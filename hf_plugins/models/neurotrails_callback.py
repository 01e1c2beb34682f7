"""The NeuroTrails dynamic-sparsity step as a stock-Trainer callback, plus per-trail logging.

Saved with every NeuroTrails checkpoint next to modeling_neurotrails.py (whose `training_callbacks()` returns it), so it
imports only transformers and the config file, never the modeling file: the callback finds the model by its config's
`model_type`, which also recognises a model class loaded as remote code.
"""

from __future__ import annotations

import warnings

from transformers import PreTrainedModel, TrainerCallback

from .configuration_neurotrails import NeuroTrailsConfig


__all__ = ["NeuroTrailsSparsityCallback", "find_neurotrails_model"]


def find_neurotrails_model(model):
    """The outermost NeuroTrails model inside `model` (itself, or wrapped by PEFT / DDP / compile), or None."""
    if model is None:
        return None
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(module, PreTrainedModel) and getattr(config, "model_type", None) == NeuroTrailsConfig.model_type:
            return module
    return None


class NeuroTrailsSparsityCallback(TrainerCallback):
    """Runs `model.sparsity_step` after every optimizer step and logs per-trail statistics.

    `on_optimizer_step` comes after `optimizer.step()` and before `zero_grad()` (transformers' `Trainer`), so the
    step's dense gradients are still in `.grad` for RigL growth. The step index is `state.global_step` (not yet
    incremented there), the decay horizon `state.max_steps` and the topology seed `args.seed`. Masks, optimizer
    moments and the step live in the checkpoint, so a resumed run continues identically with default arguments.

    Logged with the training loss: `trail_{h}_loss`, `trail_{h}_accuracy`, `trail_disagreement` (argmax
    disagreement rate between trails), `trail_kl` (mean pairwise KL of their predictive distributions), averaged
    over the forwards since the last log, and `prune_rate` of the last topology update; with `eval_` prefixes after
    `Trainer.evaluate`. Integrations registered before this callback (report_to) see them only in
    `state.log_history`; insert the callback first (`trainer.callback_handler.callbacks.insert(0, cb)`) if needed.

    Example:

        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[NeuroTrailsSparsityCallback()])
    """

    def __init__(self):
        self._last_rate: float | None = None
        self._warned = False

    def _model(self, model):
        found = find_neurotrails_model(model)
        if found is None and not self._warned:
            self._warned = True
            warnings.warn(
                "NeuroTrailsSparsityCallback found no NeuroTrails model in the trainer: it does nothing.",
                UserWarning,
                stacklevel=3,
            )
        return found

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        nt = self._model(model)
        if nt is not None:
            nt.apply_masks()
            nt.pop_trail_statistics("train")

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        nt = self._model(model)
        if nt is None:
            return
        info = nt.sparsity_step(optimizer, step=state.global_step, total_steps=state.max_steps, seed=args.seed)
        if info is not None:
            self._last_rate = info["prune_rate"]

    def _publish(self, state, logs: dict, stats: dict) -> None:
        logs.update(stats)
        # Trainer.log appended a copy of `logs` to the history before calling us: update that copy too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(stats)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        nt = find_neurotrails_model(model)
        if nt is None or logs is None or any(key.startswith("eval_") for key in logs):
            return
        stats = nt.pop_trail_statistics("train")
        if self._last_rate is not None:
            stats["prune_rate"] = self._last_rate
        self._publish(state, logs, stats)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        nt = find_neurotrails_model(model)
        if nt is None or metrics is None:
            return
        stats = {f"eval_{key}": value for key, value in nt.pop_trail_statistics("eval").items()}
        self._publish(state, metrics, stats)
