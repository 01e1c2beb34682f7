"""Triton kernels of StableSPAM's fused path (`fused=True`, the default on CUDA): five launches per step cover every
tensor of every fused parameter group of one device and dtype (a "bucket", `_stable_spam_fused.py`).

A block table maps each program of the element-wise kernels to one BLOCK-sized chunk of one tensor; a pointer table
holds the tensors' addresses; a group table holds each group's hyperparameters for this step (fp64 rows); every
tensor's scalar statistics live in packed vectors (the optimizer state's 0-d entries are views of them). Per step:

1. `_stats_kernel` (one program per block) reads g once: block max|g| (NaN counted as +inf, so the same number is
   the finiteness check) and block sum g^2.
2. `_threshold_kernel` (one program per tensor): max|g|, finiteness, the AdaClip threshold thr = m_max / (1 - theta^t)
   and clip factor thr / max|g| (fp64).
3. `_clip_kernel` (one program per block): the clipped sum of squares. A block whose max|g| is at or below its
   tensor's threshold has nothing clipped, so its sum is pass 1's and g is not read (predicated-off loads); only blocks
   holding a clipped entry re-read their chunk.
4. `_scale_kernel` (one program per tensor): the clipped norm, the step's global finiteness flag, AdaGN's factor,
   Adam's bias corrections, and the new statistics and counters (written only when the step is finite).
5. `_update_kernel` (one program per block): clip and AdaGN factor re-applied on the fly, decoupled decay and the
   AdamW update, reading p, g, m, v once and writing p, m, v once (m and v are not read on a moment-reset step); a
   skipped (non-finite) step reads and writes nothing.

Traffic per fp32 parameter: 4 (pass 1) + 28 (pass 5) bytes, plus 4 for each entry of a block that holds a clipped
entry (a handful of blocks per tensor in steady state); passes 2-4 touch O(blocks) bytes. Loads and stores are 128-bit
vectors when every address is 16-byte aligned and every numel a multiple of 8 (checked on the host; otherwise the
same kernels with scalar accesses). The scalar kernels compile without fp contraction, so their fp64 arithmetic is
the foreach path's operation for operation (powers as exp2(t log2 x), within 1e-15 relative of `pow`).
"""

from __future__ import annotations

import torch


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU images without triton
    triton = None
    tl = None

BLOCK = 4096  # elements per program of the element-wise kernels (8 warps: 16 elements per thread and array)
NUM_WARPS = 8
SEG = 1024  # per-block partials reduced per loop iteration of the per-tensor kernels
# Columns of the fp64 group table (one row per parameter group, rebuilt every step).
G_BETA1, G_BETA2, G_GAMMA1, G_GAMMA2, G_THETA, G_EPS, G_NEG_LR, G_DECAY = range(8)
G_ADACLIP, G_ADAGN, G_RESET, G_ONE_MINUS_BETA1, G_ONE_MINUS_BETA2 = range(8, 13)
NG = 13
# Columns of the fp32 per-tensor scalar table the element-wise kernels read.
S_THR, S_CLIP, S_SCALE, S_BC2_SQRT, S_NEG_STEP = range(5)
NS = 5


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
    def _pow(x, t):
        """x ** t for fp64 x in (0, 1) and t >= 1 (exp2 / log2: the interpreter has no fp64 `pow`)."""
        return tl.exp2(t * tl.log2(x))

    @triton.jit
    def _stats_kernel(
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
        g = tl.load(_tensor_ptr(g_table, t, IS_BF16, ALIGNED) + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.abs(g)
        a = tl.where(a == a, a, float("inf"))  # noqa: PLR0124 (NaN -> inf: the block max is also the finiteness check)
        tl.store(out_max + pid, tl.max(a, axis=0))
        tl.store(out_sq + pid, tl.sum(g * g, axis=0))

    @triton.jit
    def _threshold_kernel(
        block_max,
        seg_first,
        seg_len,
        tensor_group,
        groups,  # fp64 [n_groups, NGC]
        step,  # int64 [n_tensors]: updates so far (t - 1)
        m_max,  # fp32 [n_tensors]
        scal,  # fp32 [n_tensors, NSC]: writes thr and the clip factor
        new_m_max,  # fp64 [n_tensors]
        finite,  # int32 [n_tensors]
        NGC: tl.constexpr,
        NSC: tl.constexpr,
        SEG_SIZE: tl.constexpr,
    ):
        t = tl.program_id(0)
        first = tl.load(seg_first + t)
        length = tl.load(seg_len + t)
        acc = tl.zeros([SEG_SIZE], dtype=tl.float32)
        for i in range(0, length, SEG_SIZE):
            idx = i + tl.arange(0, SEG_SIZE)
            acc = tl.maximum(acc, tl.load(block_max + first + idx, mask=idx < length, other=0.0))
        gmax32 = tl.max(acc, axis=0)
        row = groups + tl.load(tensor_group + t) * NGC
        theta = tl.load(row + 4)
        adaclip = tl.load(row + 8) != 0.0
        gmax = gmax32.to(tl.float64)
        tt = (tl.load(step + t) + 1).to(tl.float64)
        mm = theta * tl.load(m_max + t).to(tl.float64) + (1.0 - theta) * gmax
        thr = mm / (1.0 - _pow(theta, tt))
        clip = tl.where(gmax > thr, thr / tl.maximum(gmax, 2.2250738585072014e-308), 1.0)
        tl.store(scal + t * NSC + 0, tl.where(adaclip, thr, float("inf")).to(tl.float32))
        tl.store(scal + t * NSC + 1, tl.where(adaclip, clip, 1.0).to(tl.float32))
        tl.store(new_m_max + t, mm)
        tl.store(finite + t, (gmax32 < float("inf")).to(tl.int32))

    @triton.jit
    def _clip_kernel(
        g_table,
        block_tensor,
        block_start,
        numels,
        block_max,
        block_sq,
        scal,
        out_sq,
        out_cnt,
        IS_BF16: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        NSC: tl.constexpr,
    ):
        pid, t, offs, mask = _block_info(block_tensor, block_start, numels, ALIGNED, BLOCK_SIZE)
        thr = tl.load(scal + t * NSC + 0)
        c = tl.load(scal + t * NSC + 1)
        bmax = tl.load(block_max + pid)
        need = bmax > thr  # some entry of this block is clipped: re-read it; else the pass-1 sum is exact
        # (the scalar condition is broadcast to the block before `&`: Triton's CPU interpreter needs equal ranks)
        need_b = (tl.zeros([BLOCK_SIZE], dtype=tl.float32) + bmax) > thr
        g_ptr = _tensor_ptr(g_table, t, IS_BF16, ALIGNED)
        g = tl.load(g_ptr + offs, mask=mask & need_b, other=0.0).to(tl.float32)
        hit = tl.abs(g) > thr
        gc = tl.where(hit, g * c, g)
        tl.store(out_sq + pid, tl.where(need, tl.sum(gc * gc, axis=0), tl.load(block_sq + pid)))
        tl.store(out_cnt + pid, tl.sum(hit.to(tl.float32), axis=0))

    @triton.jit
    def _scale_kernel(
        block_sq,
        block_cnt,
        seg_first,
        seg_len,
        tensor_group,
        groups,
        finite,
        n_tensors,
        step,  # int64 state: t - 1 -> t
        moment_step,  # int64 state: s
        m_max,  # fp32 state
        m_norm,  # fp32 state
        v_norm,  # fp32 state
        new_m_max,
        scal,
        clip_acc,  # fp64 [n_tensors]: clipped entries, accumulated until `pop_stats`
        scale_out,  # fp64 [n_tensors]: the AdaGN factor of this step (NaN for tensors without AdaGN)
        ok_out,  # int32 [1]: 1 when the step is finite
        NGC: tl.constexpr,
        NSC: tl.constexpr,
        SEG_SIZE: tl.constexpr,
    ):
        t = tl.program_id(0)
        first = tl.load(seg_first + t)
        length = tl.load(seg_len + t)
        acc_sq = tl.zeros([SEG_SIZE], dtype=tl.float64)
        acc_cnt = tl.zeros([SEG_SIZE], dtype=tl.float64)
        for i in range(0, length, SEG_SIZE):
            idx = i + tl.arange(0, SEG_SIZE)
            m = idx < length
            acc_sq += tl.load(block_sq + first + idx, mask=m, other=0.0).to(tl.float64)
            acc_cnt += tl.load(block_cnt + first + idx, mask=m, other=0.0).to(tl.float64)
        acc_ok = tl.full([SEG_SIZE], 1, tl.int32)
        for i in range(0, n_tensors, SEG_SIZE):
            idx = i + tl.arange(0, SEG_SIZE)
            acc_ok = tl.minimum(acc_ok, tl.load(finite + idx, mask=idx < n_tensors, other=1))
        ok = tl.min(acc_ok, axis=0) != 0
        n = tl.sqrt(tl.sum(acc_sq, axis=0))
        cnt = tl.sum(acc_cnt, axis=0)

        row = groups + tl.load(tensor_group + t) * NGC
        beta1 = tl.load(row + 0)
        beta2 = tl.load(row + 1)
        gamma1 = tl.load(row + 2)
        gamma2 = tl.load(row + 3)
        eps = tl.load(row + 5)
        neg_lr = tl.load(row + 6)
        adaclip = tl.load(row + 8) != 0.0
        adagn = tl.load(row + 9) != 0.0
        reset = tl.load(row + 10) != 0.0

        step_old = tl.load(step + t)
        tt = (step_old + 1).to(tl.float64)
        mn_old = tl.load(m_norm + t)
        vn_old = tl.load(v_norm + t)
        mn = gamma1 * mn_old.to(tl.float64) + (1.0 - gamma1) * n
        vn = gamma2 * vn_old.to(tl.float64) + (1.0 - gamma2) * n * n
        m_hat = mn / (1.0 - _pow(gamma1, tt))
        v_hat = vn / (1.0 - _pow(gamma2, tt))
        k = tl.where(n > 0, m_hat / ((tl.sqrt(v_hat) + eps) * tl.maximum(n, 1e-300)), 1.0)
        k = tl.where(adagn, k, 1.0)

        s_old = tl.load(moment_step + t)
        s_int = tl.where(reset, 0, s_old) + 1
        s = s_int.to(tl.float64)
        bc1 = 1.0 - _pow(beta1, s)
        bc2_sqrt = tl.sqrt(1.0 - _pow(beta2, s))
        tl.store(scal + t * NSC + 2, k.to(tl.float32))
        tl.store(scal + t * NSC + 3, bc2_sqrt.to(tl.float32))
        tl.store(scal + t * NSC + 4, (neg_lr / bc1).to(tl.float32))

        # New statistics and counters, only on a finite step (otherwise the old values are written back).
        tl.store(step + t, tl.where(ok, step_old + 1, step_old))
        tl.store(moment_step + t, tl.where(ok, s_int, s_old))
        tl.store(m_max + t, tl.where(ok, tl.load(new_m_max + t).to(tl.float32), tl.load(m_max + t)))
        tl.store(m_norm + t, tl.where(ok & adagn, mn.to(tl.float32), mn_old))
        tl.store(v_norm + t, tl.where(ok & adagn, vn.to(tl.float32), vn_old))
        tl.store(clip_acc + t, tl.load(clip_acc + t) + tl.where(ok & adaclip, cnt, 0.0))
        tl.store(scale_out + t, tl.where(adagn, k, float("nan")))  # NaN: not reported (`pop_stats`)
        if t == 0:
            tl.store(ok_out, ok.to(tl.int32))

    @triton.jit
    def _update_kernel(
        p_table,
        g_table,
        m_table,
        v_table,
        block_tensor,
        block_start,
        numels,
        tensor_group,
        groups,
        scal,
        ok,  # int32 [1]: 0 when the step is skipped (non-finite gradient): nothing is read or written
        IS_BF16: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        NGC: tl.constexpr,
        NSC: tl.constexpr,
    ):
        _, t, offs, mask = _block_info(block_tensor, block_start, numels, ALIGNED, BLOCK_SIZE)
        mask = mask & ((tl.zeros([BLOCK_SIZE], dtype=tl.int32) + tl.load(ok)) != 0)
        row = groups + tl.load(tensor_group + t) * NGC
        beta2 = tl.load(row + 1).to(tl.float32)
        eps = tl.load(row + 5).to(tl.float32)
        decay = tl.load(row + 7).to(tl.float32)
        reset = tl.load(row + 10) != 0.0
        w1 = tl.load(row + 11).to(tl.float32)
        w2 = tl.load(row + 12).to(tl.float32)
        thr = tl.load(scal + t * NSC + 0)
        c = tl.load(scal + t * NSC + 1)
        k = tl.load(scal + t * NSC + 2)
        bc2_sqrt = tl.load(scal + t * NSC + 3)
        neg_step = tl.load(scal + t * NSC + 4)
        p_ptr = _tensor_ptr(p_table, t, IS_BF16, ALIGNED)
        g_ptr = _tensor_ptr(g_table, t, IS_BF16, ALIGNED)
        m_ptr = _tensor_ptr(m_table, t, IS_BF16, ALIGNED)
        v_ptr = _tensor_ptr(v_table, t, IS_BF16, ALIGNED)
        # On a moment-reset step the moments are zero: not read (predicated-off loads give 0).
        keep = mask & ((tl.zeros([BLOCK_SIZE], dtype=tl.int32) + reset.to(tl.int32)) == 0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=keep, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=keep, other=0.0).to(tl.float32)
        g = tl.where(tl.abs(g) > thr, g * c, g) * k
        p = p * decay
        m = m + w1 * (g - m)  # torch: exp_avg.lerp_(g, 1 - beta1)
        v = v * beta2 + w2 * g * g
        p = p + neg_step * (m / (tl.sqrt(v) / bc2_sqrt + eps))
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


class Layout:
    """Block and segment tables for one list of tensor sizes (cached by the optimizer per bucket), and the device
    pointer table of p, g, m, v, re-uploaded only when an address changes (e.g. gradients re-allocated)."""

    def __init__(self, numels: list[int], device: torch.device, block: int | None = None):
        self.block = block or BLOCK
        blocks = [(n + self.block - 1) // self.block for n in numels]
        self.key = (tuple(numels), self.block)
        self.n_tensors = len(numels)
        self.n_blocks = sum(blocks)
        self.numels = torch.tensor(numels, dtype=torch.int64, device=device)
        tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), torch.tensor(blocks))
        first = torch.cumsum(torch.tensor([0, *blocks[:-1]]), 0)
        start = (torch.arange(self.n_blocks) - first[tensor_of_block]) * self.block
        self.block_tensor = tensor_of_block.to(torch.int32).to(device)
        self.block_start = start.to(torch.int64).to(device)
        self.seg_first = first.to(torch.int64).to(device)
        self.seg_len = torch.tensor(blocks, dtype=torch.int64, device=device)
        self.device = device
        self.numels_ok = all(n % 8 == 0 for n in numels)  # 8 elements: 16 bytes of bf16, 32 of fp32
        self._ptr_key: tuple | None = None
        self._ptrs: torch.Tensor | None = None
        self.aligned = False
        self.group_sizes: tuple | None = None  # tensors per group, and the tensor -> group row map (set by the caller)
        self.tensor_group: torch.Tensor | None = None
        f32 = {"dtype": torch.float32, "device": device}
        # Scratch reused every step (kernels overwrite every entry before reading it).
        self.bmax = torch.empty(self.n_blocks, **f32)
        self.bsq = torch.empty(self.n_blocks, **f32)
        self.csq = torch.empty(self.n_blocks, **f32)
        self.ccnt = torch.empty(self.n_blocks, **f32)
        self.scal = torch.empty(self.n_tensors, NS, **f32)
        self.new_m_max = torch.empty(self.n_tensors, dtype=torch.float64, device=device)
        self.finite = torch.empty(self.n_tensors, dtype=torch.int32, device=device)
        self.ok = torch.ones(1, dtype=torch.int32, device=device)
        # Reporting (read by `pop_stats`): clipped entries accumulated, the last step's AdaGN factors.
        self.clip_acc = torch.zeros(self.n_tensors, dtype=torch.float64, device=device)
        self.scale_out = torch.ones(self.n_tensors, dtype=torch.float64, device=device)

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


def block_stats(layout: Layout, ptrs: torch.Tensor, is_bf16: bool) -> None:
    """Pass 1: block max|g| and sum g^2 (`layout.bmax`, `layout.bsq`)."""
    _stats_kernel[(layout.n_blocks,)](
        ptrs[1],
        layout.block_tensor,
        layout.block_start,
        layout.numels,
        layout.bmax,
        layout.bsq,
        IS_BF16=is_bf16,
        ALIGNED=layout.aligned,
        BLOCK_SIZE=layout.block,
        num_warps=NUM_WARPS,
    )


def thresholds(layout: Layout, tensor_group, groups, step, m_max) -> None:
    """Pass 2: per tensor the AdaClip threshold, clip factor and finiteness (`layout.scal`, `layout.new_m_max`,
    `layout.finite`). Nothing of the optimizer state is written."""
    _threshold_kernel[(layout.n_tensors,)](
        layout.bmax,
        layout.seg_first,
        layout.seg_len,
        tensor_group,
        groups,
        step,
        m_max,
        layout.scal,
        layout.new_m_max,
        layout.finite,
        NGC=NG,
        NSC=NS,
        SEG_SIZE=SEG,
        num_warps=4,
        enable_fp_fusion=False,
    )


def scale_and_update(layout: Layout, ptrs, is_bf16, tensor_group, groups, packed: dict) -> None:
    """Passes 3-5: clipped norms, AdaGN factors and the new statistics (`packed`: the state vectors, written only on
    a finite step), then the update of p, m, v (gated by the step's finiteness flag `layout.ok`)."""
    common = {"IS_BF16": is_bf16, "ALIGNED": layout.aligned, "BLOCK_SIZE": layout.block, "num_warps": NUM_WARPS}
    blocks = layout.block_tensor, layout.block_start, layout.numels
    _clip_kernel[(layout.n_blocks,)](
        ptrs[1], *blocks, layout.bmax, layout.bsq, layout.scal, layout.csq, layout.ccnt, NSC=NS, **common
    )
    _scale_kernel[(layout.n_tensors,)](
        layout.csq,
        layout.ccnt,
        layout.seg_first,
        layout.seg_len,
        tensor_group,
        groups,
        layout.finite,
        layout.n_tensors,
        packed["step"],
        packed["moment_step"],
        packed["m_max"],
        packed["m_norm"],
        packed["v_norm"],
        layout.new_m_max,
        layout.scal,
        layout.clip_acc,
        layout.scale_out,
        layout.ok,
        NGC=NG,
        NSC=NS,
        SEG_SIZE=SEG,
        num_warps=4,
        enable_fp_fusion=False,
    )
    _update_kernel[(layout.n_blocks,)](
        ptrs[0],
        ptrs[1],
        ptrs[2],
        ptrs[3],
        *blocks,
        tensor_group,
        groups,
        layout.scal,
        layout.ok,
        NGC=NG,
        NSC=NS,
        **common,
    )
