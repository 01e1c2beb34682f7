"""The tuner-layer base of the sparse-delta tuners (LIFT, SEFT): per adapted `nn.Linear` and adapter name, a 1-D
trainable values tensor and a persistent int32 buffer of flat (row-major) positions into the weight. The effective
weight is

    W_eff = W0 + scatter(indices, values) [+ scatter(residual_indices, residual_values)]

No dense masked copy of any weight is stored, saved for backward or kept in optimizer state. The pieces live in
files by concern:

- `_sparse_delta_ops.py`: tensor operations (scatters with one rounding, index checks, optimizer-state carry-over);
- `_sparse_delta_autograd.py`: `sparse_delta_linear` and its autograd functions (LoRA-sized activation memory);
- `_sparse_delta_triton.py`: the one-launch CUDA scatters;
- `_sparse_delta_cache.py`: the effective-weight cache kept between optimizer steps;
- `_sparse_delta_tuner.py`: what the tuner models share (default target modules, the cache's owner);
- this file: `SparseDeltaLayer` and `ResizableBufferDict`.

`SparseDeltaLayer(BaseTunerLayer)` is the base of a tuner layer. A subclass sets `sparse_prefix` (e.g. "lift_") and
lists its containers:

    adapter_layer_names = ("<p>values",)
    other_param_names = ("<p>indices", "<p>residual_indices", "<p>residual_values", "<p>ready", ...)

and its concrete class is `class Linear(nn.Module, XLayer)` whose `forward` returns
`self.sparse_forward(x, *args, **kwargs)` (nn.Module's own `forward` would shadow a mixin's). It provides
`add_sparse_adapter(name, k, indices=None)`, `sparse_forward`, `merge`, `unmerge`, `get_delta_weight`,
`sparse_state(name)`, `set_sparse_state_(name, indices, values, residual_indices=None, residual_values=None,
optimizer=None, mark_ready=True) -> (src, kept)` (re-selection with Adam-moment carry-over), `is_ready(name)`,
`weight_numel`, `sparse_grad_hook` (a callable receiving this layer's dense fp32 weight gradient on every backward)
and a load pre-hook that resizes the residual buffers to the saved shapes and raises one clear error when a saved
adapter does not fit the base weight. Transformers' `model.load_adapter` checks shapes before any load hook runs, so
a tuner whose buffers change length also records the lengths in its PEFT config and pre-allocates them when the
layer is created (LIFT: `LiftConfig.residual_sizes`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..distributed import is_dtensor
from ._sparse_delta_autograd import CachedSparseDeltaLinearFunction, sparse_delta_linear
from ._sparse_delta_ops import (
    add_sparse_,
    carry_map,
    check_indices,
    compute_dtype,
    remap_optimizer_state_,
    write_whole_,
)


__all__ = ["STRUCTURE_GENERATION", "ResizableBufferDict", "SparseDeltaLayer"]


#: Bumped whenever an entry of a structural `ResizableBufferDict` (indices, zero sets, residuals, ready flags) is
#: assigned: the effective-weight caches (_sparse_delta_cache.py) re-check their layers' structure when it moves.
STRUCTURE_GENERATION = [0]


class ResizableBufferDict(BufferDict):
    """A persistent `BufferDict`; the owning `SparseDeltaLayer` resizes its entries to the saved shapes on load.

    `structural=True` (the default): the entries shape the effective weight, so assigning one bumps
    `STRUCTURE_GENERATION`. Bookkeeping containers (e.g. SEFT's grow window) pass False."""

    def __init__(self, buffers=None, structural: bool = True):
        self.structural = structural
        super().__init__(buffers, persistent=True)

    def __setitem__(self, key, buffer):
        super().__setitem__(key, buffer)
        if self.structural:
            STRUCTURE_GENERATION[0] += 1


class SparseDeltaLayer(BaseTunerLayer):
    """Base class of a PEFT tuner layer holding, per adapter, a sparse delta on a linear weight.

    Containers (names start with `sparse_prefix`, e.g. "lift_"; PEFT freezes trainable tensors whose names lack
    the tuner prefix, and saves every persistent buffer of the layer except `base_layer`):

    - `<p>values[name]`: trainable 1-D `nn.Parameter` of length k (fp32 after PEFT's adapter autocast).
    - `<p>indices[name]`: int32 1-D buffer of length k, unique flat positions into the weight.
    - `<p>residual_indices[name]`, `<p>residual_values[name]`: frozen part of the delta (int32 / fp32 buffers,
      disjoint from `<p>indices`; empty unless a tuner moves entries there, e.g. LIFT's refresh).
    - `<p>ready[name]`: 0-d bool buffer; False until the tuner has chosen real indices (a saved adapter carries
      True, so loading never re-selects).
    - `<p>shape[name]`: int64 `(out_features, in_features)` of the weight the adapter was made for, saved with it:
      flat positions alone cannot tell a 64x32 weight from a 32x64 one.

    Every adapter is checked once before its first use after creation or a load (`is_ready`), and saved tensors
    again before they load: wrong shapes, out-of-range or repeated positions and missing tensors raise one
    `ValueError` naming the module.

    Subclasses set `sparse_prefix`, `adapter_layer_names` and `other_param_names` (see module docstring), and list
    further variable-length containers in `variable_containers` (resized to the saved lengths on load).
    """

    sparse_prefix: str = ""
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()
    variable_containers: tuple[str, ...] = ("residual_indices", "residual_values")
    #: Containers every saved adapter holds for each adapted module (`shape` is absent from older files).
    required_containers: tuple[str, ...] = ("values", "indices", "residual_indices", "residual_values", "ready")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        p = self.sparse_prefix
        expected = (p + "values",), tuple(p + c for c in (*self.required_containers[1:], "shape"))
        if (
            not p
            or tuple(self.adapter_layer_names) != expected[0]
            or not set(expected[1]) <= set(self.other_param_names)
        ):
            raise TypeError(
                f"{type(self).__name__} must set sparse_prefix and adapter_layer_names={expected[0]}, "
                f"other_param_names containing {expected[1]}"
            )
        self.base_layer = base_layer
        setattr(self, p + "values", nn.ParameterDict({}))
        setattr(self, p + "indices", ResizableBufferDict())
        setattr(self, p + "residual_indices", ResizableBufferDict())
        setattr(self, p + "residual_values", ResizableBufferDict())
        setattr(self, p + "ready", ResizableBufferDict())
        setattr(self, p + "shape", ResizableBufferDict(structural=False))
        self._disable_adapters = False
        self.merged_adapters = []
        # Optional fn(dense_grad_fp32) called on every backward of this layer (e.g. a grow criterion).
        self.sparse_grad_hook: Callable[[torch.Tensor], None] | None = None
        # Adapters whose ready flag was read as True (see `is_ready`); cleared when a state dict loads.
        self._sparse_ready_cache: set[str] = set()
        # Adapters built to receive a saved adapter (inference mode, recorded sizes): they may not run before it loads.
        self._sparse_must_load: set[str] = set()
        # The module's name in the model, set by the tuner (for error messages).
        self.sparse_name = ""
        # The tuner model's effective-weight cache (_sparse_delta_cache.py), set by the tuner; None: transient W_eff.
        self._sparse_cache = None
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"sparse-delta tuners support torch.nn.Linear only, got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_load_state_dict_pre_hook(SparseDeltaLayer._sparse_load_pre_hook)

    # -- containers ---------------------------------------------------------------------------------------------
    def _c(self, suffix: str):
        return getattr(self, self.sparse_prefix + suffix)

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features

    def add_sparse_adapter(
        self, adapter_name: str, k: int, indices: torch.Tensor | None = None, must_load: bool = False
    ) -> None:
        """Create (or replace) adapter `adapter_name` with k zero values. Without `indices`, placeholder
        positions 0..k-1 are written and the ready flag stays False (values are 0, so the layer is exact
        either way); the tuner selects real indices later. `must_load`: the adapter is built to receive a saved one
        (PEFT's inference mode, or sizes recorded in its config); it stays not ready, and refuses to run, until the
        saved tensors load."""
        weight = self.get_base_layer().weight
        numel = self.weight_numel
        if not 1 <= k <= numel:
            raise ValueError(f"k must be in [1, {numel}] for a {self.out_features}x{self.in_features} weight, got {k}")
        dev = weight.device if weight.device.type != "meta" else torch.device("cpu")
        ready = indices is not None and not must_load
        if indices is None:
            indices = torch.arange(k, dtype=torch.int32, device=dev)
        elif indices.numel() != k:
            raise ValueError(f"got {indices.numel()} indices for k={k}")
        check_indices(indices, numel, adapter_name)
        self._c("values")[adapter_name] = nn.Parameter(torch.zeros(k, dtype=torch.float32, device=dev))
        self._c("indices")[adapter_name] = indices.to(device=dev, dtype=torch.int32)
        self._c("residual_indices")[adapter_name] = torch.zeros(0, dtype=torch.int32, device=dev)
        self._c("residual_values")[adapter_name] = torch.zeros(0, dtype=torch.float32, device=dev)
        self._c("ready")[adapter_name] = torch.tensor(ready, device=dev)
        self._c("shape")[adapter_name] = torch.tensor([self.out_features, self.in_features], device=dev)
        self._sparse_ready_cache.discard(adapter_name)
        (self._sparse_must_load.add if must_load else self._sparse_must_load.discard)(adapter_name)
        self._invalidate_sparse_cache()

    def _invalidate_sparse_cache(self) -> None:
        """Mark the model's effective-weight cache stale (after any change made outside a torch optimizer)."""
        if self._sparse_cache is not None:
            self._sparse_cache.invalidate()

    def _cache_parts(self, adapter_name: str):
        """What the effective-weight cache builds W_eff from: `(indices, values, zero_set, frozen_deltas)`, W_eff =
        W0 ⊙ (1 - 1_zero_set) + scatter(indices, values) + sum of the frozen `(indices, values)` deltas."""
        s = self.sparse_state(adapter_name)
        frozen = [(s["residual_indices"], s["residual_values"])] if s["residual_indices"].numel() else []
        return s["indices"], s["values"], None, frozen

    def is_ready(self, adapter_name: str) -> bool:
        """Whether the adapter's indices were chosen. Read from the (device) buffer only until it is True: the
        answer is then cached on the layer, so the training forward never synchronises with the GPU (one sync
        per layer per step cost LIFT ~15% of its small-batch step time). Loading a state dict clears the cache.

        The first time it is True after creation or a load, the adapter's tensors are checked against this layer
        (transformers' `load_adapter` assigns them without any load hook). An adapter built to receive a saved one
        raises while nothing has loaded."""
        cache = self._sparse_ready_cache
        if adapter_name in cache:
            return True
        ready = bool(self._c("ready")[adapter_name])
        if ready:
            names = (*self.required_containers, "shape", *self.variable_containers)
            live = {c: self._c(c)[adapter_name] for c in dict.fromkeys(names) if adapter_name in self._c(c)}
            self._check_adapter_tensors(live, self.sparse_name or adapter_name)
            self._sparse_must_load.discard(adapter_name)
            cache.add(adapter_name)
        elif adapter_name in self._sparse_must_load:
            raise ValueError(
                f"The {self.sparse_prefix.rstrip('_').upper()} adapter `{adapter_name}` of `{self.sparse_name}` was "
                "built to receive a saved adapter (inference mode, or buffer sizes recorded in its config), but its "
                "saved tensors were never loaded: the adapter file is incomplete (truncated, or saved for other "
                "target modules), or a saved config was used to start a new adapter. Load a complete adapter, or "
                "build a new one from a config with inference_mode=False and the recorded sizes set to None."
            )
        return ready

    def _check_adapter_tensors(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Raise one `ValueError` if an adapter's tensors (saved or live, keyed by container suffix; any subset) do not
        fit this layer: another weight shape, positions that are not unique in-range integers, lengths that differ
        between positions and values, residual positions that overlap the trained ones."""
        shape = tensors.get("shape")
        if shape is not None:
            saved = tuple(int(v) for v in shape.reshape(-1).tolist())
            if saved != (self.out_features, self.in_features):
                raise ValueError(
                    f"The sparse adapter for `{where}` was made for a {'x'.join(map(str, saved))} weight, but this "
                    f"weight is {self.out_features}x{self.in_features}: the adapter was trained on a base model with "
                    "different shapes. Load it onto the model named in adapter_config.json (`base_model_name_or_path`)."
                )
        for idx, val in (("indices", "values"), ("residual_indices", "residual_values")):
            if idx in tensors:
                check_indices(tensors[idx], self.weight_numel, where, unique=True)
                if val in tensors and tensors[val].shape != tensors[idx].shape:
                    raise ValueError(
                        f"The sparse adapter for `{where}` holds {tensors[idx].numel()} {idx} but "
                        f"{tensors[val].numel()} {val}; the file is damaged. Re-save it from the trained model."
                    )
        if "indices" in tensors and tensors.get("residual_indices") is not None:
            both = torch.cat([tensors["indices"].reshape(-1), tensors["residual_indices"].reshape(-1)])
            if torch.unique(both).numel() != both.numel():
                raise ValueError(
                    f"The sparse adapter for `{where}` lists positions both as trained and as frozen residual entries; "
                    "the file is damaged. Re-save it from the trained model."
                )

    def sparse_state(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """`indices`, `values`, `residual_indices`, `residual_values` of one adapter (live tensors)."""
        return {
            "indices": self._c("indices")[adapter_name],
            "values": self._c("values")[adapter_name],
            "residual_indices": self._c("residual_indices")[adapter_name],
            "residual_values": self._c("residual_values")[adapter_name],
        }

    def _deltas(self, adapter_name: str, include_residual: bool = True):
        s = self.sparse_state(adapter_name)
        out = [(s["indices"], s["values"])]
        if include_residual and s["residual_indices"].numel():
            out.append((s["residual_indices"], s["residual_values"]))
        return out

    @torch.no_grad()
    def set_sparse_state_(
        self,
        adapter_name: str,
        indices: torch.Tensor,
        values: torch.Tensor,
        residual_indices: torch.Tensor | None = None,
        residual_values: torch.Tensor | None = None,
        optimizer=None,
        mark_ready: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the adapter's index set (and optionally its residual), carrying optimizer state.

        The values Parameter keeps its identity (and its length, if unchanged), so an optimizer built on it
        stays valid; its data becomes `values`. If `optimizer` is given, per-entry state of entries present in
        both old and new index sets is carried over, new entries start at zero (`remap_optimizer_state_`).
        Returns the `(src, kept)` carry map of new against old indices.

        FSDP2: `values` (and `indices`) are whole tensors, identical on every rank; a sharded values Parameter
        receives this rank's shard of them (its length cannot change), the optimizer state is remapped on whole
        tensors. Collective then: every rank calls it for the same layers in the same order."""
        numel = self.weight_numel
        check_indices(indices, numel, adapter_name)
        self._invalidate_sparse_cache()  # values are written through `.data` below
        param = self._c("values")[adapter_name]
        old = self._c("indices")[adapter_name]
        src, kept = carry_map(old, indices)
        remap_optimizer_state_(optimizer, param, src, kept)
        new_values = values.to(device=param.device, dtype=param.dtype)
        if is_dtensor(param):
            write_whole_(param, new_values, f"values of adapter `{adapter_name}`")
        elif new_values.shape == param.shape:
            param.data.copy_(new_values)
        else:
            param.data = new_values.clone()
        self._c("indices")[adapter_name] = indices.to(device=old.device, dtype=torch.int32)
        if residual_indices is not None:
            check_indices(residual_indices, numel, adapter_name)
            rv = self._c("residual_values")[adapter_name]
            self._c("residual_indices")[adapter_name] = residual_indices.to(device=old.device, dtype=torch.int32)
            self._c("residual_values")[adapter_name] = residual_values.to(device=rv.device, dtype=rv.dtype)
        if mark_ready:
            self._c("ready")[adapter_name].fill_(True)
        return src, kept

    # -- forward / merge ----------------------------------------------------------------------------------------
    def _active_sparse_adapters(self) -> list[str]:
        return [a for a in self.active_adapters if a in self._c("values")]

    def sparse_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = self._active_sparse_adapters()
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        base = self.get_base_layer()
        indices, values = [], []
        for name in active:
            for idx, val in self._deltas(name):
                indices.append(idx)
                values.append(val)
        return sparse_delta_linear(x, base.weight, base.bias, indices, values, self.sparse_grad_hook)

    def _check_unsharded(self) -> None:
        """The sparse-delta forward needs whole tensors. Under FSDP2 it runs between the pre-forward all-gather and the
        reshard of the `fully_shard` unit holding the layer, where the weight and values are plain unsharded tensors;
        a `DTensor` here means the layer was called outside its unit's forward."""
        if is_dtensor(self.get_base_layer().weight) or any(is_dtensor(v) for v in self._c("values").values()):
            raise RuntimeError(
                f"{type(self).__name__} got FSDP2-sharded (DTensor) parameters in forward: call the model whose "
                "`fully_shard` unit contains this layer (its pre-forward hook gathers the whole tensors), not the "
                "layer on its own."
            )

    def _try_cached_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The forward on the cached W_eff (_sparse_delta_cache.py) when one adapter is active, adapters are enabled
        and unmerged and the cache serves this layer; None otherwise (the caller takes its usual path). Subclasses'
        `forward` try it first: it is the training hot path, so it reads as few attributes as it can."""
        cache = self._sparse_cache
        if cache is None or self._disable_adapters or self.merged_adapters:
            return None
        active = self.active_adapters
        if len(active) != 1:
            return None
        base = self.base_layer
        if not isinstance(base, nn.Linear):
            base = self.get_base_layer()
        w = base.weight
        dtype = compute_dtype(x, w)
        entry = cache.serve(self, active[0], dtype, w)
        if entry is None:
            return None
        if x.dtype != dtype:
            x = x.to(dtype)
        return CachedSparseDeltaLinearFunction.apply(
            x, entry.view, entry.bias, entry.indices, entry.values, self.sparse_grad_hook
        )

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The adapter's dense delta (trainable part + residual), fp32, shape of the base weight."""
        w = self.get_base_layer().weight
        out = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for idx, val in self._deltas(adapter_name):
            out.view(-1).index_add_(0, idx, val.detach().float())
        return out

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' deltas into the base weight (one rounding per entry: bit-identical to the unmerged
        forward for a single adapter in any dtype)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        weight = self.get_base_layer().weight
        self._invalidate_sparse_cache()
        for name in adapter_names:
            if name not in self._c("values"):
                continue
            target = weight.data.clone() if safe_merge else weight.data
            for idx, val in self._deltas(name):
                add_sparse_(target, idx, val)
            if safe_merge:
                if not torch.isfinite(target).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                weight.data.copy_(target)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract merged deltas (exact in fp32/fp64; in bf16/fp16 each entry is rounded once more)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", UserWarning, stacklevel=2)
            return
        weight = self.get_base_layer().weight
        self._invalidate_sparse_cache()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self._c("values"):
                continue
            for idx, val in self._deltas(name):
                add_sparse_(weight.data, idx, val, alpha=-1.0)

    # -- loading ------------------------------------------------------------------------------------------------
    @staticmethod
    def _sparse_load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """Before the containers load: check the saved tensors of every adapter present in `state_dict` (complete,
        and fitting this weight; `_check_adapter_tensors`) and resize the variable-length buffers to their saved
        lengths."""
        p = module.sparse_prefix
        where = module.sparse_name or prefix.rstrip(".").removeprefix("base_model.model.")
        module._sparse_ready_cache.clear()  # the saved ready flags replace the cached ones
        module._invalidate_sparse_cache()
        containers = dict.fromkeys((*module.required_containers, "shape", *module.variable_containers))
        for name in list(module._c("values").keys()):
            saved = {
                c: state_dict[f"{prefix}{p}{c}.{name}"] for c in containers if f"{prefix}{p}{c}.{name}" in state_dict
            }
            if not saved:
                continue  # another adapter is loading
            absent = [p + c for c in module.required_containers if c not in saved]
            if absent:
                raise ValueError(
                    f"The saved sparse adapter `{name}` for `{where}` lacks {absent}: the file is incomplete "
                    "(truncated or edited). Re-save it from the trained model."
                )
            module._check_adapter_tensors(saved, where)
        for attr in ("values", *module.variable_containers, "indices"):
            container = getattr(module, p + attr)
            for name in list(container.keys()):
                key = f"{prefix}{p}{attr}.{name}"
                if key not in state_dict:
                    continue
                saved, current = state_dict[key], container[name]
                if saved.shape == current.shape:
                    continue
                if attr in module.variable_containers:
                    container[name] = torch.empty(saved.shape, dtype=current.dtype, device=current.device)
                elif attr == "values" and current.device.type == "meta":
                    continue  # low_cpu_mem_usage: assigned as loaded
                else:
                    raise ValueError(
                        f"The sparse adapter for `{where}` has {saved.numel()} saved {p}{attr} but this "
                        f"{module.out_features}x{module.in_features} weight expects {current.numel()}: the adapter "
                        "was trained on a base model with different shapes, or with a different budget in "
                        "adapter_config.json."
                    )
