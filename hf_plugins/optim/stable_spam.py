"""Stable-SPAM: Adam with adaptive spike clipping, adaptive gradient-norm scaling and momentum reset.

Paper: "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam", arXiv 2502.17055 v1/v2 (v3 of that id
is a different paper, "GradientStabilizer"). Official code: github.com/TianjinYellow/StableSPAM, commit 6a66da1,
`galore_torch/stablespam.py` (its constructor defaults are ours) and the `*_scripts/*.sh` run scripts. We implement
the paper's equations, not the official code's behaviour, where the two differ (docs/stable_spam.md, "How we differ
from the official code"):

- the clip/norm statistics use a per-parameter update count `t` that is never reset, while Adam's bias
  correction restarts (`s`) at each momentum reset (the official code resets one counter for both, which blinds
  the spike clipping for ~50-75 steps after every reset);
- the moments are zeroed before the reset step's update (the official code updates the old ones);
- the beta1/gamma1 cosine factor is clamped at `eta_min` after `total_T` (the official one is periodic);
- every counter lives in `state_dict()` (the official `total_steps` is a Python attribute, lost on resume);
- the statistics m_max, m_norm, v_norm are fp32 for every parameter dtype (bf16 EMAs with gamma2 near 1 freeze).

The per-step math is in `_stable_spam_math.py` (foreach and per-parameter loop) and `_stable_spam_fused.py` /
`_stable_spam_triton.py` (fused Triton kernels, the default on CUDA).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

from hf_plugins.distributed import is_distributed

from . import _stable_spam_fused as fused_path
from ._stable_spam_math import (
    EXACT_STATE_KEYS,
    clip_group,
    cosine_scale,
    grad_maxima,
    packed_state,
    reduce_group_stats,
    update_group,
)


logger = logging.getLogger(__name__)

__all__ = ["StableSPAM", "cosine_scale"]

_NONFINITE = ("skip", "raise")
_UNIT_INTERVAL = ("gamma1", "gamma2", "theta")  # each in [0, 1)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)  # Python and numpy ints and floats


def _check_group(group: dict, where: str) -> dict:
    """The group's hyperparameters, checked and normalised (Python floats / ints); `ValueError` naming the field,
    the value and `where` (e.g. "param group 1") otherwise."""

    def bad(field, value, what):
        return ValueError(f"StableSPAM {where}: `{field}` must be {what}, got {value!r}.")

    out = dict(group)
    for field in ("lr", "eps", "weight_decay"):
        v = group[field]
        if not (_is_number(v) and math.isfinite(v) and v >= 0):
            raise bad(field, v, "a finite number >= 0")
        out[field] = float(v)
    betas = group["betas"]
    if not (
        isinstance(betas, tuple | list) and len(betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)
    ):
        raise bad("betas", betas, "two numbers in [0, 1)")
    out["betas"] = (float(betas[0]), float(betas[1]))
    for field in _UNIT_INTERVAL:
        v = group[field]
        if not (_is_number(v) and 0.0 <= v < 1.0):
            raise bad(field, v, "a number in [0, 1)")
        out[field] = float(v)
    total_T = group["total_T"]
    if total_T is not None and not (_is_number(total_T) and int(total_T) == total_T and total_T >= 1):
        raise bad("total_T", total_T, "a positive integer or None")
    out["total_T"] = None if total_T is None else int(total_T)
    if not (_is_number(group["eta_min"]) and 0.0 <= group["eta_min"] <= 1.0):
        raise bad("eta_min", group["eta_min"], "a number in [0, 1]")
    out["eta_min"] = float(group["eta_min"])
    ri = group["reset_interval"]
    if ri is not None and not (_is_number(ri) and int(ri) == ri and ri >= 0):
        raise bad("reset_interval", ri, "a non-negative integer or None (0 and None: no moment reset)")
    out["reset_interval"] = int(ri or 0)
    for field in ("adaclip", "adagn", "maximize"):
        if not isinstance(group[field], bool):
            raise bad(field, group[field], "True or False")
    for field in ("foreach", "fused"):
        if group[field] is not None and not isinstance(group[field], bool):
            raise bad(field, group[field], "True, False or None")
    return out


class StableSPAM(torch.optim.Optimizer):
    """
    Stable-SPAM (arXiv 2502.17055 v1/v2): AdamW whose gradient first goes through AdaClip (entries above a running
    estimate of max|g| are scaled down), AdaGN (each tensor's gradient is rescaled so its norm follows running
    first/second moments of that norm) and MoRet (Adam's moments are zeroed every `reset_interval` updates).
    beta1 and gamma1 are multiplied by a cosine factor going from 1 to `eta_min` over `total_T` updates.

    Defaults are the official constructor's (`galore_torch/stablespam.py`, commit 6a66da1); where the paper's run
    scripts differ, the docstring says which. Every hyperparameter can be set per parameter group and is checked
    there too (`ValueError` naming the field and the group).

    Args:
        params (iterable):
            Parameters or parameter groups (the HF Trainer passes its decay / no-decay groups).
        lr (`float`, *optional*, defaults to `1e-3`):
            Learning rate (official constructor; the FP4/INT4 LLaMA-350M scripts use 4e-4, the BF16 130M one 8e-4).
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.999)`):
            Adam's beta1, beta2 (official constructor).
        eps (`float`, *optional*, defaults to `1e-8`):
            Adam's epsilon; also added to sqrt(v_norm) in AdaGN, as the official code does.
        weight_decay (`float`, *optional*, defaults to `0.0`):
            Decoupled weight decay p <- p * (1 - lr * wd), applied first (official constructor and every script: 0).
        gamma1 (`float`, *optional*, defaults to `0.7`):
            EMA coefficient of the gradient norm's first moment (AdaGN; official constructor and the FP4/INT4
            scripts; the BF16 script uses 0.85).
        gamma2 (`float`, *optional*, defaults to `0.9`):
            EMA coefficient of the gradient norm's second moment (AdaGN; official constructor; BF16 script 0.99999).
        theta (`float`, *optional*, defaults to `0.999`):
            EMA coefficient of max|g| (AdaClip; "gamma3" in the paper and the official constructor).
        total_T (`int` or `None`, *optional*, defaults to `None`):
            Updates over which beta1 and gamma1 decay by the cosine factor (`cosine_scale`); `None` disables it
            (official constructor). Every official run script passes the run length (20000); `from_args` uses
            `max_steps`.
        eta_min (`float`, *optional*, defaults to `0.5`):
            Final value of the cosine factor (official constructor).
        reset_interval (`int` or `None`, *optional*, defaults to `1000`):
            Zero Adam's moments every this many updates ("Delta T"; `update_proj_gap` in the official constructor,
            1000 there and in the BF16 script, 500 in the FP4/INT4 scripts). `None` or 0 disables MoRet.
        adaclip (`bool`, *optional*, defaults to `True`):
            Adaptive spike clipping; False gives the GradientStabilizer-like AdaGN-only ablation (with
            `reset_interval=None`).
        adagn (`bool`, *optional*, defaults to `True`):
            Adaptive gradient-norm scaling.
        nonfinite (`str`, *optional*, defaults to `"skip"`):
            What a step does when any gradient holds a NaN or an infinity: `"skip"` leaves parameters, moments,
            statistics and counters untouched and adds one to each group's `skipped_steps`; `"raise"` raises
            `FloatingPointError`. With `"skip"` and all the work on one GPU (fused kernels or foreach), or on the
            CPU under DDP / FSDP2, the check runs on the device (nothing is written on such a step) and reaches the
            host counters at the next `step()`, `state_dict()` or `pop_stats()`: no host synchronisation at all.
            Otherwise (`"raise"`, one CPU process, several devices) it costs one host read per step (not per
            parameter). (Ours: the official code has no check.)
        foreach (`bool` or `None`, *optional*, defaults to `None`):
            Multi-tensor path (`torch._foreach_*`, no host synchronisation per parameter) where the fused path does
            not apply; `False` runs a per-parameter loop with the same math.
        fused (`bool` or `None`, *optional*, defaults to `None`):
            Fused multi-tensor Triton kernels (`_stable_spam_triton.py`): five launches per step for all tensors of
            all fused groups of one device and dtype; 32 bytes of memory traffic per fp32 parameter (fused AdamW:
            28; docs/stable_spam.md, "Speed"). `None` uses them for groups whose tensors are on CUDA, contiguous, of
            one dtype (fp32 or bf16), with triton importable and `maximize=False`, and the foreach path otherwise
            (e.g. on CPU); `True` requires them (error otherwise); `False` never. Equal to the foreach path up to
            fp32 rounding.
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
        if nonfinite not in _NONFINITE:
            raise ValueError(f"StableSPAM: `nonfinite` must be one of {_NONFINITE}, got {nonfinite!r}.")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "gamma1": gamma1,
            "gamma2": gamma2,
            "theta": theta,
            "total_T": total_T,
            "eta_min": eta_min,
            "reset_interval": reset_interval,
            "adaclip": adaclip,
            "adagn": adagn,
            "foreach": foreach,
            "fused": fused,
            "maximize": maximize,
        }
        defaults = _check_group(defaults, "arguments")
        # Counters are Python ints in the group: they round-trip through `state_dict()` (saved group values win on
        # load), which the official `total_steps` attribute does not.
        defaults.update(T=0, skipped_steps=0)
        self.nonfinite = nonfinite
        self._stats: dict[str, Any] = self._empty_stats()
        self._layouts: dict = {}  # fused path: block tables per bucket (device, dtype), rebuilt when the sizes change
        self._packs: dict = {}  # packed scalar statistics per group (foreach) or bucket (fused), see `packed_state`
        self._pending = None  # the last step's on-device finiteness flag, not yet read by the host
        super().__init__(params, defaults)
        if fused and not fused_path.kernels.available():
            raise ValueError("`fused=True` needs triton (a CUDA build of torch); use the default foreach path.")

    def add_param_group(self, param_group: dict) -> None:
        """torch's `add_param_group`, with the group's hyperparameters checked first (a bad value raises
        `ValueError` naming the field and the group, and the group is not added)."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        checked = _check_group(merged, f"param group {len(self.param_groups)}")
        param_group = {**param_group, **{k: checked[k] for k in param_group if k in checked and k != "params"}}
        super().add_param_group(param_group)

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
        self._pending = None  # the loaded counters replace those a pending skip would correct
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = saved_state.get(saved_id)
            if not saved:
                continue
            for key in EXACT_STATE_KEYS:
                if key in saved:
                    self.state[p][key] = saved[key].detach().to(device=p.device, copy=True)

    def state_dict(self) -> dict:
        self._resolve_pending()
        return super().state_dict()

    # ------------------------------------------------------------------ reporting

    @staticmethod
    def _empty_stats() -> dict:
        return {"clipped": {}, "elements": 0, "scales": {}, "has_clip": False}

    def _record(self, key, clipped: torch.Tensor | None, scales: torch.Tensor | None, n: int) -> None:
        # Device tensors only: nothing here synchronises with the host; `pop_stats` reads them at logging steps.
        stats = self._stats
        stats["elements"] += n
        if clipped is not None:
            prev = stats["clipped"].get(key)
            stats["clipped"][key] = clipped.sum() if prev is None else prev + clipped.sum()
            stats["has_clip"] = True
        if scales is not None:
            stats["scales"][key] = scales  # the latest update's factors only

    def pop_stats(self) -> dict[str, float]:
        """Counters since the last call, as Python floats (one host synchronisation), then reset:
        `clipped_entries` (entries AdaClip scaled down), `clipped_fraction` (of the entries stepped),
        `norm_scale_{min,mean,max}` (the AdaGN factor m_hat / ((sqrt(v_hat) + eps) * ||g||) over the tensors
        of the last update), `skipped_steps` (total, non-finite gradients) and the current `beta1`; every key is
        prefixed with `stable_spam/`. `OptimizerStatsCallback` adds them to the Trainer's logs."""
        self._resolve_pending()
        out: dict[str, float] = {}
        stats, self._stats = self._stats, self._empty_stats()
        if stats["has_clip"]:
            parts = list(stats["clipped"].values()) + [lay.clip_acc.sum() for lay in self._layouts.values()]
            dev = parts[0].device
            total = float(torch.stack([c.double().to(dev) for c in parts]).sum())
            out["clipped_entries"] = total
            out["clipped_fraction"] = total / max(stats["elements"], 1)
        for layout in self._layouts.values():
            layout.clip_acc.zero_()
        scales = list(stats["scales"].values())
        s = torch.cat([x.double().to(scales[0].device) for x in scales]).cpu() if scales else torch.zeros(0)
        s = s[~s.isnan()]  # fused buckets mark their tensors without AdaGN with NaN
        if s.numel():
            out["norm_scale_min"], out["norm_scale_mean"], out["norm_scale_max"] = (
                float(s.min()),
                float(s.mean()),
                float(s.max()),
            )
        g = self.param_groups[0]
        out["skipped_steps"] = float(max(group["skipped_steps"] for group in self.param_groups))
        out["beta1"] = g["betas"][0] * cosine_scale(max(g["T"], 1), g["total_T"], g["eta_min"])
        return {"stable_spam/" + k: v for k, v in out.items()}

    # ------------------------------------------------------------------ step

    def _on_skipped_step(self) -> None:
        """Called once for each step skipped for a non-finite gradient (after the group counters were restored); a
        subclass that counts updates itself (AlphaDecay) undoes its count here."""

    def _skip(self) -> None:
        for group in self.param_groups:
            group["skipped_steps"] += 1
        logger.warning("StableSPAM: non-finite gradient, step skipped (parameters and state untouched).")
        self._on_skipped_step()

    def _resolve_pending(self) -> None:
        """Apply the host-side outcome of the last step's on-device finiteness check (see `step`)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        flag, event, stepped, elements = pending
        if event is not None:
            event.synchronize()  # the flag's copy was queued right after the step's kernels: normally long done
        if int(flag[0]) == 0:
            for index in stepped:
                self.param_groups[index]["T"] -= 1
            self._stats["elements"] -= elements  # the skipped update stepped none of them
            self._skip()

    @torch.no_grad()
    def step(self, closure=None):
        """One update. Non-finite gradients with `nonfinite="skip"`: when all the work is on one GPU (or on the CPU
        under data parallelism), the check runs on the device (the fused kernels write nothing on such a step; the
        foreach and loop paths make every write the identity) and its outcome reaches the host counters (`T`,
        `skipped_steps`) at the next `step()`, `state_dict()` or `pop_stats()`, so `step()` never waits for the GPU;
        otherwise (one CPU process, `"raise"`, several devices) one host read per step decides before anything is
        written. Under FSDP2 the per-tensor statistics
        of every group take two bucketed all-reduces (max|g|; the clipped norms and counts)."""
        self._resolve_pending()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        foreach_work, buckets = [], {}
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr = group["lr"]  # the one value schedulers change between steps
            if not (_is_number(lr) and math.isfinite(lr) and lr >= 0):
                raise ValueError(f"StableSPAM param group {index}: `lr` must be a finite number >= 0, got {lr!r}.")
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("StableSPAM does not support sparse gradients.")
            grads = [p.grad.neg() if group["maximize"] else p.grad for p in params]
            if fused_path.use_fused(group, params, grads):
                buckets.setdefault((params[0].device, params[0].dtype), []).append((index, group, params, grads))
            else:
                foreach_work.append((index, group, params, grads))
        if not foreach_work and not buckets:
            return loss

        prepared = [fused_path.prepare(self, key, entries) for key, entries in buckets.items()]
        # max|g| per tensor: AdaClip needs it, and it doubles as the finiteness check (NaN propagates). Of the whole
        # matrix under FSDP2 (one all-reduce for every group), so every rank takes the same thresholds and skips alike.
        gmaxes = grad_maxima([grads for *_, grads in foreach_work]) if foreach_work else []
        devices = {gm.device for gm in gmaxes}
        # Deferred where a host check would wait: for a GPU, or for the other ranks (one process on the CPU reads
        # its flag at once: nothing to wait for, and the update needs no masking then).
        deferred = self.nonfinite == "skip" and (
            (not foreach_work and len(prepared) == 1)
            or (not prepared and len(devices) == 1 and (next(iter(devices)).type != "cpu" or is_distributed()))
        )
        ok = None
        if deferred and foreach_work:
            ok = torch.cat([gm.float() for gm in gmaxes]).isfinite().all()
        elif not deferred:
            checks = [torch.cat([gm.float() for gm in gmaxes if gm.device == d]).isfinite().all() for d in devices]
            checks += [b.layout.finite.bool().all() for b in prepared]
            if not all(bool(c) for c in checks):
                if self.nonfinite == "raise":
                    raise FloatingPointError(
                        "StableSPAM: a gradient holds NaN or inf. Lower the learning rate, check the loss scaling, "
                        "or pass nonfinite='skip' to skip such steps."
                    )
                self._skip()
                return loss

        steps = []
        for (index, group, params, grads), gmax in zip(foreach_work, gmaxes):
            group["T"] += 1
            states = [self._init_state(p) for p in params]
            packed = packed_state(self._packs, ("group", index), states)
            use_foreach = group["foreach"] is not False
            steps.append(clip_group(group, group["T"], params, grads, states, packed, gmax, use_foreach))
        reduce_group_stats(steps)
        for (index, _, params, _), st in zip(foreach_work, steps):
            clipped, scales = update_group(st, self._packs[("group", index)]["packed"], ok)
            if ok is not None and scales is not None:  # a skipped update keeps the previous update's factors
                prev = self._stats["scales"].get(("group", index))
                keep = prev if prev is not None and prev.shape == scales.shape else torch.full_like(scales, math.nan)
                scales = torch.where(ok, scales, keep.to(scales.dtype))
            self._record(("group", index), clipped, scales, sum(p.numel() for p in params))
        for bucket in prepared:
            fused_path.finish(self, bucket)
        if deferred:
            flag_of = ok.view(1).to(torch.int32) if ok is not None else prepared[0].layout.ok
            stepped = [index for index, *_ in foreach_work] or [index for index, *_ in prepared[0].entries]
            elements = sum(p.numel() for *_, params, _ in foreach_work for p in params)
            elements += sum(b.n_elements for b in prepared)
            if flag_of.device.type == "cuda":
                flag = torch.empty(1, dtype=torch.int32, pin_memory=True)
                flag.copy_(flag_of, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(flag_of.device))
            else:  # the CPU (and Triton's CPU interpreter in tests)
                flag, event = flag_of.clone(), None
            self._pending = (flag, event, stepped, elements)
        return loss
