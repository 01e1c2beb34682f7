"""The effective-weight cache of the sparse-delta tuners (`cache_effective_weight`: off by default for LIFT, whose goal
is peak memory at or below LoRA's at every batch size; on by default for SEFT, whose goal is step time; see
docs/lift.md and docs/seft.md, "Performance").

Without it, a layer rebuilds its effective weight in its forward and again in its backward (a copy and a scatter
launch each time, plus their Python):

    LIFT: W_eff = W0 + scatter(A, δ) + scatter(residual)        SEFT: W_eff = W0 ⊙ (1 - 1_R) + scatter(A, δ)

The autograd footprint stays LoRA-sized, but on a 0.5B model (168 adapted layers) that host work made a step 1.2x
slower than a full fine-tuning step (docs/seft.md, "Performance"). With the cache, the W_eff of all adapted layers
live in ONE flat buffer in the compute dtype (one more copy of the adapted weights: 0.67 GiB for a 0.5B model in
bf16), a layer's forward is `F.linear` on its slice, and its backward reads the same slice
(`sparse_delta_linear(..., effective_weight=)`).

Upkeep runs for the whole model at once, at the first forward that finds the cache stale:

- structure rebuild (first use; after a LIFT refresh or a SEFT cycle, a load, merge / unmerge; a new compute dtype
  or active adapter): copy W0 into the buffer (one foreach copy), zero the layer's zero set (SEFT's R), add its
  frozen deltas (LIFT's residual), read back B = buffer[A] (W0[A] in the compute dtype, or 0 where A meets R, so a
  SEFT delta grown on a re-pruned position stands alone);
- value refresh (after each optimizer step holding a cached values tensor): buffer[A] = round(B + δ), one
  `torch.cat` and one `index_put_`, with the single rounding of `add_sparse_`; cached and transient forwards are
  bit-identical (tests/test_sparse_delta_cache.py checks it).

A layer says what its W_eff is made of through `SparseDeltaLayer._cache_parts` (SEFT overrides it).

Staleness is tracked, not guessed: a `torch.optim` step whose parameters include a cached values tensor (a global
post-step hook), the tuners' own re-selections, loads, merges and adapter changes mark the cache stale, and each
layer's forward compares the storages and version counters of δ, A, the zero set, the frozen deltas and W0 with
those recorded at the last refresh. An update written through `tensor.data` outside a torch optimizer bypasses
both: call the tuner model's `invalidate_weight_cache()` after one, or turn the cache off.

Not served (the layer takes the transient path, same result): several active adapters, a trainable base weight,
layers on another device than the first served one, and any model managed by FSDP2: sharded (DTensor) parameters
seen at a refresh or, when only the root is sharded, at the first optimizer step switch the cache off for good.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..distributed import is_dtensor
from ._sparse_delta import STRUCTURE_GENERATION
from ._sparse_delta_ops import acc_dtype, add_sparse_, tensor_stamp


__all__ = ["SparseDeltaWeightCache"]

_CACHES: weakref.WeakSet = weakref.WeakSet()
_HOOK_HANDLE = None


def _on_optimizer_step(optimizer, args, kwargs) -> None:
    """Global `torch.optim` post-step hook: mark stale the caches whose values this optimizer may have changed."""
    if not _CACHES:
        return
    live = [c for c in _CACHES if c.value_ids]
    if not live:
        return
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for cache in live:
        ends = (cache.members[0], cache.members[-1]) if cache.members else ()
        if any(is_dtensor(m._c("values")[cache.key[0]]) for m in ends):
            cache.disable_sharded()  # FSDP2 sharding the root only: every layer looked unsharded inside forward
        elif not cache.value_ids.isdisjoint(ids):
            cache.values_stale = True


def _ensure_hook() -> None:
    global _HOOK_HANDLE
    if _HOOK_HANDLE is None:
        _HOOK_HANDLE = register_optimizer_step_post_hook(_on_optimizer_step)


class _Entry:
    """One served layer: its W_eff slice and the tensors it was built from, with the versions last seen."""

    __slots__ = ("bias", "indices", "structure", "values", "values_version", "view", "weight", "weight_stamp")

    def __init__(self, view, indices, values, weight, bias, structure):
        self.view, self.indices, self.values, self.weight, self.bias = view, indices, values, weight, bias
        self.structure = structure
        self.weight_stamp = (weight.data_ptr(), weight._version)
        self.values_version = -1


class SparseDeltaWeightCache:
    """The effective weights of one tuner model's sparse-delta layers (see the module docstring). The tuner model
    (`SparseDeltaTuner`, _sparse_delta_tuner.py) owns one and hands it to every layer it creates; a layer asks
    `serve(layer, adapter, dtype)` in its forward.

    The per-forward check is a few attribute reads on tensors the entry holds (the versions of δ and W0); the
    layers' full structure (A, the zero set, the frozen deltas, servability) is compared only after an explicit
    invalidation or when a structural container entry was assigned anywhere (`STRUCTURE_GENERATION`)."""

    def __init__(self) -> None:
        self.layers: list = []  # SparseDeltaLayer objects, in creation order (the buffer's layout)
        self.enabled: dict[str, bool] = {}  # adapter -> its config's cache_effective_weight
        self.sharded = False  # set for good once FSDP2 (DTensor) parameters are seen: transient path from then on
        self.clear()
        _CACHES.add(self)
        _ensure_hook()

    def clear(self) -> None:
        """Free the buffer and everything derived from it (rebuilt at the next served forward)."""
        self.buffer: torch.Tensor | None = None
        self.key: tuple | None = None  # (adapter, dtype, device) the buffer holds
        self.members: list = []
        self.entries: dict[int, _Entry] = {}  # id(layer) -> entry
        self.index: torch.Tensor | None = None  # global flat positions of every member's A
        self.base: torch.Tensor | None = None  # buffer[A] after the zero set and frozen deltas, accumulation dtype
        self.value_ids: set[int] = set()
        self.generation = -1  # STRUCTURE_GENERATION when the structure was last compared
        self.values_stale = True
        self.structure_stale = True

    def __deepcopy__(self, memo):
        new = SparseDeltaWeightCache()
        memo[id(self)] = new
        new.enabled = dict(self.enabled)
        new.sharded = self.sharded
        new.layers = copy.deepcopy(self.layers, memo)  # the copied model's layers (memo), never the originals
        return new

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def register(self, layer) -> None:
        if not any(m is layer for m in self.layers):
            self.layers.append(layer)
        self.structure_stale = True

    def invalidate(self) -> None:
        """Re-check everything at the next forward (after a change of A, δ, W0 or the zero set / frozen deltas made
        outside `torch.optim` and outside container assignment, e.g. in place through `.data`)."""
        self.structure_stale = True

    def disable_sharded(self) -> None:
        """FSDP2 manages the layers: parameters are gathered per unit inside forward and sharded outside it, so a
        model-wide buffer could neither stay small nor see the optimizer's (sharded) updates. Off for good."""
        self.sharded = True
        self.clear()

    def release(self) -> None:
        """Drop the buffer and the layers (the model was unloaded)."""
        self.layers = []
        self.clear()

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()

    # -- serving ------------------------------------------------------------------------------------------------
    def serve(self, layer, name: str, dtype: torch.dtype, weight: torch.Tensor | None = None) -> _Entry | None:
        """The current entry of `layer` for adapter `name` in `dtype` (`.view` is its W_eff), or None when the cache
        does not serve it (the caller then builds W_eff itself). `weight`: the layer's base weight as the caller
        reads it now (a different object than the one cached, e.g. after `fully_shard`, forces a re-check)."""
        if self.sharded or not self.enabled.get(name, False):
            return None
        key = self.key
        if (
            self.values_stale
            or self.structure_stale
            or self.generation != STRUCTURE_GENERATION[0]
            or key is None
            or key[0] != name
            or key[1] != dtype
        ):
            if not self._refresh(name, dtype, layer.get_base_layer().weight.device):
                return None
        entry = self.entries.get(id(layer))
        if entry is None:
            return None
        w = entry.weight
        if entry.values._version != entry.values_version:
            self.values_stale = True
        elif (
            (weight is not None and weight is not w)
            or (w.data_ptr(), w._version) != entry.weight_stamp
            or w.requires_grad  # unfrozen since the build: only the transient path gives W0 its gradient
        ):
            self.structure_stale = True
        else:
            return entry
        if not self._refresh(name, dtype, w.device):
            return None
        return self.entries.get(id(layer))

    @staticmethod
    def _structure_stamp(layer, name: str) -> tuple:
        indices, values, zero, frozen = layer._cache_parts(name)
        base = layer.get_base_layer()
        w = base.weight
        return (
            tensor_stamp(indices),
            id(values),
            None if zero is None else tensor_stamp(zero),
            tuple((tensor_stamp(i), tensor_stamp(v)) for i, v in frozen),
            tensor_stamp(w),
            w.dtype,
            None if base.bias is None else tensor_stamp(base.bias),
            tuple(layer.active_adapters),
        )

    @staticmethod
    def _servable(layer, name: str, device: torch.device) -> bool:
        if name not in layer._c("values") or layer.merged or layer.disable_adapters:
            return False
        if list(layer.active_adapters) != [name] or not layer.is_ready(name):
            return False
        w, v = layer.get_base_layer().weight, layer._c("values")[name]  # never DTensors here: `_check_structure`
        if w.requires_grad or not w.dtype.is_floating_point:
            return False
        return w.device == device and v.device == device and w.device.type != "meta"

    @torch.no_grad()
    def _refresh(self, name: str, dtype: torch.dtype, device: torch.device) -> bool:
        """Bring the buffer up to date (structure if needed, then values). False if no layer can be served."""
        with torch.inference_mode(False):  # a buffer created under inference_mode could not be saved for backward
            key = (name, dtype, device)
            if self.structure_stale or self.generation != STRUCTURE_GENERATION[0] or self.key != key:
                if not self._check_structure(name, key):
                    return False
            entries = [self.entries[id(m)] for m in self.members]
            values = [e.values.detach() for e in entries]
            delta = (torch.cat(values) if len(values) > 1 else values[0]).to(self.base.dtype)
            self.buffer.index_put_((self.index,), (self.base + delta).to(dtype))
            for e in entries:
                e.values_version = e.values._version
            self.values_stale = False
            return True

    def _check_structure(self, name: str, key: tuple) -> bool:
        """Compare every layer with what the buffer was built from; rebuild if anything differs."""
        if any(
            name in m._c("values") and (is_dtensor(m._c("values")[name]) or is_dtensor(m.get_base_layer().weight))
            for m in self.layers
        ):  # FSDP2 units: the layers outside the running unit are sharded right now
            self.disable_sharded()
            return False
        members = [m for m in self.layers if self._servable(m, name, key[2])]
        if not members:  # nothing to serve: remember it, so that forwards do not re-check until something changes
            self.clear()
            self.key, self.generation = key, STRUCTURE_GENERATION[0]
            self.structure_stale = self.values_stale = False
            return False
        stamps = [self._structure_stamp(m, name) for m in members]
        if (
            self.key != key
            or len(members) != len(self.members)
            or any(a is not b for a, b in zip(members, self.members))
            or any(self.entries[id(m)].structure != st for m, st in zip(members, stamps))
        ):
            self._rebuild(members, stamps, name, key[1], key[2])
        self.generation = STRUCTURE_GENERATION[0]
        self.structure_stale = False
        return True

    def _rebuild(self, members: list, stamps: list, name: str, dtype: torch.dtype, device: torch.device) -> None:
        numels = [m.weight_numel for m in members]
        total = sum(numels)
        if (
            self.buffer is None
            or self.buffer.numel() != total
            or self.buffer.dtype != dtype
            or self.buffer.device != device
        ):
            self.buffer = None  # free the old one first
            self.buffer = torch.empty(total, dtype=dtype, device=device)
        views, offsets, off = [], [], 0
        for m, n in zip(members, numels):
            views.append(self.buffer[off : off + n].view(m.out_features, m.in_features))
            offsets.append(off)
            off += n
        bases = [m.get_base_layer() for m in members]
        weights = [b.weight.detach() for b in bases]
        if all(w.dtype == dtype for w in weights):
            torch._foreach_copy_(views, weights)
        else:
            for v, w in zip(views, weights):
                v.copy_(w)
        parts = [m._cache_parts(name) for m in members]
        zeros = [(z, o) for (_, _, z, _), o in zip(parts, offsets) if z is not None and z.numel()]
        if zeros:
            self.buffer.index_fill_(0, torch.cat([z.long() + o for z, o in zeros]), 0)
        frozen = [(i.long() + o, v) for (_, _, _, f), o in zip(parts, offsets) for i, v in f if i.numel()]
        if frozen:  # disjoint from A and from the zero set, so adding them first changes no entry of A
            add_sparse_(self.buffer, torch.cat([i for i, _ in frozen]), torch.cat([v for _, v in frozen]))
        self.index = torch.cat([a.long() + o for (a, _, _, _), o in zip(parts, offsets)])
        self.base = self.buffer.index_select(0, self.index).to(acc_dtype(dtype))
        self.entries = {
            id(m): _Entry(v, a, val, b.weight, b.bias, st)
            for m, v, (a, val, _, _), b, st in zip(members, views, parts, bases, stamps)
        }
        self.members = members
        self.value_ids = {id(val) for _, val, _, _ in parts}
        self.key = (name, dtype, device)
