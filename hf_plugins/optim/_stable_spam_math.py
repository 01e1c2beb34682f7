"""StableSPAM's per-step math shared by its paths: the cosine factor, each group's hyperparameters at update T, the
packed per-tensor statistics, and the foreach / per-parameter-loop update of one group (`step_group`).

The equations are those of docs/stable_spam.md ("Algorithm"); the fused Triton path (`_stable_spam_fused.py`) computes
the same quantities in its kernels and is checked against `step_group`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from hf_plugins.distributed import is_dtensor, local_tensor, sharded_norms


__all__ = ["EXACT_STATE_KEYS", "cosine_scale", "group_hyper", "packed_state", "step_group", "tensor_norms"]

# Per-parameter state entries that must keep their dtype on `load_state_dict` (torch casts floating state to the
# parameter's dtype, which would turn fp32 statistics and integer counters of a bf16 parameter into bf16).
EXACT_STATE_KEYS = ("step", "moment_step", "m_max", "m_norm", "v_norm")


def cosine_scale(T: int, total_T: int | None, eta_min: float) -> float:
    """The factor multiplying beta1 and gamma1 at the `T`-th update (1-based), as the official code computes it:
    torch's `CosineAnnealingLR` closed form with `T_max = total_T + 1` and base value 1 evaluated at T, i.e.
    eta_min + (1 - eta_min) (1 + cos(pi T / (total_T + 1))) / 2, which reaches eta_min at T = total_T + 1. Unlike the
    official code (periodic: back at 1 at T = 2 (total_T + 1)) it stays at eta_min after that. 1 if `total_T` is
    None."""
    if total_T is None:
        return 1.0
    progress = min(T, total_T + 1) / (total_T + 1)
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * progress)) / 2.0


def group_hyper(group: dict, T: int) -> dict:
    """The group's hyperparameters at its `T`-th update: beta1 and gamma1 times the cosine factor, and whether this
    update resets the moments."""
    beta1, beta2 = group["betas"]
    scale = cosine_scale(T, group["total_T"], group["eta_min"])
    return {
        "beta1": beta1 * scale,
        "beta2": beta2,
        "gamma1": group["gamma1"] * scale,
        "reset": group["reset_interval"] > 0 and T % group["reset_interval"] == 0,
    }


def stat_dtype(device: torch.device) -> torch.dtype:
    # The per-parameter scalar math runs on vectors of ~100s of entries: fp64 where the device has it, so the
    # bias corrections (1 - 0.999**t is 1e-3 at t=1) add no rounding of their own.
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _shard_group(t: torch.Tensor):
    """The process group over which the DTensor `t` is sharded (FSDP2 `Shard(0)`), or None (plain or replicated)."""
    if is_dtensor(t) and any(p.is_shard() for p in t.placements):
        return t.device_mesh.get_group()
    return None


def tensor_norms(tensors: list[torch.Tensor], ord: float, like: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Per-tensor norms as one vector. Plain tensors: `torch._foreach_norm` (the single-process path, unchanged).
    Sharded: the norms of the whole tensors on every rank (`sharded_norms`); `like` are the DTensors whose shards
    `tensors` are (the element-wise pass works on local shards), else `tensors` themselves must be DTensors."""
    like = tensors if like is None else like
    if not any(is_dtensor(t) for t in like):
        return torch.stack(torch._foreach_norm(tensors, ord))
    if like is not tensors:
        from torch.distributed.tensor import DTensor

        tensors = [
            DTensor.from_local(x, d.device_mesh, d.placements, run_check=False, shape=d.shape, stride=d.stride())
            if is_dtensor(d)
            else x
            for x, d in zip(tensors, like)
        ]
    return sharded_norms(tensors, ord)


def _sum_over_shards(values: torch.Tensor, like: list[torch.Tensor]) -> torch.Tensor:
    """`values[i]` (a per-tensor partial count of `like[i]`'s local shard) summed over `like[i]`'s shard group."""
    groups = [_shard_group(t) for t in like]
    out = values.clone()
    for group in {id(g): g for g in groups if g is not None}.values():
        idx = [i for i, g in enumerate(groups) if g is group]
        sub = out[idx].clone()
        dist.all_reduce(sub, op=dist.ReduceOp.SUM, group=group)
        out[idx] = sub
    return out


def packed_state(cache: dict, key, states: list[dict]) -> dict[str, torch.Tensor]:
    """Vectors [n_params] of the scalar statistics and counters of `states`, with each parameter's 0-d state entry a
    view of its slot: one op reads or writes a statistic of all tensors instead of stacking / copying ~100 0-d tensors.
    Cached in `cache[key]`; rebuilt (values copied) whenever a state entry is no longer the cached view, e.g. after
    `load_state_dict` or when the set of parameters with gradients changes."""
    hit = cache.get(key)
    if (
        hit is not None
        and len(hit["states"]) == len(states)
        and all(a is b for a, b in zip(hit["states"], states))
        and all(st[k] is v for k in EXACT_STATE_KEYS for st, v in zip(states, hit["views"][k]))
    ):
        return hit["packed"]
    packed = {k: torch.stack([st[k] for st in states]) for k in EXACT_STATE_KEYS}
    views = {k: list(packed[k].unbind(0)) for k in EXACT_STATE_KEYS}
    for k in EXACT_STATE_KEYS:
        for st, v in zip(states, views[k]):
            st[k] = v
    cache[key] = {"states": list(states), "views": views, "packed": packed}
    return packed


def step_group(group: dict, T: int, params, grads, states, packed, gmax, use_foreach: bool):
    """One update of a group on the foreach (`use_foreach`) or per-parameter-loop path; `T` is the group's update
    count including this one, `gmax` the per-tensor max|g| (already checked finite). Writes parameters, moments and
    the packed statistics; returns (clipped-entry count or None, per-tensor AdaGN factors or None)."""
    hp = group_hyper(group, T)
    theta, eps, lr, wd = group["theta"], group["eps"], group["lr"], group["weight_decay"]
    vdt = stat_dtype(params[0].device)
    t = packed["step"].to(vdt) + 1
    s_ = packed["moment_step"].to(vdt)
    s_ = (torch.zeros_like(s_) if hp["reset"] else s_) + 1
    gmax_v = gmax.to(vdt)

    # AdaClip threshold: bias-corrected EMA of max|g| with the never-reset t.
    m_max = theta * packed["m_max"].to(vdt) + (1.0 - theta) * gmax_v
    thr = m_max / (1.0 - theta**t)
    clip_factor = torch.where(gmax_v > thr, thr / gmax_v.clamp_min(torch.finfo(vdt).tiny), torch.ones_like(thr))
    new_stats = {"step": t, "moment_step": s_, "m_max": m_max}

    # FSDP2: element-wise math on this rank's shards (they share storage with the DTensors, so the in-place updates
    # land in the parameters and in the state, which stays DTensor for sharded checkpoints); per-tensor norms and
    # counts are all-reduced over the mesh to those of the whole matrices.
    sharded = grads if any(is_dtensor(g) for g in grads) else None
    exp_avgs = [local_tensor(st["exp_avg"]) for st in states]
    exp_avg_sqs = [local_tensor(st["exp_avg_sq"]) for st in states]
    params, grads = [local_tensor(p) for p in params], [local_tensor(g) for g in grads]
    # Everything element-wise runs in fp32 (bf16/fp16 parameters are upcast into temporaries).
    g32 = [g if g.dtype == torch.float32 else g.float() for g in grads]
    thr32, cf32 = thr.float(), clip_factor.float()

    clipped = None
    if group["adaclip"]:
        if use_foreach:
            mask = torch._foreach_abs(g32)
            torch._foreach_sub_(mask, list(thr32.unbind(0)))
            torch._foreach_clamp_min_(mask, 0.0)
            torch._foreach_sign_(mask)  # 1 where |g| > thr, else 0
            clipped = torch.stack(torch._foreach_norm(mask, 1)).to(vdt)
            torch._foreach_mul_(mask, list((cf32 - 1.0).unbind(0)))
            torch._foreach_add_(mask, 1.0)  # per-entry factor: clip_factor where clipped, 1 elsewhere
            gc = torch._foreach_mul(g32, mask)
            del mask
        else:
            gc, counts = [], []
            for g, th, cf in zip(g32, thr32.unbind(0), cf32.unbind(0)):
                hit = g.abs() > th
                gc.append(torch.where(hit, g * cf, g))
                counts.append(hit.sum())
            clipped = torch.stack(counts).to(vdt)
        if sharded is not None:
            clipped = _sum_over_shards(clipped, sharded)
    else:
        gc = [g.clone() for g in g32] if not use_foreach else torch._foreach_mul(g32, 1.0)

    norm_scale = None
    if group["adagn"]:
        n = tensor_norms(gc, 2.0, like=sharded).to(vdt)
        gamma1_t, gamma2 = hp["gamma1"], group["gamma2"]
        m_norm = gamma1_t * packed["m_norm"].to(vdt) + (1.0 - gamma1_t) * n
        v_norm = gamma2 * packed["v_norm"].to(vdt) + (1.0 - gamma2) * n * n
        m_hat = m_norm / (1.0 - gamma1_t**t)
        v_hat = v_norm / (1.0 - gamma2**t)
        new_stats.update(m_norm=m_norm, v_norm=v_norm)
        norm_scale = torch.where(n > 0, m_hat / ((v_hat.sqrt() + eps) * n.clamp_min(1e-300)), torch.ones_like(n))
        if use_foreach:
            torch._foreach_mul_(gc, list(norm_scale.float().unbind(0)))
        else:
            for g, k in zip(gc, norm_scale.float().unbind(0)):
                g.mul_(k)

    # Adam on the processed gradient, with the bias correction restarted at each moment reset.
    if hp["reset"]:
        torch._foreach_zero_(exp_avgs)
        torch._foreach_zero_(exp_avg_sqs)
    beta1_t, beta2 = hp["beta1"], hp["beta2"]
    bc2_sqrt = (1.0 - beta2**s_).sqrt()
    neg_step = (-lr / (1.0 - beta1_t**s_)).float()

    lowp = any(p.dtype != torch.float32 for p in params)
    p32 = [p.float() for p in params] if lowp else params
    m32 = [m.float() for m in exp_avgs] if lowp else exp_avgs
    v32 = [v.float() for v in exp_avg_sqs] if lowp else exp_avg_sqs
    if use_foreach:
        if wd != 0.0:
            torch._foreach_mul_(p32, 1.0 - lr * wd)
        torch._foreach_lerp_(m32, gc, 1.0 - beta1_t)
        torch._foreach_mul_(v32, beta2)
        torch._foreach_addcmul_(v32, gc, gc, 1.0 - beta2)
        denom = torch._foreach_sqrt(v32)
        torch._foreach_div_(denom, list(bc2_sqrt.float().unbind(0)))
        torch._foreach_add_(denom, eps)
        upd = torch._foreach_div(m32, denom)
        del denom
        torch._foreach_mul_(upd, list(neg_step.unbind(0)))
        torch._foreach_add_(p32, upd)
    else:
        for p, g, m, v, b2, ns in zip(p32, gc, m32, v32, bc2_sqrt.float().unbind(0), neg_step.unbind(0)):
            if wd != 0.0:
                p.mul_(1.0 - lr * wd)
            m.lerp_(g, 1.0 - beta1_t)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            p.add_(m / (v.sqrt() / b2 + eps) * ns)
    if lowp:
        for dst, src in ((params, p32), (exp_avgs, m32), (exp_avg_sqs, v32)):
            torch._foreach_copy_(dst, src)

    for key, value in new_stats.items():
        packed[key].copy_(value)  # the per-parameter 0-d state tensors are views of it: one copy updates them all
    return clipped, norm_scale
