"""What the tuner models of the sparse-delta tuners (LIFT, SEFT) share: their default target modules, the lengths of
their variable-length buffers recorded in the adapter config, and the effective-weight cache they own.

Default target modules. Both methods adapt every linear projection of the transformer blocks, and neither the output
head nor the embeddings (LIFT, arXiv 2506.00772: all linear projections, the official scripts pass `--no_grad head`;
SEFT, arXiv 2505.24037: the SpIEL code it builds on adapts all linear layers, docs/seft.md). PEFT keeps exactly that
list per model type for its OSF tuner (`peft.utils.constants.TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING`:
q, k, v, o, gate, up and down projections for Llama, Qwen2/3, Mistral, Gemma, ...), so `SPARSE_DELTA_TARGET_MODULES` is that table plus hf_plugins' own model
types, which name their projections like Llama. A model type outside the table gets every `nn.Linear` except the
output head (PEFT's `"all-linear"`); a name a model lacks is skipped, and a targeted layer that is not an
`nn.Linear` (GPT-2's `Conv1D`) raises a clear error in the tuner.

Recorded buffer sizes. Some buffers change length during training (LIFT's residual, SEFT's re-pruned set and grow
window). Transformers' `model.load_adapter(dir)` compares saved and created shapes before any load hook runs, so the
tuner records each such buffer's length per module in the adapter config whenever the model's state dict is taken
(every save), and creates the buffers with those lengths when an adapter is built from such a config.
"""

from __future__ import annotations

import warnings

from peft.config import PeftConfig
from peft.utils import INCLUDE_LINEAR_LAYERS_SHORTHAND
from peft.utils.constants import TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING

from ._sparse_delta import SparseDeltaLayer
from ._sparse_delta_cache import SparseDeltaWeightCache


__all__ = ["HF_PLUGINS_MODEL_TYPES", "SPARSE_DELTA_TARGET_MODULES", "SparseDeltaTuner", "default_target_modules"]

#: hf_plugins' own model types (registered with transformers' auto classes), all with Llama's projection names.
HF_PLUGINS_MODEL_TYPES = ("lns_llama", "lns_qwen2", "coe", "neurotrails")

#: model_type -> default target modules of LIFT and SEFT (see the module docstring).
SPARSE_DELTA_TARGET_MODULES: dict[str, list[str]] = {
    **{model_type: list(names) for model_type, names in TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING.items()},
    **{
        model_type: list(TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING["llama"])
        for model_type in HF_PLUGINS_MODEL_TYPES
    },
}


def default_target_modules(model_type: str | None) -> list[str] | str:
    """The default `target_modules` of LIFT and SEFT for a model type: its row of `SPARSE_DELTA_TARGET_MODULES`, or
    `"all-linear"` (every `nn.Linear` but the output head) for a model type outside the table."""
    names = SPARSE_DELTA_TARGET_MODULES.get(model_type or "")
    return list(names) if names is not None else INCLUDE_LINEAR_LAYERS_SHORTHAND


class SparseDeltaTuner:
    """Mixin of a PEFT tuner model (`BaseTuner`) whose layers are `SparseDeltaLayer`s (LIFT, SEFT).

    - Default target modules from one table for both tuners (`default_target_modules`).
    - Records the lengths of the variable-length containers listed in `recorded_sizes` (`(config field, layer
      container)` pairs) in every adapter config before each state dict is taken; `recorded_size(config, field,
      key)` reads them back when a layer is created.
    - Owns the model's `SparseDeltaWeightCache`: call `_attach_weight_cache(layer, adapter_name, config)` for every
      layer created or given an adapter.
    """

    target_module_mapping = SPARSE_DELTA_TARGET_MODULES
    recorded_sizes: tuple[tuple[str, str], ...] = ()

    def inject_adapter(self, model, adapter_name: str, *args, **kwargs) -> None:
        """PEFT's injection, then one warning per kind of target noted by `_note_target` (e.g. a budget that covers a
        whole matrix), listing how many modules it concerns, instead of one warning per module."""
        self.__dict__["_sparse_notes"] = {}
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        finally:
            notes = self.__dict__.pop("_sparse_notes", {})
        for message, keys in notes.items():
            warnings.warn(
                f"{type(self).__name__[: -len('Model')].upper()} adapter `{adapter_name}`: {len(keys)} target "
                f"module(s) (e.g. `{keys[0]}`) {message}",
                UserWarning,
                stacklevel=4,
            )

    def _note_target(self, key: str, message: str) -> None:
        """Record that target `key` gets `message` (warned once per message after the injection)."""
        self.__dict__.setdefault("_sparse_notes", {}).setdefault(message, []).append(key)

    def _post_injection_hook(self, model, config, adapter_name) -> None:
        super()._post_injection_hook(model, config, adapter_name)
        self.register_state_dict_pre_hook(_record_sizes_before_state_dict)
        self.register_load_state_dict_pre_hook(_check_every_module_is_saved)

    def _record_buffer_sizes(self) -> None:
        """Write `{module key: length}` of every container in `recorded_sizes` into each adapter's config (None when
        all are empty): what transformers' `load_adapter` needs to create buffers of the saved shapes."""
        layers = [(key, m) for key, m in self.model.named_modules() if isinstance(m, SparseDeltaLayer)]
        for name, config in self.peft_config.items():
            for field, attr in self.recorded_sizes:
                sizes = {}
                for key, layer in layers:
                    container = getattr(layer, attr, None)
                    if container is not None and name in container and container[name].numel():
                        sizes[key] = container[name].numel()
                setattr(config, field, sizes or None)

    @staticmethod
    def recorded_size(config, field: str, key: str) -> int:
        """The length recorded in `config.<field>` for module `key` (0 if none)."""
        return int((getattr(config, field, None) or {}).get(key, 0))

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        if peft_config.target_modules is None:
            targets = default_target_modules(model_config.get("model_type"))
            peft_config.target_modules = set(targets) if isinstance(targets, list) else targets
        return peft_config

    @property
    def weight_cache(self) -> SparseDeltaWeightCache:
        """The effective-weight cache shared by this model's sparse-delta layers (`cache_effective_weight`)."""
        cache = self.__dict__.get("_sparse_weight_cache")
        if cache is None:
            cache = self.__dict__["_sparse_weight_cache"] = SparseDeltaWeightCache()
        return cache

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """The buffers DDP must not broadcast from rank 0 at every forward (`DistributedDataParallel` reads this
        attribute of the module it wraps, the `PeftModel`, which forwards it here; names are relative to it): this
        tuner's positions, residuals and selection state, identical on every rank by construction (selections are
        broadcast or drawn from all-reduced gradients and shared seeds). Broadcasting them would move every adapter
        index of the model per step (docs/distributed.md, "Communication per step")."""
        prefix = type(self).prefix
        mine = [f"base_model.{n}" for n, _ in self.named_buffers() if n.rsplit(".", 2)[-2].startswith(prefix)]
        return mine + list(self.__dict__.get("_ddp_ignore_extra", ()))

    @_ddp_params_and_buffers_to_ignore.setter
    def _ddp_params_and_buffers_to_ignore(self, names) -> None:  # `DDP._set_params_and_buffers_to_ignore_for_model`
        self.__dict__["_ddp_ignore_extra"] = list(names)

    def invalidate_weight_cache(self) -> None:
        """Rebuild the cached effective weights at the next forward: call after changing values, indices or the base
        weights through `tensor.data` outside a torch optimizer (every other change is detected)."""
        self.weight_cache.invalidate()

    def _attach_weight_cache(self, layer, adapter_name: str, config) -> None:
        cache = self.weight_cache
        cache.enabled[adapter_name] = bool(getattr(config, "cache_effective_weight", False))
        layer._sparse_cache = cache
        cache.register(layer)

    def _unload_and_optionally_merge(self, *args, **kwargs):
        self.weight_cache.release()  # the unloaded model keeps no reference to the tuner layers or the buffer
        return super()._unload_and_optionally_merge(*args, **kwargs)


def _record_sizes_before_state_dict(module, prefix, keep_vars) -> None:
    module._record_buffer_sizes()


def _check_every_module_is_saved(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Before an adapter's tensors load: every module that holds the adapter must have them in the file. A file that
    lacks whole modules (truncated, or saved for other target modules) would otherwise leave those modules at their
    fresh values without a word."""
    layers = [(key, m) for key, m in module.model.named_modules() if isinstance(m, SparseDeltaLayer)]
    if not layers:
        return
    p = layers[0][1].sparse_prefix
    marker = f".{p}values."
    for name in {k.rsplit(".", 1)[-1] for k in state_dict if marker in k}:
        holders = [key for key, m in layers if name in m._c("values")]
        absent = [key for key in holders if f"{prefix}model.{key}.{p}values.{name}" not in state_dict]
        if absent:
            raise ValueError(
                f"The saved adapter `{name}` has no tensors for {len(absent)} of the {len(holders)} modules it adapts "
                f"(e.g. `{absent[0]}`): the adapter file is incomplete (truncated, or saved for other target "
                "modules than its adapter_config.json names). Re-save it from the trained model."
            )
