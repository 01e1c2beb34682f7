"""Tensor operations of the sparse-delta tuners (LIFT, SEFT): scatters with one rounding, index checks, and the
carry-over of per-entry optimizer state when an index set changes.

A sparse delta is a pair of 1-D tensors: int32 (or int64) flat row-major positions into a weight, and the values
there. Every function here works on such pairs; none keeps a dense masked copy of a weight.

    add_sparse_(weight, indices, values, alpha=1.0) -> weight     # W[idx] = round(W[idx] + alpha * v)
    zero_add_(weight, zero, indices, values, keep=None) -> weight # W[zero] = 0; W[idx] = round(keep*W[idx] + v)
        In place, with ONE rounding to W's dtype per entry (used by forward, backward and merge, so a merged bf16
        model equals the unmerged forward bit for bit). On CUDA each is one Triton launch (_sparse_delta_triton.py).
    dense_delta(shape, indices, values, dtype=float32, device=None) -> Tensor
    gather_flat(dense, indices) -> Tensor                        # dense.view(-1)[indices]
    compute_dtype(x, weight) -> dtype                            # autocast's, else the weight's (floating), else x's
    tensor_stamp(t) -> (data_ptr, version, numel)                # a cache key that moves when t changes
    isin_sorted(x, sorted_set) -> Tensor                         # torch.isin against an ascending set
    check_indices(indices, numel, where, unique=False) -> None   # one clear ValueError for indices that cannot fit
    carry_map(old_indices, new_indices) -> (src, kept)
        for every new position j: kept[j] = (new[j] in old), src[j] = its slot in old (0 where not kept).
    optimizer_state(optimizer, param) -> dict | None            # unwraps accelerate's AcceleratedOptimizer
    remap_optimizer_state_(optimizer, param, src, kept) -> None
        per-entry state tensors (exp_avg, exp_avg_sq, ...) become where(kept, old[src], 0); `step` untouched.
    write_whole_(dst, whole, what) -> None                       # copy a whole tensor into a possibly FSDP2-sharded one
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..distributed import full_tensor, is_dtensor, local_tensor, shard_like
from . import _sparse_delta_triton as _triton


__all__ = [
    "acc_dtype",
    "add_sparse_",
    "carry_map",
    "check_indices",
    "compute_dtype",
    "dense_delta",
    "gather_flat",
    "isin_sorted",
    "optimizer_state",
    "remap_optimizer_state_",
    "tensor_stamp",
    "write_whole_",
    "zero_add_",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which W[idx] + v is formed before the single rounding back to W's dtype."""
    return torch.promote_types(dtype, torch.float32)


def tensor_stamp(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage address, version counter, numel): changes when `t` is replaced or modified in place (except through
    `.data`). Keys of caches derived from a tensor."""
    return (t.data_ptr(), t._version, t.numel())


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a sparse-delta layer computes (and builds W_eff) in: autocast's when it is on, else the weight's
    (floating weights), else the input's."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype if weight.dtype.is_floating_point else x.dtype


def add_sparse_(weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """In place: `weight.view(-1)[indices] = round(weight[indices] + alpha * values)`, one rounding per entry.

    `indices` (int32 or int64) must be unique within the call. Returns `weight`."""
    if indices.numel() == 0:
        return weight
    if _triton.usable(weight, indices, values):  # one launch instead of five (see _sparse_delta_triton.py)
        _triton.add_sparse_triton_(weight, indices, values, alpha)
        return weight
    flat = weight.view(-1)
    acc = acc_dtype(weight.dtype)
    cur = flat.index_select(0, indices).to(acc)
    vals = values.detach().to(device=weight.device, dtype=acc)
    new = cur.add_(vals, alpha=alpha) if alpha != 1.0 else cur.add_(vals)
    flat.index_put_((indices,), new.to(weight.dtype))
    return weight


def zero_add_(
    weight: torch.Tensor,
    zero: torch.Tensor | None,
    indices: torch.Tensor,
    values: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """In place: `W[zero] = 0`, then `W[idx] = round(W[idx] * keep + v)` (one rounding per entry, as `add_sparse_`).

    `zero` (may be None or empty) must be disjoint from `indices`; `keep` (uint8/bool per index entry, or None for
    all ones) zeroes the base under chosen deltas, so W_eff there is the delta alone. On CUDA one Triton launch."""
    has_zero = zero is not None and zero.numel() > 0
    if not has_zero and keep is None:
        return add_sparse_(weight, indices, values)
    if _triton.usable(weight, indices, values) and (not has_zero or zero.device == weight.device):
        _triton.zero_add_triton_(weight, zero if has_zero else indices[:0], indices, values, keep)
        return weight
    flat = weight.view(-1)
    if has_zero:
        flat.index_fill_(0, zero.long(), 0)
    if keep is not None and indices.numel():
        cur = flat.index_select(0, indices)
        flat.index_put_((indices,), torch.where(keep.to(torch.bool), cur, torch.zeros((), dtype=cur.dtype)))
    return add_sparse_(weight, indices, values)


def dense_delta(
    shape: Sequence[int],
    indices: torch.Tensor,
    values: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> torch.Tensor:
    """A dense tensor of `shape`, zero except `values` at the flat `indices`."""
    out = torch.zeros(tuple(shape), dtype=dtype, device=device if device is not None else values.device)
    if indices.numel():
        out.view(-1).index_add_(0, indices.to(out.device), values.detach().to(device=out.device, dtype=dtype))
    return out


def gather_flat(dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`dense.reshape(-1)[indices]` (int32 or int64 indices)."""
    return dense.reshape(-1).index_select(0, indices)


def check_indices(indices: torch.Tensor, numel: int, where: str, unique: bool = False) -> None:
    """Raise one `ValueError` that says what to do if `indices` cannot be flat positions into a weight with `numel`
    entries: not an integer tensor, not 1-D, out of range, or (with `unique`) repeated."""
    if (
        indices.dtype.is_floating_point
        or indices.dtype.is_complex
        or indices.dtype == torch.bool
        or indices.dim() != 1
    ):
        raise ValueError(
            f"The sparse adapter for `{where}` holds positions of dtype {indices.dtype} and shape "
            f"{tuple(indices.shape)}; positions must be a 1-D integer tensor. The adapter file is damaged or was not "
            "written by this tuner."
        )
    if indices.numel() == 0:
        return
    hi, lo = int(indices.max()), int(indices.min())
    if hi >= numel or lo < 0:
        bad = hi if hi >= numel else lo
        raise ValueError(
            f"The sparse adapter for `{where}` indexes entry {bad}, but that weight has only {numel} entries: the "
            "adapter was trained on a base model with different shapes. Load it onto the model named in "
            "adapter_config.json (`base_model_name_or_path`)."
        )
    if unique and torch.unique(indices).numel() != indices.numel():
        repeats = indices.numel() - torch.unique(indices).numel()
        raise ValueError(
            f"The sparse adapter for `{where}` lists {repeats} position(s) more than once; every trained entry "
            "must appear once. The adapter file is damaged or was edited by hand: re-save it from the trained model."
        )


def isin_sorted(x: torch.Tensor, sorted_set: torch.Tensor) -> torch.Tensor:
    """`torch.isin(x, sorted_set)` for an ascending `sorted_set`: one searchsorted, no sort or unique of either
    tensor, no host synchronisation."""
    if sorted_set.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    loc = torch.searchsorted(sorted_set, x).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[loc] == x


def carry_map(old_indices: torch.Tensor, new_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match positions of a new index set against an old one.

    Returns `(src, kept)`, both of `new_indices`' length: `kept[j]` is True iff `new_indices[j]` occurs in
    `old_indices`, and then `old_indices[src[j]] == new_indices[j]` (`src[j]` is 0 where not kept)."""
    device = new_indices.device
    if old_indices.numel() == 0:
        return torch.zeros(new_indices.numel(), dtype=torch.long, device=device), torch.zeros(
            new_indices.numel(), dtype=torch.bool, device=device
        )
    old = old_indices.to(device=device, dtype=torch.long)
    sorted_old, order = torch.sort(old)
    new = new_indices.to(torch.long)
    loc = torch.searchsorted(sorted_old, new).clamp_(max=old.numel() - 1)
    kept = sorted_old[loc] == new
    src = torch.where(kept, order[loc], torch.zeros_like(loc))
    return src, kept


def optimizer_state(optimizer, param: torch.Tensor) -> dict | None:
    """The optimizer's state dict entry for `param` (None if it has none yet); unwraps accelerate's wrapper."""
    if optimizer is None:
        return None
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner.state.get(param)


def write_whole_(dst: torch.Tensor, whole: torch.Tensor, what: str) -> None:
    """`dst.copy_(whole)` where `dst` may be an FSDP2-sharded `DTensor`: this rank's shard of `whole` is written into
    the local shard (which shares storage with `dst`). Under FSDP2 the length cannot change (FSDP2 owns the storage)."""
    if tuple(whole.shape) != tuple(dst.shape):
        raise ValueError(
            f"{what}: cannot change the length of a sharded (FSDP2) tensor from {tuple(dst.shape)} to "
            f"{tuple(whole.shape)}; sparse-delta tuners keep k fixed per layer"
        )
    local_tensor(dst).copy_(shard_like(whole, dst))


def remap_optimizer_state_(optimizer, param: torch.Tensor, src: torch.Tensor, kept: torch.Tensor) -> None:
    """Carry per-entry optimizer state across an index change of `param` (a 1-D values tensor).

    Every state tensor with one entry per old position (Adam's `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`,
    SGD's `momentum_buffer`, ...) becomes `where(kept, old[src], 0)`: entries that stay keep their moments,
    entries that enter start at zero. Scalars such as `step` are untouched, so bias correction continues.
    Tensors are updated in place when the length is unchanged (the optimizer keeps its references).

    FSDP2: the state tensors are sharded `DTensor`s like `param`; each is gathered (`full_tensor`, a collective:
    every rank calls this in the same order), remapped on the whole tensor and written back as the local shard."""
    state = optimizer_state(optimizer, param)
    if not state:
        return
    old_len = None
    for key, t in list(state.items()):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or key == "step":
            continue
        if old_len is None:
            old_len = t.numel()
        if t.numel() != old_len:
            continue
        whole = full_tensor(t)
        picked = whole.index_select(0, src.to(whole.device))
        new = torch.where(kept.to(whole.device), picked, torch.zeros((), dtype=whole.dtype, device=whole.device))
        if is_dtensor(t):
            write_whole_(t, new, f"optimizer state `{key}`")
        elif new.shape == t.shape:
            t.copy_(new)
        else:
            state[key] = new
