"""One multi-tensor Triton launch for AlphaDecay's AdamW step, with each tensor's own decoupled decay (CUDA only).

torch's AdamW applies the decoupled decay `p <- p * (1 - lr * wd)` before the moment update, with one `wd` per group.
AlphaDecay gives every analysed matrix its own `wd`, so the merged path (`alphadecay.py`) runs that decay as a separate
`torch._foreach_mul_` pass (read and write p: 8 bytes per fp32 parameter) before torch's fused AdamW (28 bytes). Here
the decay factor is one more per-tensor scalar of the update, so p, g, m, v are read once and p, m, v written once
for every tensor of every group in a single launch (28 bytes per parameter, as fused AdamW alone).

Per tensor t the kernel reads fp32 scalars `[1 - lr wd, -lr / (1 - beta1^step), sqrt(1 - beta2^step), beta1, beta2,
eps]` (computed by torch ops on [n_tensors] vectors, no host synchronisation) and does, as `torch.optim.AdamW`:

    p <- p * (1 - lr wd);  m <- m + (1 - beta1) (g - m);  v <- beta2 v + (1 - beta2) g^2
    p <- p - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

The block table, pointer table and 128-bit-load machinery are Stable-SPAM's (`_stable_spam_triton.FusedLayout`).
fp32 parameters, gradients and moments only (bf16 parameters take the unfused path).
"""

from __future__ import annotations

import torch

from ._stable_spam_triton import BLOCK, NUM_WARPS, FusedLayout, available, triton


__all__ = ["NUM_SCALARS", "FusedLayout", "adamw_update", "available"]

NUM_SCALARS = 6  # decay factor, -step size, sqrt(bias correction 2), beta1, beta2, eps

if triton is not None:
    import triton.language as tl

    from ._stable_spam_triton import _block_info, _tensor_ptr

    @triton.jit
    def _adamw_decay_kernel(
        p_table,
        g_table,
        m_table,
        v_table,
        block_tensor,
        block_start,
        numels,
        scalars,  # fp32 [n_tensors, NS]
        ALIGNED: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        NS: tl.constexpr,
    ):
        _, t, offs, mask = _block_info(block_tensor, block_start, numels, ALIGNED, BLOCK_SIZE)
        p_ptr = _tensor_ptr(p_table, t, False, ALIGNED)
        g_ptr = _tensor_ptr(g_table, t, False, ALIGNED)
        m_ptr = _tensor_ptr(m_table, t, False, ALIGNED)
        v_ptr = _tensor_ptr(v_table, t, False, ALIGNED)
        decay = tl.load(scalars + t * NS)
        neg_step = tl.load(scalars + t * NS + 1)
        bc2_sqrt = tl.load(scalars + t * NS + 2)
        beta1 = tl.load(scalars + t * NS + 3)
        beta2 = tl.load(scalars + t * NS + 4)
        eps = tl.load(scalars + t * NS + 5)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        p = p * decay
        m = m + (1.0 - beta1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v = v * beta2 + (1.0 - beta2) * g * g
        denom = tl.sqrt(v) / bc2_sqrt + eps
        p = p + neg_step * (m / denom)
        tl.store(p_ptr + offs, p, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)


def step_scalars(steps: torch.Tensor, hyper: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The kernel's fp32 [n, NUM_SCALARS] table on `device` from the per-tensor step counts (already incremented,
    any device) and fp64 hyperparameters `hyper` [n, 5] = (lr, wd, beta1, beta2, eps) on the steps' device; bias
    corrections in fp64 as torch's single-tensor / foreach AdamW computes them (Python floats)."""
    if steps.device.type == "cuda":  # `fused=True` groups keep `step` on the device
        hyper = hyper.pin_memory().to(steps.device, non_blocking=True)
    lr, wd, b1, b2, eps = hyper.unbind(1)
    t = steps.to(torch.float64)
    out = torch.stack((1.0 - lr * wd, -lr / (1.0 - b1.pow(t)), (1.0 - b2.pow(t)).sqrt(), b1, b2, eps), dim=1).to(
        torch.float32
    )
    if out.device != device:
        if out.device.type == "cpu" and device.type == "cuda":
            out = out.pin_memory()  # asynchronous copy; the caching host allocator keeps it alive
        out = out.to(device, non_blocking=True)
    return out


def adamw_update(layout: FusedLayout, ptrs: torch.Tensor, scalars: torch.Tensor) -> None:
    """One launch over every block of every tensor of `layout`; `ptrs` = `layout.pointers(params, grads, exp_avgs,
    exp_avg_sqs)`, `scalars` from `step_scalars`."""
    _adamw_decay_kernel[(layout.n_blocks,)](
        ptrs[0],
        ptrs[1],
        ptrs[2],
        ptrs[3],
        layout.block_tensor,
        layout.block_start,
        layout.numels,
        scalars,
        ALIGNED=layout.aligned,
        BLOCK_SIZE=BLOCK,
        NS=NUM_SCALARS,
        num_warps=NUM_WARPS,
    )
