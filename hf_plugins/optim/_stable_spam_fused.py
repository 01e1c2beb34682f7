"""Host side of StableSPAM's fused path: which groups take it, and one step of a bucket (every tensor of every fused
group on one device with one dtype) as the five Triton launches of `_stable_spam_triton.py`.

Per step and bucket the host builds one fp64 row of hyperparameters per group (beta1 and gamma1 at this update, lr,
decay, reset flag, ...) and uploads it with one asynchronous copy; the block table, the tensor -> group map and the
device pointer table are cached while the tensor sizes and addresses stay the same; the per-tensor statistics and
counters are packed vectors whose slots are the optimizer state's 0-d entries (`packed_state`). Nothing waits for the
GPU: a non-finite gradient is detected on the device (see `StableSPAM.step`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import _stable_spam_triton as kernels
from ._stable_spam_math import group_hyper, packed_state


__all__ = ["Bucket", "finish", "prepare", "use_fused"]


def use_fused(group: dict, params: list, grads: list) -> bool:
    """`fused=True`: the Triton path or an error; `None` (default): the Triton path where it applies (CUDA with triton,
    fp32/bf16 contiguous tensors of one dtype, no `maximize`), else foreach; `False`: never."""
    if group["fused"] is False:
        return False
    dtype = params[0].dtype
    device_ok = params[0].device.type == "cuda" or (
        params[0].device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter
    )
    # Sharded parameters (FSDP2 DTensors) hold only a shard: raw pointers into them would read out of bounds.
    sharded = any(type(p).__name__ == "DTensor" or type(g).__name__ == "DTensor" for p, g in zip(params, grads))
    ok = (
        kernels.available()
        and not sharded
        and device_ok
        and dtype in (torch.float32, torch.bfloat16)
        and all(p.dtype == dtype and p.is_contiguous() and p.numel() > 0 for p in params)
        and all(g.dtype == dtype and g.is_contiguous() for g in grads)
    )
    if group["fused"] is None:
        return ok and params[0].device.type == "cuda" and not group["maximize"]
    if not ok:
        raise RuntimeError(
            "StableSPAM(fused=True) needs triton and contiguous CUDA parameters and gradients of one dtype per "
            "group (float32 or bfloat16); use fused=False (the foreach path) for this model."
        )
    return True


def group_row(group: dict, T: int) -> list[float]:
    """The group's fp64 row of the kernels' group table at its `T`-th update (columns: `kernels.G_*`)."""
    hp = group_hyper(group, T)
    lr = group["lr"]
    return [
        hp["beta1"],
        hp["beta2"],
        hp["gamma1"],
        group["gamma2"],
        group["theta"],
        group["eps"],
        -lr,
        1.0 - lr * group["weight_decay"],
        float(group["adaclip"]),
        float(group["adagn"]),
        float(hp["reset"]),
        1.0 - hp["beta1"],
        1.0 - hp["beta2"],
    ]


@dataclass
class Bucket:
    """One step's work on the fused tensors of one device and dtype, between `prepare` and `finish`."""

    key: tuple
    entries: list  # (group index, group, params, grads)
    layout: kernels.Layout
    ptrs: torch.Tensor
    is_bf16: bool
    tensor_group: torch.Tensor
    groups: torch.Tensor
    packed: dict
    n_elements: int


def _layout(opt, key, params, sizes) -> kernels.Layout:
    """The cached block tables of the bucket `key`, rebuilt when the tensor sizes or the group split change (the
    clipped entries counted by the old one are kept for `pop_stats`)."""
    numels = tuple(p.numel() for p in params)
    layout = opt._layouts.get(key)
    if layout is None or layout.key != (numels, kernels.BLOCK) or layout.group_sizes != sizes:
        if layout is not None:
            opt._stats["clipped"][("retired", id(layout))] = layout.clip_acc.sum()
        layout = kernels.Layout(list(numels), params[0].device)
        layout.group_sizes = sizes
        layout.tensor_group = torch.repeat_interleave(
            torch.arange(len(sizes), dtype=torch.int32), torch.tensor(sizes)
        ).to(params[0].device)
        opt._layouts[key] = layout
    return layout


def prepare(opt, key: tuple, entries: list) -> Bucket:
    """Passes 1-2 of a bucket (statistics, thresholds, finiteness flags); the optimizer state is not written yet."""
    params = [p for _, _, ps, _ in entries for p in ps]
    grads = [g for _, _, _, gs in entries for g in gs]
    states = [opt._init_state(p) for p in params]
    layout = _layout(opt, key, params, tuple(len(ps) for _, _, ps, _ in entries))
    ptrs = layout.pointers(params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states])
    is_bf16 = params[0].dtype == torch.bfloat16
    kernels.block_stats(layout, ptrs, is_bf16)  # launched first: the host work below overlaps with it
    packed = packed_state(opt._packs, ("bucket", key), states)
    rows = torch.tensor([group_row(g, g["T"] + 1) for _, g, _, _ in entries], dtype=torch.float64)
    if layout.device.type == "cuda":
        rows = rows.pin_memory()  # asynchronous copy; the caching host allocator keeps it alive
    groups = rows.to(layout.device, non_blocking=True)
    kernels.thresholds(layout, layout.tensor_group, groups, packed["step"], packed["m_max"])
    n_el = sum(p.numel() for p in params)
    return Bucket(key, entries, layout, ptrs, is_bf16, layout.tensor_group, groups, packed, n_el)


def finish(opt, bucket: Bucket) -> None:
    """Passes 3-5 of a bucket (AdaGN, statistics, update); counts the update in each group's `T` and records the
    reporting buffers."""
    for _, group, _, _ in bucket.entries:
        group["T"] += 1
    kernels.scale_and_update(
        bucket.layout, bucket.ptrs, bucket.is_bf16, bucket.tensor_group, bucket.groups, bucket.packed
    )
    stats = opt._stats
    stats["elements"] += bucket.n_elements
    if any(g["adaclip"] for _, g, _, _ in bucket.entries):
        stats["has_clip"] = True
    if any(g["adagn"] for _, g, _, _ in bucket.entries):
        stats["scales"][("bucket", bucket.key)] = bucket.layout.scale_out
