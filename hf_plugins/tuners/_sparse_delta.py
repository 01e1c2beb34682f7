"""Shared machinery for PEFT tuners whose adapter is a sparse delta on a linear weight (LIFT, SEFT).

An adapter stores, per adapted `nn.Linear` and adapter name, a 1-D trainable values tensor and a persistent
int32 buffer of flat (row-major) positions into the weight. The effective weight is

    W_eff = W0 + scatter(indices, values) [+ scatter(residual_indices, residual_values)]

No dense masked copy of any weight is stored, saved for backward or kept in optimizer state.

Stable API (other tuners build on it; signatures will not change, additions are allowed)
-------------------------------------------------------------------------------------------
Functions:
    sparse_delta_linear(x, weight, bias, indices, values, grad_hook=None, zero_indices=None, base_keep=None,
                        effective_weight=None) -> Tensor
        y = x W_eff^T + b through `SparseDeltaLinearFunction`: saves only `x` and references to `weight`, the
        indices and the values; the dense dL/dW of the layer exists only inside backward, is gathered at each
        index set (grad of each values tensor) and freed at once. `grad_hook(dense_grad_fp32)` sees it first.
    add_sparse_(weight, indices, values, alpha=1.0) -> weight
    zero_add_(weight, zero, indices, values, keep=None) -> weight     # W[zero] = 0; W[idx] = round(keep*W[idx] + v)
        In place, W[idx] = round(W[idx] + alpha * v) with ONE rounding to W's dtype (used by forward, backward
        and merge, so a merged bf16 model equals the unmerged forward bit for bit).
    dense_delta(shape, indices, values, dtype=float32, device=None) -> Tensor
    gather_flat(dense, indices) -> Tensor                        # dense.view(-1)[indices]
    compute_dtype(x, weight) -> dtype                            # autocast's, else the weight's (floating), else x's
    tensor_stamp(t) -> (data_ptr, version, numel)                # a cache key that moves when t changes
    isin_sorted(x, sorted_set) -> Tensor                         # torch.isin against an ascending set
    carry_map(old_indices, new_indices) -> (src, kept)
        for every new position j: kept[j] = (new[j] in old), src[j] = its slot in old (0 where not kept).
    optimizer_state(optimizer, param) -> dict | None            # unwraps accelerate's AcceleratedOptimizer
    remap_optimizer_state_(optimizer, param, src, kept) -> None
        per-entry state tensors (exp_avg, exp_avg_sq, ...) become where(kept, old[src], 0); `step` untouched.
    check_indices(indices, numel, where) -> None                 # clear ValueError for out-of-range indices

Classes:
    SparseDeltaLayer(BaseTunerLayer)
        Base of a tuner layer. A subclass sets `sparse_prefix` (e.g. "lift_") and lists its containers:
            adapter_layer_names = ("<p>values",)
            other_param_names = ("<p>indices", "<p>residual_indices", "<p>residual_values", "<p>ready")
        and its concrete class is `class Linear(nn.Module, XLayer)` whose `forward` returns
        `self.sparse_forward(x, *args, **kwargs)` (nn.Module's own `forward` would shadow a mixin's).
        Provides: `add_sparse_adapter(name, k, indices=None)`, `sparse_forward`, `merge`, `unmerge`,
        `get_delta_weight`, `sparse_state(name)`, `set_sparse_state_(name, indices, values, residual_indices=None,
        residual_values=None, optimizer=None, mark_ready=True) -> (src, kept)` (re-selection with Adam-moment
        carry-over), `is_ready(name)`, `weight_numel`, `sparse_grad_hook` (attribute; a callable receiving this
        layer's dense fp32 weight gradient on every backward) and a load pre-hook that resizes the residual
        buffers to the saved shapes and raises a clear error when the saved indices do not fit the base weight.
        Caveat: transformers' `model.load_adapter` / `AutoModelForCausalLM.from_pretrained(adapter_dir)` check
        shapes before any load hook runs, so a tuner whose buffers change length must also record the lengths
        in its PEFT config and pre-allocate them when the layer is created (LIFT: `LiftConfig.residual_sizes`).
    ResizableBufferDict(BufferDict)
        A persistent `BufferDict` (PEFT's) used for the index/residual/flag containers.

Why a custom autograd function: `F.linear(x, W0 + scatter(...))` makes autograd save the dense effective weight
(about 1x the weights as extra activation memory; 2x for SHiRA-style clone + sparse add), see
../../docs/lift.md "Performance".
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..distributed import all_reduce_mean_, full_tensor, is_dtensor, local_tensor, shard_like
from . import _sparse_delta_triton as _triton


__all__ = [
    "CachedSparseDeltaLinearFunction",
    "ResizableBufferDict",
    "SparseDeltaLayer",
    "SparseDeltaLinearFunction",
    "add_sparse_",
    "carry_map",
    "check_indices",
    "compute_dtype",
    "dense_delta",
    "gather_flat",
    "isin_sorted",
    "optimizer_state",
    "remap_optimizer_state_",
    "sparse_delta_linear",
    "tensor_stamp",
    "zero_add_",
]


# ----------------------------------------------------------------------------------------------------------------
# Tensor helpers
# ----------------------------------------------------------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
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
    acc = _acc_dtype(weight.dtype)
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


def check_indices(indices: torch.Tensor, numel: int, where: str) -> None:
    """Raise a `ValueError` that says what to do if `indices` do not fit a weight with `numel` entries."""
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


_FP32_OUT_MM_OK: dict[str, bool] = {}

#: How the layer's dense weight gradient is formed for bf16/fp16 inputs on CUDA. True: `torch.mm(...,
#: out_dtype=float32)` (fp32 accumulate AND fp32 output, so the gathered gradient entries carry no bf16 rounding).
#: False: the ordinary product in the input dtype (fp32 accumulate, rounded output: exactly what full fine-tuning's
#: bf16 weight gradient holds), upcast after the gather. Benchmarks flip it to measure both (lift_bench.py).
WEIGHT_GRAD_FP32_OUT: bool = True


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result. For bf16/fp16 inputs on CUDA this uses `torch.mm(..., out_dtype=float32)`
    (tensor-core speed, fp32 accumulate and output) when the installed torch has it and `WEIGHT_GRAD_FP32_OUT` is
    set; otherwise the product is computed in the input dtype and upcast (what full fine-tuning's bf16 weight
    gradient would hold)."""
    if a.dtype in (torch.float32, torch.float64):
        return a @ b
    dev = a.device.type
    if WEIGHT_GRAD_FP32_OUT and _FP32_OUT_MM_OK.get(dev, dev == "cuda"):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):
            _FP32_OUT_MM_OK[dev] = False
    return (a @ b).float()


# ----------------------------------------------------------------------------------------------------------------
# The autograd function
# ----------------------------------------------------------------------------------------------------------------


def _effective_weight(weight, dtype, indices, values, zero=None, keep=None):
    """W ⊙ (1 - 1_zero) with the deltas added (the first one over a base masked by `keep`), in `dtype`."""
    w = weight.detach().to(dtype=dtype, copy=True)
    for i, (idx, val) in enumerate(zip(indices, values)):
        if i == 0 and (zero is not None or keep is not None):
            zero_add_(w, zero, idx, val, keep)
        else:
            add_sparse_(w, idx, val)
    return w


class SparseDeltaLinearFunction(torch.autograd.Function):
    """y = x (W + sum_i scatter(indices_i, values_i))^T + bias, with a LoRA-sized autograd footprint.

    Saved for backward: `x` and references to the weight, bias, index and values tensors (no new dense
    tensor). Backward rebuilds the effective weight transiently for grad_x, and forms the dense weight gradient
    of this one layer (fp32) only if some values tensor, the weight or a hook needs it; it is gathered at each
    index set and dropped before backward returns.
    Call through `sparse_delta_linear`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, grad_hook, n, zero, keep, *tensors):
        indices, values = tensors[:n], tensors[n:]
        with torch.autocast(x.device.type, enabled=False):
            w_eff = _effective_weight(weight, x.dtype, indices, values, zero, keep)
            b = bias.to(x.dtype) if bias is not None else None
            out = nn.functional.linear(x, w_eff, b)
        del w_eff
        ctx.save_for_backward(x, weight, bias, zero, keep, *tensors)
        ctx.n = n
        ctx.grad_hook = grad_hook
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, zero, keep, *tensors = ctx.saved_tensors
        n = ctx.n
        indices, values = tensors[:n], tensors[n:]
        needs = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        grad_values = [None] * n
        with torch.autocast(grad_out.device.type, enabled=False):
            g2 = grad_out.reshape(-1, grad_out.shape[-1]).to(x.dtype)
            if needs[0]:
                w_eff = _effective_weight(weight, x.dtype, indices, values, zero, keep)
                grad_x = (g2 @ w_eff).view(*x.shape)
                del w_eff
            want_values = [needs[7 + n + i] for i in range(n)]
            if any(want_values) or needs[1] or ctx.grad_hook is not None:
                # Dense dL/dW exists for one layer at a time and is dropped as soon as it is gathered at the
                # indices; keeping it would cost full fine-tuning memory (what the official LIFT optimizer does).
                dense = _mm_fp32(g2.t(), x.reshape(-1, x.shape[-1]))
                if ctx.grad_hook is not None:
                    # Under DDP/FSDP2 this is the local gradient (DDP averages only the values' grads): hooks that
                    # choose positions (SEFT's growth) must see the global-batch gradient on every rank.
                    ctx.grad_hook(all_reduce_mean_(dense))
                for i in range(n):
                    if want_values[i]:
                        grad_values[i] = gather_flat(dense, indices[i]).to(values[i].dtype)
                if needs[1]:
                    if zero is not None and zero.numel():  # W enters W_eff as W ⊙ (1 - 1_zero)
                        dense.view(-1).index_fill_(0, zero.long(), 0)
                    if keep is not None:
                        kept = dense.view(-1).index_select(0, indices[0])
                        dense.view(-1).index_put_((indices[0],), torch.where(keep.bool(), kept, 0))
                    grad_w = dense.to(weight.dtype)
                del dense
            if bias is not None and needs[2]:
                grad_b = g2.sum(0).to(bias.dtype)
        return (grad_x, grad_w, grad_b, None, None, None, None, *([None] * n), *grad_values)


class CachedSparseDeltaLinearFunction(torch.autograd.Function):
    """y = x W_eff^T + bias for a W_eff the caller keeps up to date (the effective-weight cache): the lean form of
    `SparseDeltaLinearFunction` with one delta and a prebuilt weight, for the per-layer hot path. Saves `x` and
    references to W_eff and the indices; backward forms the layer's dense fp32 gᵀx only to gather it at the indices
    (and to show it to `grad_hook`). `x` must already be in W_eff's dtype."""

    @staticmethod
    def forward(ctx, x, w_eff, bias, indices, values, grad_hook):
        b = bias.to(x.dtype) if bias is not None else None
        with _no_autocast(x.device.type):
            out = nn.functional.linear(x, w_eff, b)
        ctx.save_for_backward(x, w_eff, indices)
        ctx.grad_hook = grad_hook
        ctx.values_dtype = values.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w_eff, indices = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad_values = grad_b = None
        with _no_autocast(grad_out.device.type):
            g2 = grad_out.reshape(-1, grad_out.shape[-1])
            if g2.dtype != x.dtype:
                g2 = g2.to(x.dtype)
            if needs[0]:
                grad_x = (g2 @ w_eff).view(x.shape)
            if needs[4] or ctx.grad_hook is not None:
                dense = _mm_fp32(g2.t(), x.reshape(-1, x.shape[-1]))
                if ctx.grad_hook is not None:
                    ctx.grad_hook(all_reduce_mean_(dense))
                if needs[4]:
                    grad_values = dense.view(-1).index_select(0, indices)
                    if grad_values.dtype != ctx.values_dtype:
                        grad_values = grad_values.to(ctx.values_dtype)
                del dense
            if ctx.bias_dtype is not None and needs[2]:
                grad_b = g2.sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_b, None, grad_values, None


def _no_autocast(device_type: str):
    """`torch.autocast(device_type, enabled=False)` when autocast is on, else a no-op context (the hot path skips
    building an autocast context it does not need)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def sparse_delta_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    indices: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    grad_hook: Callable[[torch.Tensor], None] | None = None,
    zero_indices: torch.Tensor | None = None,
    base_keep: torch.Tensor | None = None,
    effective_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.linear(x, W ⊙ (1 - 1_Z) + sum_i scatter(indices[i], values[i]), bias)` computed in `x.dtype`
    (autocast-aware), where Z = `zero_indices` (default: none).

    Args:
        x: input `(..., in_features)`.
        weight: `(out_features, in_features)` base weight (usually frozen).
        bias: optional `(out_features,)`.
        indices: int32/int64 1-D flat positions into `weight`, one tensor per delta, unique within each tensor.
        values: matching 1-D values (any float dtype; the gradient comes back in that dtype).
        grad_hook: optional `fn(dense_grad)` called in backward with the layer's fp32 `dL/dW_eff`.
        zero_indices: optional flat positions where W is replaced by 0, disjoint from every `indices[i]` (SEFT's
            re-pruned set R; on CUDA zeroing and the first delta are one Triton launch).
        base_keep: optional uint8/bool mask over `indices[0]`: where 0, W_eff there is `values[0]` alone (a delta
            grown on a re-pruned position).
        effective_weight: optional W_eff already built by the caller, in the compute dtype (the effective-weight cache,
            _sparse_delta_cache.py): forward and backward use it instead of building W_eff themselves
            (`CachedSparseDeltaLinearFunction`). The caller guarantees it equals the formula above; autograd's version
            check raises if it changes in place before backward. One delta only; `zero_indices` / `base_keep` must
            be None and `weight` frozen.
    """
    if len(indices) != len(values):
        raise ValueError(f"got {len(indices)} index tensors but {len(values)} values tensors")
    if base_keep is not None and (not indices or base_keep.numel() != indices[0].numel()):
        raise ValueError("base_keep needs one entry per position of indices[0]")
    dtype = compute_dtype(x, weight)
    if x.dtype != dtype:
        x = x.to(dtype)
    if effective_weight is not None:
        if zero_indices is not None or base_keep is not None or weight.requires_grad or len(indices) != 1:
            raise ValueError("effective_weight takes one delta, no zero_indices / base_keep, and a frozen weight")
        if effective_weight.dtype != x.dtype or effective_weight.shape != weight.shape:
            raise ValueError(
                f"effective_weight must have the weight's shape {tuple(weight.shape)} and the compute dtype {x.dtype}; "
                f"got {tuple(effective_weight.shape)} {effective_weight.dtype}"
            )
        return CachedSparseDeltaLinearFunction.apply(x, effective_weight, bias, indices[0], values[0], grad_hook)
    return SparseDeltaLinearFunction.apply(
        x, weight, bias, grad_hook, len(indices), zero_indices, base_keep, *indices, *values
    )


# ----------------------------------------------------------------------------------------------------------------
# Optimizer-state remapping
# ----------------------------------------------------------------------------------------------------------------


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


def isin_sorted(x: torch.Tensor, sorted_set: torch.Tensor) -> torch.Tensor:
    """`torch.isin(x, sorted_set)` for an ascending `sorted_set`: one searchsorted, no sort or unique of either
    tensor, no host synchronisation."""
    if sorted_set.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    loc = torch.searchsorted(sorted_set, x).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[loc] == x


def optimizer_state(optimizer, param: torch.Tensor) -> dict | None:
    """The optimizer's state dict entry for `param` (None if it has none yet); unwraps accelerate's wrapper."""
    if optimizer is None:
        return None
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner.state.get(param)


def _remap(t: torch.Tensor, src: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    picked = t.index_select(0, src.to(t.device))
    return torch.where(kept.to(t.device), picked, torch.zeros((), dtype=t.dtype, device=t.device))


def _write_whole_(dst: torch.Tensor, whole: torch.Tensor, what: str) -> None:
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
        new = _remap(full_tensor(t), src, kept)
        if is_dtensor(t):
            _write_whole_(t, new, f"optimizer state `{key}`")
        elif new.shape == t.shape:
            t.copy_(new)
        else:
            state[key] = new


# ----------------------------------------------------------------------------------------------------------------
# The tuner layer base
# ----------------------------------------------------------------------------------------------------------------


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


def _register_load_pre_hook(module: nn.Module, hook) -> None:
    if hasattr(module, "register_load_state_dict_pre_hook"):
        module.register_load_state_dict_pre_hook(hook)
    else:  # older torch
        module._register_load_state_dict_pre_hook(hook, with_module=True)


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

    Subclasses set `sparse_prefix`, `adapter_layer_names` and `other_param_names` (see module docstring).
    """

    sparse_prefix: str = ""
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        p = self.sparse_prefix
        expected = (p + "values",), (p + "indices", p + "residual_indices", p + "residual_values", p + "ready")
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
        self._disable_adapters = False
        self.merged_adapters = []
        # Optional fn(dense_grad_fp32) called on every backward of this layer (e.g. a grow criterion).
        self.sparse_grad_hook: Callable[[torch.Tensor], None] | None = None
        # Adapters whose ready flag was read as True (see `is_ready`); cleared when a state dict loads.
        self._sparse_ready_cache: set[str] = set()
        # The tuner model's effective-weight cache (_sparse_delta_cache.py), set by the tuner; None: transient W_eff.
        self._sparse_cache = None
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"sparse-delta tuners support torch.nn.Linear only, got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        _register_load_pre_hook(self, SparseDeltaLayer._sparse_load_pre_hook)

    # -- containers ---------------------------------------------------------------------------------------------
    def _c(self, suffix: str):
        return getattr(self, self.sparse_prefix + suffix)

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features

    def add_sparse_adapter(self, adapter_name: str, k: int, indices: torch.Tensor | None = None) -> None:
        """Create (or replace) adapter `adapter_name` with k zero values. Without `indices`, placeholder
        positions 0..k-1 are written and the ready flag stays False (values are 0, so the layer is exact
        either way); the tuner selects real indices later."""
        weight = self.get_base_layer().weight
        numel = self.weight_numel
        if not 1 <= k <= numel:
            raise ValueError(f"k must be in [1, {numel}] for a {self.out_features}x{self.in_features} weight, got {k}")
        dev = weight.device if weight.device.type != "meta" else torch.device("cpu")
        ready = indices is not None
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
        self._sparse_ready_cache.discard(adapter_name)
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
        per layer per step cost LIFT ~15% of its small-batch step time). Loading a state dict clears the cache."""
        cache = self._sparse_ready_cache
        if adapter_name in cache:
            return True
        ready = bool(self._c("ready")[adapter_name])
        if ready:
            cache.add(adapter_name)
        return ready

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
            _write_whole_(param, new_values, f"values of adapter `{adapter_name}`")
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
        """Resize residual buffers to the saved lengths (they change at every refresh) and check that saved
        indices fit this base weight, before the containers load."""
        p = module.sparse_prefix
        numel = module.weight_numel
        where = prefix.rstrip(".").removeprefix("base_model.model.")
        module._sparse_ready_cache.clear()  # the saved ready flags replace the cached ones
        module._invalidate_sparse_cache()
        for attr in ("indices", "residual_indices", "residual_values", "values"):
            container = getattr(module, p + attr)
            for name in list(container.keys()):
                key = f"{prefix}{p}{attr}.{name}"
                if key not in state_dict:
                    continue
                saved, current = state_dict[key], container[name]
                if attr.endswith("indices"):
                    check_indices(saved, numel, where)
                if saved.shape == current.shape:
                    continue
                if attr.startswith("residual"):
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
