"""The linear layer of the sparse-delta tuners (LIFT, SEFT) as custom autograd functions with a LoRA-sized footprint.

    sparse_delta_linear(x, weight, bias, indices, values, grad_hook=None, zero_indices=None, base_keep=None,
                        effective_weight=None) -> Tensor

computes y = x W_eff^T + b with W_eff = W ⊙ (1 - 1_Z) + sum_i scatter(indices_i, values_i). It saves only `x` and
references to `weight`, the indices and the values; the dense dL/dW of the layer exists only inside backward, is
gathered at each index set (the gradient of each values tensor) and freed at once. `grad_hook(dense_grad_fp32)` sees
it first (SEFT's grow and sensitivity criteria; this rank's gradient under DDP / FSDP2: the hook averages over ranks
what it needs, in place).

Why a custom function: `F.linear(x, W0 + scatter(...))` makes autograd save the dense effective weight (about 1x the
weights as extra activation memory; 2x for SHiRA-style clone + sparse add), see docs/lift.md "Performance".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._sparse_delta_ops import add_sparse_, compute_dtype, gather_flat, zero_add_


__all__ = ["CachedSparseDeltaLinearFunction", "SparseDeltaLinearFunction", "sparse_delta_linear"]


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result: for bf16/fp16 inputs on CUDA `torch.mm(..., out_dtype=float32)` (tensor-core speed,
    fp32 accumulate and output, so the gathered gradient entries carry no bf16 rounding); elsewhere the product in the
    input dtype, upcast (what full fine-tuning's bf16 weight gradient holds)."""
    if a.dtype in (torch.float32, torch.float64):
        return a @ b
    if a.device.type == "cuda":
        return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).float()


def _no_autocast(device_type: str):
    """`torch.autocast(device_type, enabled=False)` when autocast is on, else a no-op context (the hot path skips
    building an autocast context it does not need)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


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
    """y = x (W ⊙ (1 - 1_zero) + sum_i scatter(indices_i, values_i))^T + bias, with a LoRA-sized autograd footprint.

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
                    # Under DDP/FSDP2 this is this rank's gradient: a hook that chooses positions (SEFT's growth)
                    # averages over ranks what it needs (in place, before the gathers below read `dense`).
                    ctx.grad_hook(dense)
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
                    ctx.grad_hook(dense)
                if needs[4]:
                    grad_values = dense.view(-1).index_select(0, indices)
                    if grad_values.dtype != ctx.values_dtype:
                        grad_values = grad_values.to(ctx.values_dtype)
                del dense
            if ctx.bias_dtype is not None and needs[2]:
                grad_b = g2.sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_b, None, grad_values, None


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
