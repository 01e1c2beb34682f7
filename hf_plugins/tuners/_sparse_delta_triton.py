"""One Triton kernel for `add_sparse_` on CUDA: `W.view(-1)[idx] = round(W[idx] + alpha * v)` in a single launch.

The ATen form of the same update (`index_select`, upcast, add, downcast, `index_put_`) is five kernels. A LIFT layer
runs it twice per training step (forward and backward rebuild the effective weight), a SEFT layer four times (its
re-pruned set R and its deltas A), so on a 0.5B model the ATen form costs several thousand tiny launches per step;
each one occupies the GPU for a few microseconds however little it does. The kernel reads W at the indices, adds in
fp32 and rounds once to W's dtype (round to nearest even, as `Tensor.to`), so results are bit-identical to the ATen
path (tests/test_sparse_delta.py checks it in Triton's CPU interpreter).
"""

from __future__ import annotations

import os

import torch


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU images without triton
    triton = None
    tl = None

BLOCK = 1024
NUM_WARPS = 4
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # a trainable values tensor is an nn.Parameter
# Triton's CPU interpreter (tests): read once, as triton itself reads it when the kernels are defined
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable(weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether `add_sparse_` may use the kernel: triton present, CUDA (or the interpreter), fp32/bf16/fp16 weight,
    plain contiguous tensors (not DTensors) on one device."""
    if triton is None or weight.dtype not in _DTYPES or values.dtype not in (*_DTYPES, torch.float64):
        return False
    if not all(type(t) in _PLAIN for t in (weight, indices, values)):  # DTensors and other subclasses: ATen path
        return False
    if not (weight.is_contiguous() and indices.is_contiguous() and values.is_contiguous()):
        return False
    dev = weight.device
    if indices.device != dev or values.device != dev or indices.dtype not in (torch.int32, torch.int64):
        return False
    return dev.type == "cuda" or (dev.type == "cpu" and _INTERPRETING)


if triton is not None:

    @triton.jit
    def _round_to_bf16_grid(x):
        """fp32 -> the nearest bf16 value (ties to even), still as fp32 with the low 16 bits zero, so the final cast
        is exact whatever rounding it uses (Triton's CPU interpreter truncates). NaN passes through."""
        u = x.to(tl.uint32, bitcast=True)
        u = (u + (((u >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return tl.where(x != x, x, u.to(tl.float32, bitcast=True))

    @triton.jit
    def _add_sparse_kernel(w_ptr, idx_ptr, val_ptr, n, alpha, IS_BF16: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < n
        idx = tl.load(idx_ptr + offs, mask=mask, other=0).to(tl.int64)
        w = tl.load(w_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(val_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc = w + alpha * v
        if IS_BF16:
            acc = _round_to_bf16_grid(acc)
        tl.store(w_ptr + idx, acc.to(w_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _zero_add_kernel(
        w_ptr,
        z_ptr,
        nz,
        nbz,
        idx_ptr,
        val_ptr,
        keep_ptr,
        n,
        alpha,
        HAS_KEEP: tl.constexpr,
        IS_BF16: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        """Programs [0, nbz): W[z] = 0 for the zero set. The others: W[idx] = round(keep * W[idx] + alpha * v). The
        zero set is disjoint from idx, so the two halves never touch the same entry (no ordering needed)."""
        pid = tl.program_id(0)
        if pid < nbz:
            offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
            mask = offs < nz
            z = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.int64)
            tl.store(w_ptr + z, tl.zeros((BLOCK_SIZE,), dtype=tl.float32).to(w_ptr.dtype.element_ty), mask=mask)
        else:
            offs = (pid - nbz).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
            mask = offs < n
            idx = tl.load(idx_ptr + offs, mask=mask, other=0).to(tl.int64)
            w = tl.load(w_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            if HAS_KEEP:
                keep = tl.load(keep_ptr + offs, mask=mask, other=1)
                w = tl.where(keep != 0, w, 0.0)
            v = tl.load(val_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc = w + alpha * v
            if IS_BF16:
                acc = _round_to_bf16_grid(acc)
            tl.store(w_ptr + idx, acc.to(w_ptr.dtype.element_ty), mask=mask)


def zero_add_triton_(
    weight: torch.Tensor,
    zero: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    keep: torch.Tensor | None,
    alpha: float = 1.0,
) -> None:
    """In place, one launch: `W[zero] = 0` and `W[idx] = round(keep * W[idx] + alpha * v)` (zero disjoint from
    idx; `keep` uint8 per idx entry or None). Call only where `usable(weight, indices, values)` holds and `zero`
    (int32/int64) lives on the weight's device."""
    n, nz = indices.numel(), zero.numel()
    vals = values.detach()
    if vals.dtype == torch.float64:
        vals = vals.float()
    nbz = triton.cdiv(nz, BLOCK)
    grid = (nbz + triton.cdiv(n, BLOCK),)
    _zero_add_kernel[grid](
        weight.view(-1),
        zero,
        nz,
        nbz,
        indices,
        vals,
        keep if keep is not None else indices,
        n,
        float(alpha),
        HAS_KEEP=keep is not None,
        IS_BF16=weight.dtype == torch.bfloat16,
        BLOCK_SIZE=BLOCK,
        num_warps=NUM_WARPS,
    )


def add_sparse_triton_(weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, alpha: float) -> None:
    """In place, one launch; call only where `usable(...)` is True."""
    n = indices.numel()
    flat = weight.view(-1)
    vals = values.detach()
    if vals.dtype == torch.float64:  # fp64 values against a <= fp32 weight: fp32 is the accumulation dtype anyway
        vals = vals.float()
    grid = (triton.cdiv(n, BLOCK),)
    is_bf16 = weight.dtype == torch.bfloat16
    _add_sparse_kernel[grid](
        flat, indices, vals, n, float(alpha), IS_BF16=is_bf16, BLOCK_SIZE=BLOCK, num_warps=NUM_WARPS
    )
