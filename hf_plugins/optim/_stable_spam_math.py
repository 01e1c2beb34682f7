"""StableSPAM's per-step math shared by its paths: the cosine factor, each group's hyperparameters at update T, the
packed per-tensor statistics, and the foreach / per-parameter-loop update of a group in three passes (`clip_group`,
`reduce_group_stats`, `update_group`) so that, under FSDP2, the per-tensor statistics of every group need two
bucketed all-reduces per step (max|g| before clipping, the clipped norms and counts after it).

The equations are those of docs/stable_spam.md ("Algorithm"); the fused Triton path (`_stable_spam_fused.py`) computes
the same quantities in its kernels and is checked against `step_group`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hf_plugins.distributed import all_reduce_partials_, is_dtensor, local_partial, local_tensor, shard_group


__all__ = [
    "EXACT_STATE_KEYS",
    "GroupStep",
    "clip_group",
    "cosine_scale",
    "grad_maxima",
    "group_hyper",
    "packed_state",
    "reduce_group_stats",
    "update_group",
]

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


def grad_maxima(grad_lists: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per group, the vector of per-tensor max|g| of the whole gradients. Plain tensors: `torch._foreach_norm` (the
    single-process path, unchanged). FSDP2 (sharded `DTensor`s): local maxima, reduced with one MAX all-reduce for
    every tensor of every group (`all_reduce_partials_`); a NaN anywhere gives +inf on every rank."""
    out, groups = [], []
    for grads in grad_lists:
        if not any(is_dtensor(g) for g in grads):
            out.append(torch.stack(torch._foreach_norm(grads, float("inf"))))
            groups.append([])
        else:
            out.append(torch.stack([local_partial(g, float("inf")) for g in grads]))
            groups.append([shard_group(g) for g in grads])
    all_reduce_partials_(out, groups, "max")
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


@dataclass
class GroupStep:
    """One group's update between its clipping pass (`clip_group`) and its update pass (`update_group`): the
    per-tensor statistics in between may need one bucketed all-reduce for every group (`reduce_group_stats`)."""

    group: dict
    hp: dict
    vdt: torch.dtype
    new_stats: dict
    params: list  # this rank's pieces (FSDP2: local shards)
    exp_avgs: list
    exp_avg_sqs: list
    gc: list  # the clipped fp32 gradients
    use_foreach: bool
    shard_groups: list  # per tensor: the group its shards are spread over, or None
    clipped: torch.Tensor | None  # per-tensor clipped-entry counts (partial until reduced)
    norms: torch.Tensor | None  # per-tensor ||gc||: sums of squares of the local pieces until reduced, if sharded


def clip_group(group: dict, T: int, params, grads, states, packed, gmax, use_foreach: bool) -> GroupStep:
    """AdaClip of one group at its `T`-th update (`T` includes this one; `gmax` the per-tensor max|g|) and the
    per-tensor statistics AdaGN needs: everything of the update that precedes the norms of the clipped gradient."""
    hp = group_hyper(group, T)
    theta = group["theta"]
    vdt = stat_dtype(params[0].device)
    t = packed["step"].to(vdt) + 1
    s_ = packed["moment_step"].to(vdt)
    s_ = (torch.zeros_like(s_) if hp["reset"] else s_) + 1
    gmax_v = gmax.to(vdt)

    # AdaClip threshold: bias-corrected EMA of max|g| with the never-reset t.
    m_max = theta * packed["m_max"].to(vdt) + (1.0 - theta) * gmax_v
    thr = m_max / (1.0 - theta**t)
    clip_factor = torch.where(gmax_v > thr, thr / gmax_v.clamp_min(torch.finfo(vdt).tiny), torch.ones_like(thr))

    # FSDP2: element-wise math on this rank's shards (they share storage with the DTensors, so the in-place updates
    # land in the parameters and in the state, which stays DTensor for sharded checkpoints); per-tensor norms and
    # counts are reduced over the mesh to those of the whole matrices (`reduce_group_stats`).
    shard_groups = [shard_group(g) for g in grads]
    sharded = any(g is not None for g in shard_groups)
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
    else:
        gc = [g.clone() for g in g32] if not use_foreach else torch._foreach_mul(g32, 1.0)

    norms = None
    if group["adagn"]:
        if sharded:
            norms = torch.stack([local_partial(g, 2.0) for g in gc])
        else:
            norms = torch.stack(torch._foreach_norm(gc, 2.0))
    return GroupStep(
        group,
        hp,
        vdt,
        {"step": t, "moment_step": s_, "m_max": m_max},
        params,
        [local_tensor(st["exp_avg"]) for st in states],
        [local_tensor(st["exp_avg_sq"]) for st in states],
        gc,
        use_foreach,
        shard_groups,
        clipped,
        norms,
    )


def reduce_group_stats(steps: list[GroupStep]) -> None:
    """The clipped counts and the squared norms of every sharded tensor of every group, summed over their shards in
    one all-reduce (`all_reduce_partials_`); plain tensors' statistics are already whole. Then the norms."""
    vectors, groups = [], []
    for st in steps:
        for v in (st.norms, st.clipped):
            if v is not None:
                vectors.append(v)
                groups.append(st.shard_groups)
    if any(g is not None for gs in groups for g in gs):
        vecs64 = [v.double() if v.dtype != torch.float64 and v.device.type != "mps" else v for v in vectors]
        all_reduce_partials_(vecs64, groups, "sum")
        for v, w in zip(vectors, vecs64):
            if v is not w:
                v.copy_(w)
    for st in steps:
        if st.norms is not None and any(g is not None for g in st.shard_groups):
            st.norms = st.norms.sqrt()


def update_group(st: GroupStep, packed, ok: torch.Tensor | None = None):
    """AdaGN and the Adam update of one group after `reduce_group_stats`. `ok` (a 0-d bool on the device, or None)
    makes the update conditional without a host synchronisation: where it is False (a non-finite gradient somewhere)
    every write is the identity (parameters, moments, statistics). Returns (clipped-entry count or None, per-tensor
    AdaGN factors or None)."""
    group, hp, vdt, gc = st.group, st.hp, st.vdt, st.gc
    params, exp_avgs, exp_avg_sqs, use_foreach = st.params, st.exp_avgs, st.exp_avg_sqs, st.use_foreach
    eps, lr, wd = group["eps"], group["lr"], group["weight_decay"]
    t, s_ = st.new_stats["step"], st.new_stats["moment_step"]
    new_stats = dict(st.new_stats)
    k = None
    if ok is not None:
        k = ok.to(torch.float32)
        for g in gc:  # a non-finite gradient must not reach the moments (0 * NaN is NaN): finite, then gated by k
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)

    norm_scale = None
    if group["adagn"]:
        n = st.norms.to(vdt)
        gamma1_t, gamma2 = hp["gamma1"], group["gamma2"]
        m_norm = gamma1_t * packed["m_norm"].to(vdt) + (1.0 - gamma1_t) * n
        v_norm = gamma2 * packed["v_norm"].to(vdt) + (1.0 - gamma2) * n * n
        m_hat = m_norm / (1.0 - gamma1_t**t)
        v_hat = v_norm / (1.0 - gamma2**t)
        new_stats.update(m_norm=m_norm, v_norm=v_norm)
        norm_scale = torch.where(n > 0, m_hat / ((v_hat.sqrt() + eps) * n.clamp_min(1e-300)), torch.ones_like(n))
        factors = norm_scale.float() if ok is None else torch.where(ok, norm_scale.float(), 0.0)
        if use_foreach:
            torch._foreach_mul_(gc, list(factors.unbind(0)))
        else:
            for g, f in zip(gc, factors.unbind(0)):
                g.mul_(f)
    elif k is not None:
        torch._foreach_mul_(gc, k)

    # Adam on the processed gradient, with the bias correction restarted at each moment reset.
    if hp["reset"]:
        if k is None:
            torch._foreach_zero_(exp_avgs)
            torch._foreach_zero_(exp_avg_sqs)
        else:
            torch._foreach_mul_(exp_avgs, 1.0 - k)
            torch._foreach_mul_(exp_avg_sqs, 1.0 - k)
    beta1_t, beta2 = hp["beta1"], hp["beta2"]
    bc2_sqrt = (1.0 - beta2**s_).sqrt()
    neg_step = (-lr / (1.0 - beta1_t**s_)).float()
    decay = 1.0 - lr * wd
    if k is not None:  # the identity where not ok: no decay, no moment change, no step
        neg_step = torch.where(ok, neg_step, 0.0)
        # (Python scalars in `torch.where`: rounded to fp32 as the scalar overloads round them; no host-to-device copy)
        decay, w1, b2 = (torch.where(ok, x, y) for x, y in ((decay, 1.0), (1.0 - beta1_t, 0.0), (beta2, 1.0)))

    lowp = any(p.dtype != torch.float32 for p in params)
    p32 = [p.float() for p in params] if lowp else params
    m32 = [m.float() for m in exp_avgs] if lowp else exp_avgs
    v32 = [v.float() for v in exp_avg_sqs] if lowp else exp_avg_sqs
    if use_foreach:
        if wd != 0.0:
            torch._foreach_mul_(p32, decay)
        if k is None:
            torch._foreach_lerp_(m32, gc, 1.0 - beta1_t)
            torch._foreach_mul_(v32, beta2)
        else:
            torch._foreach_lerp_(m32, gc, [w1] * len(m32))
            torch._foreach_mul_(v32, b2)
        torch._foreach_addcmul_(v32, gc, gc, 1.0 - beta2)
        denom = torch._foreach_sqrt(v32)
        torch._foreach_div_(denom, list(bc2_sqrt.float().unbind(0)))
        torch._foreach_add_(denom, eps)
        upd = torch._foreach_div(m32, denom)
        del denom
        torch._foreach_mul_(upd, list(neg_step.unbind(0)))
        torch._foreach_add_(p32, upd)
    else:
        for p, g, m, v, b2s, ns in zip(p32, gc, m32, v32, bc2_sqrt.float().unbind(0), neg_step.unbind(0)):
            if wd != 0.0:
                p.mul_(decay)
            m.lerp_(g, 1.0 - beta1_t if k is None else w1)
            v.mul_(beta2 if k is None else b2).addcmul_(g, g, value=1.0 - beta2)
            p.add_(m / (v.sqrt() / b2s + eps) * ns)
    if lowp:
        for dst, src in ((params, p32), (exp_avgs, m32), (exp_avg_sqs, v32)):
            torch._foreach_copy_(dst, src)

    for key, value in new_stats.items():
        # the per-parameter 0-d state tensors are views of it: one copy updates them all
        packed[key].copy_(value if ok is None else torch.where(ok, value.to(packed[key].dtype), packed[key]))
    clipped = st.clipped
    if clipped is not None and ok is not None:
        clipped = torch.where(ok, clipped, torch.zeros_like(clipped))
    return clipped, norm_scale
