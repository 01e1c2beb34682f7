"""`LiftModel`: the PEFT tuner of LIFT (arXiv 2506.00772)."""

from __future__ import annotations

import warnings
import weakref

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._sparse_delta_tuner import SparseDeltaTuner
from .layer import LiftLayer, Linear, select_masks


__all__ = ["LiftModel"]


class LiftModel(SparseDeltaTuner, BaseTuner):
    """LIFT tuner: trains the principal weights (top-k of a rank-q approximation) of every target matrix.

    Created by `get_peft_model(model, LiftConfig(...))`. Masks are selected before training starts
    (`LiftRefreshCallback.on_train_begin`, `initialize_masks()`, or lazily on a layer's first training-mode
    forward) and re-selected every `update_interval` optimizer updates, at the official code's timing (after update
    T - 1, 2T - 1, ...; see `maybe_refresh`): by `LiftRefreshCallback` under the stock `Trainer`/`SFTTrainer`, by
    `maybe_refresh(updates_done, optimizer)` in custom loops.

    Example:

        >>> from peft import get_peft_model
        >>> from hf_plugins import LiftConfig
        >>> model = get_peft_model(base, LiftConfig(r=16, update_interval=100, task_type="CAUSAL_LM"))
        >>> model.initialize_masks()
        >>> for step, batch in enumerate(loader, 1):  # step = optimizer updates done
        ...     model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()
        ...     model.maybe_refresh(step, optimizer)  # carries Adam moments of entries that stay
    """

    prefix: str = "lift_"
    tuner_layer_cls = LiftLayer
    recorded_sizes = (("residual_sizes", "lift_residual_indices"),)

    def _create_and_replace(self, lift_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, torch.nn.Linear):
            raise TypeError(
                f"LIFT supports torch.nn.Linear targets only; `{current_key}` is a {type(base).__name__}. Remove it "
                "from `target_modules` or add it to `exclude_modules`."
            )
        k, _ = lift_config.budget(base.out_features, base.in_features)
        if k == base.weight.numel() and not lift_config.inference_mode:
            self._note_target(
                current_key,
                "get a budget of every entry (k = m·n): LIFT then trains all of their weights, i.e. full fine-tuning "
                "plus the index memory. Lower `r` so that r·(m + n) < m·n (or `density` below 1).",
            )
        residual_size = self.recorded_size(lift_config, "residual_sizes", current_key)
        if isinstance(target, LiftLayer):
            target.update_layer(adapter_name, lift_config, residual_size=residual_size)
            target.sparse_name = current_key
            self._attach_weight_cache(target, adapter_name, lift_config)
            return
        new_module = Linear(target, adapter_name, lift_config, residual_size=residual_size)
        new_module.sparse_name = current_key
        self._attach_weight_cache(new_module, adapter_name, lift_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an additional adapter is not trainable until set_adapter
        self._replace_module(parent, target_name, new_module, target)
        _watch(self)

    # -- masks ------------------------------------------------------------------------------------------------
    def _trainable_adapters(self) -> list[str]:
        """The active adapters that train (not loaded for inference): the only ones a selection may touch by
        default, since re-selecting a frozen adapter would rewrite (and with `on_leave="reset"` change) it."""
        return [a for a in self.active_adapters if a in self.peft_config and not self.peft_config[a].inference_mode]

    def _pairs(self, adapter_names=None) -> list[tuple[LiftLayer, str]]:
        if adapter_names is None:
            adapter_names = self._trainable_adapters()
        elif isinstance(adapter_names, str):
            adapter_names = [adapter_names]
        pairs = []
        for module in self.model.modules():
            if isinstance(module, LiftLayer):
                pairs.extend((module, a) for a in adapter_names if a in module.lift_values)
        return pairs

    def initialize_masks(self, optimizer=None, adapter_names=None) -> dict[str, float]:
        """Select the mask of every layer that has none yet (a loaded adapter already has its masks), for the active
        trainable adapters or the `adapter_names` given.

        Call before training in custom loops (under the stock Trainer `LiftRefreshCallback` does it)."""
        return select_masks(self._pairs(adapter_names), optimizer, only_pending=True)

    def refresh_masks(self, optimizer=None, adapter_names=None) -> dict[str, float]:
        """Re-select every mask of the active trainable adapters (or of `adapter_names`) from the current weights
        (paper Alg. 1).

        Entries that stay keep their value and their Adam moments; new entries start at zero moments; leaving
        entries follow `on_leave`. The optimizer's step counter is untouched. `optimizer` defaults to the
        optimizer that last stepped these parameters (moments left in place would belong to other entries after
        the refresh). Returns `{"seconds", "matrices", "kept_fraction"}`."""
        if optimizer is None:
            last = self.__dict__.get("_lift_last_optimizer")
            optimizer = last() if last is not None else None
        stats = select_masks(self._pairs(adapter_names), optimizer)
        self.__dict__["_lift_updates_since_refresh"] = 0
        return stats

    def maybe_refresh(self, global_step: int, optimizer=None, max_steps: int | None = None) -> dict | None:
        """Refresh the adapters due after update number `global_step` (1-based: the number of optimizer updates done),
        except after the last update (`max_steps`). Used by `LiftRefreshCallback`.

        Timing of the official code (`sparseAdam.py`: its update counter is incremented after each update, then the
        masks are re-selected when `(counter + 1) % update_interval == 0`): after updates T - 1, 2T - 1, 3T - 1, ...
        for `update_interval` T, i.e. every T updates after a first interval of T - 1."""
        if max_steps is not None and 0 < max_steps <= global_step:
            return None
        configs = {name: self.peft_config[name] for name in self._trainable_adapters()}
        due = [
            name
            for name, cfg in configs.items()
            if cfg.update_interval is not None and global_step > 0 and (global_step + 1) % cfg.update_interval == 0
        ]
        return self.refresh_masks(optimizer, due) if due else None

    # -- the "no refresh ever happens" warning ----------------------------------------------------------------
    def _count_update(self, optimizer) -> None:
        cache = self.__dict__.setdefault("_lift_optimizers", weakref.WeakKeyDictionary())
        try:
            mine = cache.get(optimizer)
        except TypeError:
            return
        if mine is None:
            ids = {id(p) for layer, name in self._pairs() for p in [layer.lift_values[name]]}
            mine = any(id(p) in ids for group in optimizer.param_groups for p in group["params"])
            cache[optimizer] = mine
        if not mine:
            return
        self.__dict__["_lift_last_optimizer"] = weakref.ref(optimizer)
        count = self.__dict__.get("_lift_updates_since_refresh", 0) + 1
        self.__dict__["_lift_updates_since_refresh"] = count
        configs = [self.peft_config[name] for name in self._trainable_adapters()]
        intervals = [c.update_interval for c in configs if c.update_interval is not None]
        if intervals and count > 2 * min(intervals) and not self.__dict__.get("_lift_warned", False):
            self.__dict__["_lift_warned"] = True
            warnings.warn(
                f"LIFT: update_interval={min(intervals)} is set but no mask refresh happened in {count - 1} "
                "optimizer updates. With the stock Trainer/SFTTrainer pass `callbacks=[LiftRefreshCallback()]`; in "
                "a custom loop call `model.maybe_refresh(updates_done, optimizer)` after every update; or set "
                "update_interval=None for the paper's fixed-mask variant.",
                UserWarning,
                stacklevel=2,
            )


# Models whose optimizer steps are counted for the warning above. A global post-step hook (torch's public API)
# sees every optimizer; it only counts, it never changes training.
_WATCHED: weakref.WeakSet = weakref.WeakSet()
_HOOK_HANDLE = None


def _on_optimizer_step(optimizer, args, kwargs) -> None:
    for model in list(_WATCHED):
        model._count_update(optimizer)


def _watch(model: LiftModel) -> None:
    global _HOOK_HANDLE
    _WATCHED.add(model)
    if _HOOK_HANDLE is None:
        _HOOK_HANDLE = register_optimizer_step_post_hook(_on_optimizer_step)
