"""Stable-SPAM: Adam with adaptive spike clipping, adaptive gradient-norm scaling and momentum reset.

Paper: "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam", arXiv 2502.17055 v1/v2 (v3 of that id
is a different paper, "GradientStabilizer"). We implement the paper's equations, not the official code's
behaviour, where the two differ (see docs/stable_spam.md, "How we differ from the official code"):

- the clip/norm statistics use a per-parameter update count `t` that is never reset, while Adam's bias
  correction restarts (`s`) at each momentum reset (the official code resets one counter for both, which blinds
  the spike clipping for ~50-75 steps after every reset);
- the moments are zeroed before the reset step's update (the official code updates the old ones);
- the beta1/gamma1 cosine factor is clamped at `eta_min` after `total_T` (the official one is periodic);
- every counter lives in `state_dict()` (the official `total_steps` is a Python attribute, lost on resume);
- the statistics m_max, m_norm, v_norm are fp32 for every parameter dtype (bf16 EMAs with gamma2 near 1 freeze).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from hf_plugins.distributed import is_dtensor, local_tensor, sharded_norms


logger = logging.getLogger(__name__)

__all__ = ["StableSPAM", "cosine_scale"]

# Per-parameter state entries that must keep their dtype on `load_state_dict` (torch casts floating state to the
# parameter's dtype, which would turn fp32 statistics and integer counters of a bf16 parameter into bf16).
_EXACT_STATE_KEYS = ("step", "moment_step", "m_max", "m_norm", "v_norm")
_NONFINITE = ("skip", "raise")


def cosine_scale(T: int, total_T: int | None, eta_min: float) -> float:
    """The factor multiplying beta1 and gamma1 at the `T`-th update (1-based): a half cosine from 1 at T=1 to
    `eta_min` at T = total_T + 1, then constant (clamped; the official `CosineDecay` is periodic)."""
    if total_T is None:
        return 1.0
    progress = min(T - 1, total_T) / total_T
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * progress)) / 2.0


def _shard_group(t: torch.Tensor):
    """The process group over which the DTensor `t` is sharded (FSDP2 `Shard(0)`), or None (plain or replicated)."""
    if is_dtensor(t) and any(p.is_shard() for p in t.placements):
        return t.device_mesh.get_group()
    return None


def _tensor_norms(tensors: list[torch.Tensor], ord: float, like: list[torch.Tensor] | None = None) -> torch.Tensor:
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


def _stat_dtype(device: torch.device) -> torch.dtype:
    # The per-parameter scalar math runs on vectors of ~100s of entries: fp64 where the device has it, so the
    # bias corrections (1 - 0.999**t is 1e-3 at t=1) add no rounding of their own.
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


class StableSPAM(torch.optim.Optimizer):
    """
    Stable-SPAM (arXiv 2502.17055 v1/v2): AdamW whose gradient first goes through AdaClip (entries above a running
    estimate of max|g| are scaled down), AdaGN (each tensor's gradient is rescaled so its norm follows running
    first/second moments of that norm) and MoRet (Adam's moments are zeroed every `reset_interval` updates).
    beta1 and gamma1 are multiplied by a cosine factor going from 1 to `eta_min` over `total_T` updates.

    Args:
        params (iterable):
            Parameters or parameter groups (the HF Trainer passes its decay / no-decay groups).
        lr (`float`, *optional*, defaults to `1e-3`):
            Learning rate (official constructor default; the paper's LLaMA-350M scripts use 4e-4).
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.999)`):
            Adam's beta1, beta2 (official constructor default).
        eps (`float`, *optional*, defaults to `1e-8`):
            Adam's epsilon; also added to sqrt(v_norm) in AdaGN, as in the paper's equations.
        weight_decay (`float`, *optional*, defaults to `0.0`):
            Decoupled weight decay p <- p * (1 - lr * wd), applied first (official constructor and scripts: 0).
        gamma1 (`float`, *optional*, defaults to `0.7`):
            EMA coefficient of the gradient norm's first moment (AdaGN; official constructor default and the
            FP4/INT4 scripts; the BF16 script uses 0.85).
        gamma2 (`float`, *optional*, defaults to `0.9`):
            EMA coefficient of the gradient norm's second moment (AdaGN; official default; BF16 script 0.99999).
        theta (`float`, *optional*, defaults to `0.999`):
            EMA coefficient of max|g| (AdaClip; "gamma3" in the paper, `theta` in the official code).
        total_T (`int` or `None`, *optional*, defaults to `None`):
            Updates over which beta1 and gamma1 decay by the cosine factor; `None` disables the decay (official
            constructor default). Every official run passed the run length (20000); `from_args` uses `max_steps`.
        eta_min (`float`, *optional*, defaults to `0.5`):
            Final value of the cosine factor (official default).
        reset_interval (`int` or `None`, *optional*, defaults to `1000`):
            Zero Adam's moments every this many updates ("Delta T", `update_proj_gap` in the official code,
            1000 in the constructor and the BF16 script, 500 in the FP4/INT4 scripts). `None` or 0 disables MoRet.
        adaclip (`bool`, *optional*, defaults to `True`):
            Adaptive spike clipping; False gives the GradientStabilizer-like AdaGN-only ablation (with
            `reset_interval=None`).
        adagn (`bool`, *optional*, defaults to `True`):
            Adaptive gradient-norm scaling.
        nonfinite (`str`, *optional*, defaults to `"skip"`):
            What a step does when any gradient holds a NaN or an infinity: `"skip"` leaves parameters, moments,
            statistics and counters untouched and adds one to each group's `skipped_steps`; `"raise"` raises
            `FloatingPointError`. On the fused path with `"skip"` the check runs on the device (the kernels write
            nothing on such a step) and reaches the host counters at the next `step()`, `state_dict()` or
            `pop_stats()`: no host synchronisation at all. Otherwise it costs one per step (not per parameter).
        foreach (`bool` or `None`, *optional*, defaults to `None`):
            Multi-tensor path (`torch._foreach_*`, no host synchronisation per parameter). `None` uses it unless
            a parameter is sparse; `False` runs a per-parameter loop with the same math.
        fused (`bool` or `None`, *optional*, defaults to `None`):
            Fused multi-tensor Triton kernels (`_stable_spam_triton.py`): one pass reading g for the per-tensor
            max|g| and sum g^2, a pass re-reading only the blocks that hold clipped entries, and one AdamW-style
            update pass; ~32 bytes of traffic per fp32 parameter against fused AdamW's 28. `None` uses them for a
            group whose tensors are on CUDA, contiguous, of one dtype (fp32 or bf16), with triton importable and
            `maximize=False`, and the foreach path otherwise (e.g. on CPU); `True` requires them (error otherwise);
            `False` never. Equal to the foreach path up to fp32 rounding.
        maximize (`bool`, *optional*, defaults to `False`):
            Maximise the objective.

    Example:

        >>> from transformers import Trainer
        >>> from hf_plugins import StableSPAM
        >>> trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=StableSPAM.from_args(args))
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gamma1: float = 0.7,
        gamma2: float = 0.9,
        theta: float = 0.999,
        total_T: int | None = None,
        eta_min: float = 0.5,
        reset_interval: int | None = 1000,
        adaclip: bool = True,
        adagn: bool = True,
        nonfinite: str = "skip",
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
    ):
        if not lr >= 0.0:
            raise ValueError(f"`lr` must be >= 0, got {lr}.")
        if not eps >= 0.0:
            raise ValueError(f"`eps` must be >= 0, got {eps}.")
        if not weight_decay >= 0.0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"`betas` must be two values in [0, 1), got {betas}.")
        for name, value in (("gamma1", gamma1), ("gamma2", gamma2), ("theta", theta)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if total_T is not None and (int(total_T) != total_T or total_T < 1):
            raise ValueError(f"`total_T` must be a positive integer or None, got {total_T}.")
        if not 0.0 <= eta_min <= 1.0:
            raise ValueError(f"`eta_min` must be in [0, 1], got {eta_min}.")
        if reset_interval is not None and (int(reset_interval) != reset_interval or reset_interval < 0):
            raise ValueError(f"`reset_interval` must be a non-negative integer or None, got {reset_interval}.")
        if nonfinite not in _NONFINITE:
            raise ValueError(f"`nonfinite` must be one of {_NONFINITE}, got {nonfinite!r}.")
        defaults = {
            "lr": float(lr),
            "betas": tuple(float(b) for b in betas),
            "eps": float(eps),
            "weight_decay": float(weight_decay),
            "gamma1": float(gamma1),
            "gamma2": float(gamma2),
            "theta": float(theta),
            "total_T": None if total_T is None else int(total_T),
            "eta_min": float(eta_min),
            "reset_interval": int(reset_interval or 0),
            "adaclip": bool(adaclip),
            "adagn": bool(adagn),
            "foreach": foreach,
            "fused": None if fused is None else bool(fused),
            "maximize": bool(maximize),
            # Counters are Python ints in the group: they round-trip through `state_dict()` (saved group values
            # win on load), which the official `total_steps` attribute does not.
            "T": 0,
            "skipped_steps": 0,
        }
        super().__init__(params, defaults)
        self.nonfinite = nonfinite
        self._stats: dict[str, Any] = {}
        self._layouts: dict[int, Any] = {}  # fused path: block tables per group, rebuilt when the sizes change
        self._packs: dict[int, Any] = {}  # per group: packed scalar statistics (see `_packed_stats`)
        self._pending = None  # fused path: the last step's on-device finiteness flag, not yet read by the host
        if fused:
            from . import _stable_spam_triton

            if not _stable_spam_triton.available():
                raise ValueError("`fused=True` needs triton (a CUDA build of torch); use the default foreach path.")

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_args(cls, args, **kwargs) -> tuple[type, dict]:
        """`(StableSPAM, kwargs)` for `Trainer(optimizer_cls_and_kwargs=...)`, reading `learning_rate`,
        `adam_beta1/2`, `adam_epsilon`, `weight_decay` and (as `total_T`) `max_steps` from `TrainingArguments`.

        With `optimizer_cls_and_kwargs` the Trainer passes its own decay / no-decay groups but ignores
        `args.learning_rate`, so the learning rate must travel in the kwargs. Explicit `kwargs` win.
        Refuses a DeepSpeed config that would replace this optimizer (an `optimizer` section) or ZeRO-3."""
        from hf_plugins.distributed import check_deepspeed_optimizer

        check_deepspeed_optimizer("StableSPAM", trainer_args=args)
        out = {
            "lr": args.learning_rate,
            "betas": (args.adam_beta1, args.adam_beta2),
            "eps": args.adam_epsilon,
            "weight_decay": args.weight_decay,
        }
        if "total_T" not in kwargs:
            if args.max_steps is not None and args.max_steps > 0:
                out["total_T"] = int(args.max_steps)
            else:
                logger.warning(
                    "StableSPAM.from_args: max_steps is not set, so the beta1/gamma1 cosine decay is off "
                    "(total_T=None); pass total_T=<number of optimizer updates> to enable it."
                )
        if getattr(args, "max_grad_norm", 0) and args.max_grad_norm > 0:
            logger.info(
                "StableSPAM under the Trainer: max_grad_norm=%s clips gradients before AdaClip/AdaGN see them; the "
                "paper's runs used no global clipping (max_grad_norm=0).",
                args.max_grad_norm,
            )
        out.update(kwargs)
        return cls, out

    # ------------------------------------------------------------------ state

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if len(state) == 0:
            f32 = {"dtype": torch.float32, "device": p.device}
            state["step"] = torch.zeros((), dtype=torch.int64, device=p.device)  # t: updates, never reset
            state["moment_step"] = torch.zeros((), dtype=torch.int64, device=p.device)  # s: since the last reset
            state["m_max"] = torch.zeros((), **f32)
            state["m_norm"] = torch.zeros((), **f32)
            state["v_norm"] = torch.zeros((), **f32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts every floating state tensor to the parameter's dtype (and the integer counters of a
        # floating parameter too); put back the saved fp32 statistics and int64 counters unchanged.
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = saved_state.get(saved_id)
            if not saved:
                continue
            for key in _EXACT_STATE_KEYS:
                if key in saved:
                    self.state[p][key] = saved[key].detach().to(device=p.device, copy=True)

    # ------------------------------------------------------------------ reporting

    def _record(self, group_index: int, clipped: torch.Tensor | None, scales: torch.Tensor | None, n: int) -> None:
        # Device tensors only: nothing here synchronises with the host; `pop_stats` reads them at logging steps.
        stats = self._stats.setdefault("groups", {})
        entry = stats.setdefault(group_index, {"clipped": None, "elements": 0, "scale": None})
        if clipped is not None:
            entry["clipped"] = clipped if entry["clipped"] is None else entry["clipped"] + clipped
        entry["elements"] += n
        entry["scale"] = scales  # the latest update's factors only

    def pop_stats(self) -> dict[str, float]:
        """Counters since the last call, as Python floats (one host synchronisation), then reset:
        `clipped_entries` (entries AdaClip scaled down), `clipped_fraction` (of the entries stepped),
        `norm_scale_{min,mean,max}` (the AdaGN factor m_hat / ((sqrt(v_hat) + eps) * ||g||) over the tensors
        of the last update), `skipped_steps` (total, non-finite gradients) and the current `beta1`; every key is
        prefixed with `stable_spam/`. `OptimizerStatsCallback` adds them to the Trainer's logs."""
        self._resolve_pending()
        out: dict[str, float] = {}
        prefix = "stable_spam/"
        groups, self._stats = self._stats.get("groups", {}), {}
        clipped = [e["clipped"] for e in groups.values() if e["clipped"] is not None]
        scales = [e["scale"] for e in groups.values() if e["scale"] is not None]
        if clipped:
            dev = clipped[0].device
            total = float(torch.stack([c.double().to(dev) for c in clipped]).sum())
            out["clipped_entries"] = total
            out["clipped_fraction"] = total / max(sum(e["elements"] for e in groups.values()), 1)
        if scales:
            s = torch.cat([x.double().to(scales[0].device) for x in scales]).cpu()
            out["norm_scale_min"], out["norm_scale_mean"], out["norm_scale_max"] = (
                float(s.min()),
                float(s.mean()),
                float(s.max()),
            )
        g = self.param_groups[0]
        out["skipped_steps"] = float(max(group["skipped_steps"] for group in self.param_groups))
        out["beta1"] = g["betas"][0] * cosine_scale(max(g["T"], 1), g["total_T"], g["eta_min"])
        return {prefix + k: v for k, v in out.items()}

    # ------------------------------------------------------------------ step

    def _resolve_pending(self) -> None:
        """Apply the host-side outcome of the last fused step's on-device finiteness check (see `step`)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        flag, event, stepped = pending
        if event is not None:
            event.synchronize()  # the flag's copy was queued right after the step's kernels: normally long done
        if int(flag[0]) == 0:
            for index in stepped:
                self.param_groups[index]["T"] -= 1
            for group in self.param_groups:
                group["skipped_steps"] += 1
            logger.warning("StableSPAM: non-finite gradient, step skipped (parameters and state untouched).")

    def state_dict(self) -> dict:
        self._resolve_pending()
        return super().state_dict()

    @torch.no_grad()
    def step(self, closure=None):
        """One update. Non-finite gradients: with every group on the fused path and `nonfinite="skip"`, the check
        runs on the device (the kernels write nothing on such a step) and its outcome reaches the host counters
        (`T`, `skipped_steps`) at the next `step()`, `state_dict()` or `pop_stats()`, so `step()` never waits for
        the GPU; otherwise one host synchronisation per step decides before anything is written."""
        self._resolve_pending()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        work = []
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("StableSPAM does not support sparse gradients.")
            grads = [p.grad.neg() if group["maximize"] else p.grad for p in params]
            if self._use_fused(group, params, grads):
                fused = self._fused_pass1(index, params, grads)
                gmax = fused["gmax"]
            else:
                fused = None
                # max|g| per tensor: AdaClip needs it, and it doubles as the finiteness check (NaN propagates).
                # Of the whole matrix under FSDP2, so every rank takes the same thresholds and the same skip.
                gmax = _tensor_norms(grads, float("inf"))
            work.append((index, group, params, grads, gmax, fused))
        if not work:
            return loss

        devices = {gm.device for *_, gm, _ in work}
        deferred = self.nonfinite == "skip" and all(f is not None for *_, f in work)
        if deferred:
            dev0 = work[0][4].device
            ok = torch.stack([gm.float().to(dev0).isfinite().all() for *_, gm, _ in work]).all()
            oks = {d: ok.to(d) for d in devices}
        else:
            finite = all(
                bool(torch.cat([gm.float() for *_, gm, _ in work if gm.device == d]).isfinite().all()) for d in devices
            )
            if not finite:
                if self.nonfinite == "raise":
                    raise FloatingPointError(
                        "StableSPAM: a gradient holds NaN or inf. Lower the learning rate, check the loss scaling, "
                        "or pass nonfinite='skip' to skip such steps."
                    )
                for group in self.param_groups:
                    group["skipped_steps"] += 1
                logger.warning("StableSPAM: non-finite gradient, step skipped (parameters and state untouched).")
                return loss
            oks = {}

        for index, group, params, grads, gmax, fused in work:
            self._step_group(index, group, params, grads, gmax, fused, oks.get(gmax.device))
        if deferred:
            if ok.device.type == "cuda":
                flag = torch.empty(1, dtype=torch.int32, pin_memory=True)
                flag.copy_(ok.to(torch.int32).reshape(1), non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(ok.device))
            else:  # Triton's CPU interpreter (tests)
                flag, event = ok.reshape(1).to(torch.int32), None
            self._pending = (flag, event, [index for index, *_ in work])
        return loss

    def _hyper(self, group: dict) -> tuple:
        T = group["T"]
        beta1, beta2 = group["betas"]
        scale = cosine_scale(T, group["total_T"], group["eta_min"])
        return beta1 * scale, beta2, group["gamma1"] * scale

    def _adagn(self, group: dict, packed: dict, n: torch.Tensor, t: torch.Tensor, new_stats: dict) -> torch.Tensor:
        """AdaGN statistics from the clipped norms `n`; returns the per-tensor factor m_hat / ((sqrt(v_hat)+eps) n)."""
        _, _, gamma1_t = self._hyper(group)
        gamma2, eps = group["gamma2"], group["eps"]
        m_norm = gamma1_t * packed["m_norm"].to(n.dtype) + (1.0 - gamma1_t) * n
        v_norm = gamma2 * packed["v_norm"].to(n.dtype) + (1.0 - gamma2) * n * n
        m_hat = m_norm / (1.0 - gamma1_t**t)
        v_hat = v_norm / (1.0 - gamma2**t)
        new_stats.update(m_norm=m_norm, v_norm=v_norm)
        return torch.where(n > 0, m_hat / ((v_hat.sqrt() + eps) * n.clamp_min(1e-300)), torch.ones_like(n))

    def _bias_corrections(self, group: dict, s_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta1_t, beta2, _ = self._hyper(group)
        bc1 = 1.0 - beta1_t**s_
        bc2_sqrt = (1.0 - beta2**s_).sqrt()
        return bc2_sqrt, (-group["lr"] / bc1).float()

    def _unfused_elementwise(
        self, group, use_foreach, params, grads, exp_avgs, exp_avg_sqs, thr, clip_factor, t, s_, reset, new_stats
    ):
        beta1_t, beta2, _ = self._hyper(group)
        eps, lr, wd = group["eps"], group["lr"], group["weight_decay"]
        vdt = thr.dtype
        # FSDP2: element-wise math on this rank's shards (they share storage with the DTensors, so the in-place
        # updates land in the parameters and in the state, which stays DTensor for sharded checkpoints); per-tensor
        # norms and counts are all-reduced over the mesh to those of the whole matrices.
        sharded = grads if any(is_dtensor(g) for g in grads) else None
        params, grads, exp_avgs, exp_avg_sqs = (
            [local_tensor(x) for x in xs] for xs in (params, grads, exp_avgs, exp_avg_sqs)
        )
        # Everything elementwise runs in fp32 (bf16/fp16 parameters are upcast into temporaries).
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
            n = _tensor_norms(gc, 2.0, like=sharded).to(vdt)
            norm_scale = self._adagn(group, new_stats["_packed"], n, t, new_stats)
            if use_foreach:
                torch._foreach_mul_(gc, list(norm_scale.float().unbind(0)))
            else:
                for g, k in zip(gc, norm_scale.float().unbind(0)):
                    g.mul_(k)

        # Adam on the processed gradient, with the bias correction restarted at each moment reset.
        if reset:
            torch._foreach_zero_(exp_avgs)
            torch._foreach_zero_(exp_avg_sqs)
        bc2_sqrt, neg_step = self._bias_corrections(group, s_)

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

        return clipped, norm_scale

    def _use_fused(self, group: dict, params: list, grads: list) -> bool:
        """`fused=True`: the Triton path or an error; `None` (default): the Triton path where it applies (CUDA with
        triton, fp32/bf16 contiguous tensors of one dtype, no `maximize`), else foreach; `False`: never."""
        if group["fused"] is False:
            return False
        from . import _stable_spam_triton as kernels

        dtype = params[0].dtype
        device_ok = params[0].device.type == "cuda" or (
            params[0].device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter
        )
        # Sharded parameters (FSDP2 DTensors) hold only a shard: raw pointers into them made the kernels read out of
        # bounds on 2 H200s (an illegal memory access). They take the foreach path.
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

    def _fused_pass1(self, index: int, params: list, grads: list) -> dict:
        """Pass 1 of the fused path: block tables (cached while the sizes are unchanged), pointer table (cached while
        the addresses are), per-block max|g| and sum g^2, and the per-tensor max|g|."""
        from . import _stable_spam_triton as kernels

        states = [self._init_state(p) for p in params]
        numels = tuple(p.numel() for p in params)
        layout = self._layouts.get(index)
        if layout is None or layout.key != numels:
            layout = kernels.FusedLayout(list(numels), params[0].device)
            self._layouts[index] = layout
        exp_avgs = [st["exp_avg"] for st in states]
        exp_avg_sqs = [st["exp_avg_sq"] for st in states]
        ptrs = layout.pointers(params, grads, exp_avgs, exp_avg_sqs)
        is_bf16 = params[0].dtype == torch.bfloat16
        bmax, bsq, gmax = kernels.max_and_sq(layout, ptrs, is_bf16)
        return {"layout": layout, "ptrs": ptrs, "is_bf16": is_bf16, "bmax": bmax, "bsq": bsq, "gmax": gmax}

    def _fused_elementwise(self, group, params, fused, ok, thr, clip_factor, t, s_, reset, new_stats):
        from . import _stable_spam_triton as kernels

        beta1_t, beta2, _ = self._hyper(group)
        layout, ptrs, is_bf16 = fused["layout"], fused["ptrs"], fused["is_bf16"]
        if not group["adaclip"]:
            thr, clip_factor = torch.full_like(thr, math.inf), torch.ones_like(clip_factor)
        ones = torch.ones_like(thr)
        clipped, norm_scale = None, None
        if group["adaclip"] or group["adagn"]:
            scalars = torch.stack([thr, clip_factor, ones, ones, ones], dim=1).float().contiguous()
            sq, cnt = kernels.clipped_sq_norms(layout, ptrs, is_bf16, fused["bmax"], fused["bsq"], scalars)
            if group["adaclip"]:
                clipped = cnt.to(thr.dtype)
            if group["adagn"]:
                norm_scale = self._adagn(group, new_stats["_packed"], sq.to(thr.dtype).sqrt(), t, new_stats)
        bc2_sqrt, neg_step = self._bias_corrections(group, s_)
        k = ones if norm_scale is None else norm_scale
        scalars = torch.stack([thr, clip_factor, k, bc2_sqrt, neg_step.to(thr.dtype)], dim=1).float().contiguous()
        decay = 1.0 - group["lr"] * group["weight_decay"]
        if ok is None:
            ok = torch.ones((), dtype=torch.bool, device=thr.device)
        ok32 = ok.to(torch.int32).reshape(1)
        kernels.update(layout, ptrs, is_bf16, scalars, ok32, beta1_t, beta2, group["eps"], decay, reset)
        return clipped, norm_scale

    def _packed_stats(self, index: int, params: list, states: list) -> dict[str, torch.Tensor]:
        """Per-group vectors [n_params] of the scalar statistics and counters, with each parameter's 0-d state entry
        a view of its slot: one op reads or writes a statistic of all tensors instead of stacking / copying ~100
        0-d tensors (thousands of small host-side ops per step). Rebuilt (values copied) whenever a state entry is no
        longer the cached view, e.g. after `load_state_dict` or when the set of parameters with gradients changes."""
        cache = self._packs.get(index)
        if (
            cache is not None
            and len(cache["states"]) == len(states)
            and all(a is b for a, b in zip(cache["states"], states))
            and all(st[k] is v for k in _EXACT_STATE_KEYS for st, v in zip(states, cache["views"][k]))
        ):
            return cache["packed"]
        packed = {k: torch.stack([st[k] for st in states]) for k in _EXACT_STATE_KEYS}
        views = {k: list(packed[k].unbind(0)) for k in _EXACT_STATE_KEYS}
        for k in _EXACT_STATE_KEYS:
            for st, v in zip(states, views[k]):
                st[k] = v
        self._packs[index] = {"states": list(states), "views": views, "packed": packed}
        return packed

    def _step_group(
        self, index: int, group: dict, params: list, grads: list, gmax: torch.Tensor, fused: dict | None, ok
    ) -> None:
        """`ok`: None (the step is known to be finite) or a device bool; where False, nothing is written."""
        group["T"] += 1
        theta = group["theta"]
        reset = group["reset_interval"] > 0 and group["T"] % group["reset_interval"] == 0

        states = [self._init_state(p) for p in params]
        device = params[0].device
        if any(p.device != device for p in params):
            raise RuntimeError("StableSPAM: all parameters of a group must live on one device.")
        vdt = _stat_dtype(device)

        packed = self._packed_stats(index, params, states)

        def vec(key):
            return packed[key].to(vdt)

        t = vec("step") + 1
        s_ = vec("moment_step")
        s_ = (torch.zeros_like(s_) if reset else s_) + 1
        gmax_v = gmax.to(vdt)

        # AdaClip threshold: bias-corrected EMA of max|g| with the never-reset t.
        m_max = theta * vec("m_max") + (1.0 - theta) * gmax_v
        thr = m_max / (1.0 - theta**t)
        clip_factor = torch.where(gmax_v > thr, thr / gmax_v.clamp_min(torch.finfo(vdt).tiny), torch.ones_like(thr))

        exp_avgs = [st["exp_avg"] for st in states]
        exp_avg_sqs = [st["exp_avg_sq"] for st in states]
        new_stats = {"step": t, "moment_step": s_, "m_max": m_max, "_packed": packed}
        if fused is not None:
            clipped, norm_scale = self._fused_elementwise(
                group, params, fused, ok, thr, clip_factor, t, s_, reset, new_stats
            )
        else:
            use_foreach = group["foreach"] is not False
            clipped, norm_scale = self._unfused_elementwise(
                group, use_foreach, params, grads, exp_avgs, exp_avg_sqs, thr, clip_factor, t, s_, reset, new_stats
            )

        del new_stats["_packed"]
        for key, value in new_stats.items():
            dst = packed[key]  # the per-parameter 0-d state tensors are views of it: one copy updates them all
            if ok is not None:  # keep the old values on a (device-detected) non-finite step
                value = torch.where(ok, value, dst.to(value.dtype))
            dst.copy_(value)
        n_el = sum(p.numel() for p in params)
        if ok is not None and clipped is not None:
            clipped = clipped * ok
        self._record(index, None if clipped is None else clipped.sum(), norm_scale, n_el)
