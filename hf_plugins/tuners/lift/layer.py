"""LIFT tuner layers and the (batched) mask selection / re-selection they share.

Per adapted `nn.Linear` and adapter name (see `hf_plugins/tuners/_sparse_delta.py` for the containers):
`lift_values` (trainable, k fp32 values), `lift_indices` (int32 flat positions), `lift_residual_indices` /
`lift_residual_values` (frozen changes of entries that left the mask, `on_leave="keep"`) and `lift_ready`.
The effective weight is W0 + scatter(indices, values) + scatter(residual_indices, residual_values).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ...distributed import full_tensor, is_distributed
from .._sparse_delta import SparseDeltaLayer
from .._sparse_delta_ops import add_sparse_, carry_map
from .config import LiftConfig
from .selection import select_principal_indices


__all__ = ["LiftLayer", "Linear", "select_masks"]


class LiftLayer(SparseDeltaLayer):
    # Every name starts with the tuner prefix: PEFT's `_mark_only_adapters_as_trainable` would otherwise freeze
    # the values without a word, and its state-dict code would not save the buffers.
    sparse_prefix = "lift_"
    adapter_layer_names = ("lift_values",)
    other_param_names = (
        "lift_indices",
        "lift_residual_indices",
        "lift_residual_values",
        "lift_ready",
        "lift_shape",
        "lift_selection",
    )

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        SparseDeltaLayer.__init__(self, base_layer)
        self.lift_selection: dict[str, dict[str, Any]] = {}  # per adapter: k, q and the selection settings

    def update_layer(self, adapter_name: str, config: LiftConfig, residual_size: int = 0, **kwargs) -> None:
        """Add an adapter with zero values at placeholder positions (no selection here, so that loading a saved
        adapter never computes a decomposition; the first selection runs before training). `residual_size`
        pre-allocates the residual buffers with the saved length (from `config.residual_sizes`)."""
        k, q = config.budget(self.out_features, self.in_features)
        self.add_sparse_adapter(adapter_name, k, must_load=config.inference_mode)
        if residual_size:
            dev = self.lift_indices[adapter_name].device
            self.lift_residual_indices[adapter_name] = torch.zeros(residual_size, dtype=torch.int32, device=dev)
            self.lift_residual_values[adapter_name] = torch.zeros(residual_size, dtype=torch.float32, device=dev)
        self.lift_selection[adapter_name] = {
            "k": k,
            "q": q,
            "method": config.selection_method,
            "oversample": config.oversample,
            "niter": config.niter,
            "seed": config.selection_seed,
            "on_leave": config.on_leave,
            "init_weights": config.init_weights,
        }
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @torch.no_grad()
    def current_weight(self, adapter_name: str) -> torch.Tensor:
        """W0 + this adapter's whole delta, fp32 (the weights the selection looks at). Under FSDP2 the whole matrix
        and values are gathered (`full_tensor`, a collective: every rank calls this for the same layers)."""
        w = full_tensor(self.get_base_layer().weight.detach()).float().clone()
        if self.is_ready(adapter_name):
            for idx, val in self._deltas(adapter_name):
                add_sparse_(w, idx, full_tensor(val.detach()))
        return w

    @torch.no_grad()
    def apply_selection_(self, adapter_name: str, new_indices: torch.Tensor, optimizer=None) -> float:
        """Make `new_indices` (sorted, unique) the adapter's trainable set; returns the fraction of entries kept.

        keep  = old & new: value and optimizer moments carried over.
        enter = new - old: value = its residual value (0 if it never trained), moments 0.
        leave = old - new: `on_leave="keep"` moves the change into the residual (the function is unchanged),
                           `"reset"` drops it.
        """
        opts = self.lift_selection[adapter_name]
        s = self.sparse_state(adapter_name)
        values = full_tensor(s["values"].detach())  # whole values under FSDP2 (collective)
        if not self.is_ready(adapter_name):
            if opts["init_weights"]:
                new_values = torch.zeros(new_indices.numel(), dtype=values.dtype, device=values.device)
            else:  # tests only: a non-trivial adapter
                gen = torch.Generator(device="cpu").manual_seed(opts["seed"])
                new_values = (torch.randn(new_indices.numel(), generator=gen) * 0.02).to(values.device, values.dtype)
            # The first selection also drops placeholder residual slots pre-allocated from `residual_sizes` for an
            # adapter that was never loaded.
            empty = s["residual_indices"][:0], s["residual_values"][:0]
            self.set_sparse_state_(adapter_name, new_indices, new_values, *empty, optimizer=None)
            return 0.0
        old, res_idx, res_val = s["indices"], s["residual_indices"], s["residual_values"]
        new_indices = new_indices.to(old.device)
        src, kept = carry_map(old, new_indices)
        r_src, r_kept = carry_map(res_idx, new_indices)
        entering = torch.zeros(new_indices.numel(), dtype=values.dtype, device=values.device)
        if res_idx.numel():
            entering = torch.where(r_kept, res_val.to(values.dtype).index_select(0, r_src), entering)
        new_values = torch.where(kept, values.index_select(0, src), entering)
        residual = None
        if opts["on_leave"] == "keep":
            _, old_stays = carry_map(new_indices, old)
            _, res_stays = carry_map(new_indices, res_idx)
            idx = torch.cat([old[~old_stays], res_idx[~res_stays]])
            val = torch.cat([values[~old_stays].to(res_val.dtype), res_val[~res_stays]])
            nonzero = val != 0  # entries that never changed need no residual slot
            idx, val = idx[nonzero], val[nonzero]
            order = torch.argsort(idx)
            residual = (idx[order], val[order])
        else:
            empty = res_idx[:0]
            residual = (empty, res_val[:0])
        self.set_sparse_state_(adapter_name, new_indices, new_values, residual[0], residual[1], optimizer=optimizer)
        return float(kept.float().mean()) if kept.numel() else 1.0


class Linear(nn.Module, LiftLayer):
    """LIFT on a `torch.nn.Linear`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LiftConfig, **kwargs) -> None:
        super().__init__()
        LiftLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        cached = self._try_cached_forward(x)  # W_eff kept between steps (_sparse_delta_cache.py): the training path
        if cached is not None:
            return cached
        self._check_unsharded()
        if not self.disable_adapters and not self.merged:
            # `is_ready` checks an adapter at its first use and raises for a saved one that never loaded.
            pending = [a for a in self._active_sparse_adapters() if not self.is_ready(a)]
            if pending and self.training:
                # Fallback when neither LiftRefreshCallback.on_train_begin nor model.initialize_masks() ran: select
                # this layer's mask before its first training step (values are still 0, so nothing is lost).
                select_masks([(self, a) for a in pending])
        return self.sparse_forward(x, *args, **kwargs)

    def __repr__(self) -> str:
        return "lift." + super().__repr__()


# Max fp32 entries per batched decomposition (1 GiB per stacked tensor, ~3 GiB transient with the approximation
# and its magnitudes): bounds the memory spike of a refresh on large models.
_MAX_BATCH_ENTRIES = 1 << 28


@torch.no_grad()
def select_masks(pairs: list[tuple[LiftLayer, str]], optimizer=None, only_pending: bool = False) -> dict[str, float]:
    """(Re-)select the masks of `(layer, adapter)` pairs, batching layers of equal shape and settings.

    Returns `{"seconds", "matrices", "kept_fraction"}` (mean fraction of entries that stayed, over re-selected
    layers; 1.0 when none)."""
    t0 = time.perf_counter()
    groups: dict[tuple, list[tuple[LiftLayer, str]]] = {}
    for layer, name in pairs:
        if only_pending and layer.is_ready(name):
            continue
        if layer.merged:
            raise ValueError(
                "LIFT masks cannot be re-selected while adapters are merged; call unmerge_adapter() first."
            )
        o = layer.lift_selection[name]
        w = layer.get_base_layer().weight
        key = (
            layer.out_features,
            layer.in_features,
            w.device,
            o["k"],
            o["q"],
            o["method"],
            o["oversample"],
            o["niter"],
        )
        key += (o["seed"],)
        groups.setdefault(key, []).append((layer, name))
    kept_fractions = []
    count = 0
    for key, items in groups.items():
        m, n, _, k, q, method, oversample, niter, seed = key
        chunk = max(1, _MAX_BATCH_ENTRIES // (m * n))
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            stacked = torch.stack([layer.current_weight(name) for layer, name in part])
            new = select_principal_indices(stacked, k, q, method, oversample, niter, seed)
            del stacked
            if is_distributed():  # every rank computed the same masks; rank 0's make it exact (k int32 per matrix)
                torch.distributed.broadcast(new, src=0)
            for (layer, name), idx in zip(part, new):
                was_ready = layer.is_ready(name)
                frac = layer.apply_selection_(name, idx, optimizer)
                if was_ready:
                    kept_fractions.append(frac)
                count += 1
    if count and torch.cuda.is_available():
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - t0,
        "matrices": count,
        "kept_fraction": sum(kept_fractions) / len(kept_fractions) if kept_fractions else 1.0,
    }
