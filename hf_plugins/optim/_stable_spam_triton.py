"""Fused multi-tensor Triton kernels for StableSPAM (`fused=True`, CUDA only).

Every launch covers all tensors of a parameter group: a block table (built once per set of tensor sizes and cached
by the optimizer) maps each program to one BLOCK-sized chunk of one tensor, and a pointer table (re-uploaded only
when an address changes) gives the tensors' addresses. Per step and group:

1. `_max_sq_kernel` reads g once: per block max|g| (NaN counted as +inf, so the same number is the finiteness check)
   and the sum of g^2.
2. `_segment_kernel` (one program per tensor): per-tensor max|g|; the AdaClip threshold and clip factor follow
   from torch ops on [n_tensors] vectors (no host synchronisation).
3. `_clip_fix_kernel`: the clipped sum of squares. A block whose max|g| is at or below its tensor's threshold has
   nothing clipped, so its clipped sum equals the unclipped one from pass 1 and g is not read again (predicated-off
   loads); only blocks holding a clipped entry re-read their chunk. A second `_segment_kernel` gives the
   per-tensor clipped norm and clipped-entry count.
4. `_update_kernel`: re-applies the clip and the AdaGN factor on the fly and does the AdamW update, reading p, g,
   m, v once and writing p, m, v once (on a moment-reset step m and v are not read). It is gated by a device flag,
   so a step with a non-finite gradient writes nothing.

Traffic per fp32 parameter: 4 (pass 1) + ~0 (pass 3, except blocks with clipped entries) + 28 (update) bytes, i.e.
~1.14x fused AdamW's 28. Loads are 128-bit vectorised when every address is 16-byte aligned and every numel a
multiple of 16 bytes worth of elements (checked on the host; otherwise a scalar-load variant of the same kernels).
"""

from __future__ import annotations

import torch


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU images without triton
    triton = None
    tl = None

BLOCK = 2048  # elements per program; 8 warps -> 8 elements (two 128-bit vectors of fp32) per thread and array
NUM_WARPS = 8
SEG_BLOCK = 1024  # partials reduced per iteration of `_segment_kernel`
NUM_SCALARS = 5  # thr, clip factor, AdaGN factor, sqrt(bias correction 2), -lr / bias correction 1


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _tensor_ptr(table, t, IS_BF16: tl.constexpr, ALIGNED: tl.constexpr):
        raw = tl.load(table + t)
        if IS_BF16:
            ptr = raw.to(tl.pointer_type(tl.bfloat16))
        else:
            ptr = raw.to(tl.pointer_type(tl.float32))
        if ALIGNED:
            ptr = tl.multiple_of(ptr, 16)
        return ptr

    @triton.jit
    def _block_info(block_tensor, block_start, numels, ALIGNED: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.multiple_of(tl.load(block_start + pid), BLOCK_SIZE)
        n = tl.load(numels + t)
        if ALIGNED:
            n = tl.multiple_of(n, 8)
        offs = start + tl.arange(0, BLOCK_SIZE)
        offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK_SIZE), BLOCK_SIZE)
        return pid, t, offs, offs < n

    @triton.jit
    def _max_sq_kernel(
        g_table,
        block_tensor,
        block_start,
        numels,
        out_max,
        out_sq,
        IS_BF16: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        pid, t, offs, mask = _block_info(block_tensor, block_start, numels, ALIGNED, BLOCK_SIZE)
        g_ptr = _tensor_ptr(g_table, t, IS_BF16, ALIGNED)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.abs(g)
        a = tl.where(a == a, a, float("inf"))  # noqa: PLR0124 (NaN -> inf: the block max is also the finiteness check)
        tl.store(out_max + pid, tl.max(a, axis=0))
        tl.store(out_sq + pid, tl.sum(g * g, axis=0))

    @triton.jit
    def _segment_kernel(
        a,
        b,
        seg_first,
        seg_len,
        out_a,
        out_b,
        A_IS_MAX: tl.constexpr,
        MAX_LEN: tl.constexpr,  # the longest segment: a loop bound all programs share (masked past their own)
        SEG: tl.constexpr,
    ):
        """Per tensor t: out_a[t] = max (or fp64 sum) of a over its blocks, out_b[t] = fp64 sum of b."""
        t = tl.program_id(0)
        first = tl.load(seg_first + t)
        length = tl.load(seg_len + t)
        if A_IS_MAX:
            acc_a = tl.zeros([SEG], dtype=tl.float32)
        else:
            acc_a = tl.zeros([SEG], dtype=tl.float64)
        acc_b = tl.zeros([SEG], dtype=tl.float64)
        for i in range(0, MAX_LEN, SEG):
            idx = i + tl.arange(0, SEG)
            m = idx < length
            if A_IS_MAX:
                acc_a = tl.maximum(acc_a, tl.load(a + first + idx, mask=m, other=0.0))
            else:
                acc_a += tl.load(a + first + idx, mask=m, other=0.0).to(tl.float64)
            acc_b += tl.load(b + first + idx, mask=m, other=0.0).to(tl.float64)
        if A_IS_MAX:
            tl.store(out_a + t, tl.max(acc_a, axis=0))
        else:
            tl.store(out_a + t, tl.sum(acc_a, axis=0))
        tl.store(out_b + t, tl.sum(acc_b, axis=0))

    @triton.jit
    def _clip_fix_kernel(
        g_table,
        block_tensor,
        block_start,
        numels,
        block_max,
        block_sq,
        scalars,  # fp32 [n_tensors, NUM_SCALARS]
        out_sq,
        out_cnt,
        IS_BF16: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        NS: tl.constexpr,
    ):
        pid, t, offs, mask = _block_info(block_tensor, block_start, numels, ALIGNED, BLOCK_SIZE)
        thr = tl.load(scalars + t * NS)
        c = tl.load(scalars + t * NS + 1)
        bmax = tl.load(block_max + pid)
        need = bmax > thr  # some entry of this block is clipped: re-read it; else the pass-1 sum is exact
        # (the scalar condition is broadcast to the block before `&`: Triton's CPU interpreter needs equal ranks)
        need_b = (tl.zeros([BLOCK_SIZE], dtype=tl.float32) + bmax) > thr
        g_ptr = _tensor_ptr(g_table, t, IS_BF16, ALIGNED)
        g = tl.load(g_ptr + offs, mask=mask & need_b, other=0.0).to(tl.float32)
        hit = tl.abs(g) > thr
        gc = tl.where(hit, g * c, g)
        sq = tl.sum(gc * gc, axis=0)
        tl.store(out_sq + pid, tl.where(need, sq, tl.load(block_sq + pid)))
        tl.store(out_cnt + pid, tl.sum(hit.to(tl.float32), axis=0))

    @triton.jit
    def _update_kernel(
        p_table,
        g_table,
        m_table,
        v_table,
        block_tensor,
        block_start,
        numels,
        scalars,
        ok,  # int32 [1]: 0 when the step is skipped (non-finite gradient): nothing is read or written
        beta1,
        beta2,
        eps,
        decay,
        IS_BF16: tl.constexpr,
        ALIGNED: tl.constexpr,
        RESET: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        NS: tl.constexpr,
    ):
        _, t, offs, mask = _block_info(block_tensor, block_start, numels, ALIGNED, BLOCK_SIZE)
        mask = mask & ((tl.zeros([BLOCK_SIZE], dtype=tl.int32) + tl.load(ok)) != 0)
        p_ptr = _tensor_ptr(p_table, t, IS_BF16, ALIGNED)
        g_ptr = _tensor_ptr(g_table, t, IS_BF16, ALIGNED)
        m_ptr = _tensor_ptr(m_table, t, IS_BF16, ALIGNED)
        v_ptr = _tensor_ptr(v_table, t, IS_BF16, ALIGNED)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        thr = tl.load(scalars + t * NS)
        c = tl.load(scalars + t * NS + 1)
        k = tl.load(scalars + t * NS + 2)
        bc2_sqrt = tl.load(scalars + t * NS + 3)
        neg_step = tl.load(scalars + t * NS + 4)
        g = tl.where(tl.abs(g) > thr, g * c, g) * k
        p = p * decay
        if RESET:  # moments zeroed before this step's update: no need to read them
            m = (1.0 - beta1) * g
            v = (1.0 - beta2) * g * g
        else:
            m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            m = m + (1.0 - beta1) * (g - m)
            v = v * beta2 + (1.0 - beta2) * g * g
        denom = tl.sqrt(v) / bc2_sqrt + eps
        p = p + neg_step * (m / denom)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


class FusedLayout:
    """Block tables for one list of tensor sizes, built once and cached by the optimizer per group; the device
    pointer table is re-uploaded only when an address changes (e.g. gradients re-allocated by the backward)."""

    def __init__(self, numels: list[int], device: torch.device):
        blocks = [(n + BLOCK - 1) // BLOCK for n in numels]
        self.key = tuple(numels)
        self.n_tensors = len(numels)
        self.n_blocks = sum(blocks)
        self.numels = torch.tensor(numels, dtype=torch.int64, device=device)
        tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), torch.tensor(blocks))
        first = torch.cumsum(torch.tensor([0, *blocks[:-1]]), 0)
        start = (torch.arange(self.n_blocks) - first[tensor_of_block]) * BLOCK
        self.block_tensor = tensor_of_block.to(torch.int32).to(device)
        self.block_start = start.to(torch.int64).to(device)
        self.seg_first = first.to(torch.int64).to(device)
        self.seg_len = torch.tensor(blocks, dtype=torch.int64, device=device)
        self.max_len = max(blocks)
        self.device = device
        self.numels_ok = all(n % 8 == 0 for n in numels)  # 8 elements: 16 bytes of bf16, 32 of fp32
        self._ptr_key: tuple | None = None
        self._ptrs: torch.Tensor | None = None
        self.aligned = False

    def pointers(self, *tensor_lists) -> torch.Tensor:
        """An int64 [len(tensor_lists), n_tensors] table of data pointers on the device, cached while unchanged."""
        key = tuple(x.data_ptr() for lst in tensor_lists for x in lst)
        if key != self._ptr_key:
            host = torch.tensor(key, dtype=torch.int64).view(len(tensor_lists), self.n_tensors)
            if self.device.type == "cuda":
                host = host.pin_memory()  # asynchronous copy; the caching host allocator keeps it alive
            self._ptrs = host.to(self.device, non_blocking=True)
            self._ptr_key = key
            self.aligned = self.numels_ok and all(a % 16 == 0 for a in key)
        return self._ptrs


def _grid(layout: FusedLayout) -> tuple[int]:
    return (layout.n_blocks,)


def max_and_sq(
    layout: FusedLayout, ptrs: torch.Tensor, is_bf16: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-block max|g| (fp32, NaN as inf) and sum of g^2, plus the per-tensor max|g| (fp32 [n_tensors])."""
    dev = layout.device
    bmax = torch.empty(layout.n_blocks, dtype=torch.float32, device=dev)
    bsq = torch.empty(layout.n_blocks, dtype=torch.float32, device=dev)
    _max_sq_kernel[_grid(layout)](
        ptrs[1],
        layout.block_tensor,
        layout.block_start,
        layout.numels,
        bmax,
        bsq,
        IS_BF16=is_bf16,
        ALIGNED=layout.aligned,
        BLOCK_SIZE=BLOCK,
        num_warps=NUM_WARPS,
    )
    gmax = torch.empty(layout.n_tensors, dtype=torch.float32, device=dev)
    unused = torch.empty(layout.n_tensors, dtype=torch.float64, device=dev)
    _segment_kernel[(layout.n_tensors,)](
        bmax,
        bsq,
        layout.seg_first,
        layout.seg_len,
        gmax,
        unused,
        A_IS_MAX=True,
        MAX_LEN=layout.max_len,
        SEG=SEG_BLOCK,
        num_warps=4,
    )
    return bmax, bsq, gmax


def clipped_sq_norms(
    layout: FusedLayout, ptrs: torch.Tensor, is_bf16: bool, bmax: torch.Tensor, bsq: torch.Tensor, scalars
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor (sum of squares of the clipped gradient, clipped-entry count), fp64 vectors."""
    dev = layout.device
    out_sq = torch.empty(layout.n_blocks, dtype=torch.float32, device=dev)
    out_cnt = torch.empty(layout.n_blocks, dtype=torch.float32, device=dev)
    _clip_fix_kernel[_grid(layout)](
        ptrs[1],
        layout.block_tensor,
        layout.block_start,
        layout.numels,
        bmax,
        bsq,
        scalars,
        out_sq,
        out_cnt,
        IS_BF16=is_bf16,
        ALIGNED=layout.aligned,
        BLOCK_SIZE=BLOCK,
        NS=NUM_SCALARS,
        num_warps=NUM_WARPS,
    )
    sq = torch.empty(layout.n_tensors, dtype=torch.float64, device=dev)
    cnt = torch.empty(layout.n_tensors, dtype=torch.float64, device=dev)
    _segment_kernel[(layout.n_tensors,)](
        out_sq,
        out_cnt,
        layout.seg_first,
        layout.seg_len,
        sq,
        cnt,
        A_IS_MAX=False,
        MAX_LEN=layout.max_len,
        SEG=SEG_BLOCK,
        num_warps=4,
    )
    return sq, cnt


def update(
    layout: FusedLayout,
    ptrs: torch.Tensor,
    is_bf16: bool,
    scalars: torch.Tensor,
    ok: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    decay: float,
    reset: bool,
) -> None:
    _update_kernel[_grid(layout)](
        ptrs[0],
        ptrs[1],
        ptrs[2],
        ptrs[3],
        layout.block_tensor,
        layout.block_start,
        layout.numels,
        scalars,
        ok,
        beta1,
        beta2,
        eps,
        decay,
        IS_BF16=is_bf16,
        ALIGNED=layout.aligned,
        RESET=bool(reset),
        BLOCK_SIZE=BLOCK,
        NS=NUM_SCALARS,
        num_warps=NUM_WARPS,
    )
