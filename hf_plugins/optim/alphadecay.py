"""AlphaDecay: module-wise weight decay from the heavy-tailedness of each weight matrix's spectrum.

Paper: "AlphaDecay: Module-wise Weight Decay for Heavy-Tailed Balancing in LLMs", arXiv 2506.14562 (NeurIPS 2025);
official code github.com/hed-ucas/AlphaDecay (`WeightDecayUnbalance.py`, class `modulewise_AlphaDecay`).

Every `interval` optimizer updates (and once at construction) each analysed matrix gets its power-law exponent
alpha (Hill estimator on the eigenvalues of its smaller Gram matrix, `hf_plugins.optim.esd`), and
alpha is mapped linearly from [alpha_min, alpha_max] onto [s1 * wd, s2 * wd]: heavier tails (smaller alpha) get
weaker decay. Each analysed matrix has its own parameter group; the refresh runs inside `step()`, so no callback
is needed, and alphas, decays and the update counter live in the groups, so they survive `state_dict()`.

With a decoupled base (AdamW, or Adam(decoupled_weight_decay=True)) `step()` does not run the base update once per
group: it applies every analysed matrix's decay p <- p * (1 - lr * wd) in one `torch._foreach_mul_` (torch's AdamW
does exactly this first, with the group's current lr) and runs the base update on the groups merged by their
remaining hyperparameters, the analysed ones at decay 0 (usually 2 groups). `param_groups` itself is not changed.
With `fused_update=True` (CUDA, fp32 parameters) both are one Triton launch instead (`_alphadecay_triton.py`):
AdamW with a per-tensor decay factor, no extra pass over the weights. Off by default: on an H200 it measured 7%
slower than the two passes (optimizer step 6.60 vs 6.17 ms on a 0.5B model, benchmarks/RESULTS.md), as torch's
fused AdamW kernel is faster than ours.
"""

from __future__ import annotations

import array
import logging
import math
import operator
import os
import statistics
from typing import Any

import torch
from torch import nn

from .esd import eligible_linears, esd_alphas
from .param_groups import hf_param_groups, named_trainable_parameters


logger = logging.getLogger(__name__)

__all__ = ["AlphaDecay", "alphadecay_optimizer_class", "linear_decay_map"]

WD_MIN_RATIO = 0.6666  # official argparse `--wd_min_ratio` (s1)
_OTHER_PARAMS = ("hf", "official")


def linear_decay_map(alphas: list[float], weight_decay: float, s1: float, s2: float) -> list[float | None]:
    """`weight_decay * (s1 + (s2 - s1) * (alpha - alpha_min) / (alpha_max - alpha_min))` for each alpha (the
    official `tb_linear_map`, `np.interp(alpha, [min, max], [s1 * wd, s2 * wd])`), min and max over the finite
    alphas. If all finite alphas are equal every matrix gets `weight_decay`; a non-finite alpha maps to None
    (the caller keeps that matrix's previous decay)."""
    finite = [a for a in alphas if math.isfinite(a)]
    if not finite:
        return [None] * len(alphas)
    lo, hi = min(finite), max(finite)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return [float(weight_decay) if math.isfinite(a) else None for a in alphas]
    return [
        float(weight_decay * (s1 + (s2 - s1) * (a - lo) / (hi - lo))) if math.isfinite(a) else None for a in alphas
    ]


def _is_analysed(group: dict) -> bool:
    return "alphadecay_module" in group


_DTENSOR: list = []


def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2; the decay is elementwise), the tensor itself otherwise."""
    if not _DTENSOR:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # pragma: no cover - torch without DTensor
            DTensor = ()
        _DTENSOR.append(DTensor)
    return p.to_local() if isinstance(p, _DTENSOR[0]) else p


def _fused_device_ok(device: torch.device) -> bool:
    """CUDA, or the CPU under Triton's interpreter (`TRITON_INTERPRET=1`, the tests)."""
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def _get_scalar_dtype(is_fused=None) -> torch.dtype:
    """The dtype torch's Adam gives `state["step"]` (float32; float64 unfused under a float64 default dtype)."""
    if is_fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _is_decoupled_base(base: type) -> bool:
    """Bases whose `step()` is torch's Adam/AdamW: decoupled decay = `p.mul_(1 - lr * wd)` before the update."""
    return base in (torch.optim.AdamW, torch.optim.Adam)


class _AlphaDecayMixin:
    """Added in front of a base optimizer class by `alphadecay_optimizer_class`."""

    def __init__(
        self,
        params,
        *,
        alphadecay_interval: int = 500,
        alphadecay_wd_min_ratio: float = WD_MIN_RATIO,
        alphadecay_wd_max_ratio: float = 3.0,
        alphadecay_xmin_pos: float = 2.0,
        alphadecay_esd_streams: int = 1,
        alphadecay_merge_groups: bool = True,
        alphadecay_fused_update: bool = False,
        **base_kwargs,
    ):
        super().__init__(params, **base_kwargs)
        self.alphadecay_config = {
            "interval": int(alphadecay_interval),
            "s1": float(alphadecay_wd_min_ratio),
            "s2": float(alphadecay_wd_max_ratio),
            "xmin_pos": float(alphadecay_xmin_pos),
            "esd_streams": int(alphadecay_esd_streams),
            "merge_groups": bool(alphadecay_merge_groups),
            "fused_update": bool(alphadecay_fused_update),
        }
        self._alphadecay_fused_layout = None  # fused path: block tables, rebuilt when the tensor sizes change
        self._alphadecay_warned = False
        self._alphadecay_layouts: dict[tuple, tuple] = {}
        self.refresh_decays()  # the first schedule comes from the initial weights, as in the official code

    def _analysed_groups(self) -> list[dict]:
        return [g for g in self.param_groups if _is_analysed(g)]

    @torch.no_grad()
    def refresh_decays(self) -> None:
        """Recompute every analysed matrix's alpha and set its group's `weight_decay` from the linear map."""
        groups = self._analysed_groups()
        if not groups:
            return
        cfg = self.alphadecay_config
        # The ESD needs whole matrices: under FSDP2 each rank holds a shard, so gather it (`full_tensor`, a no-op for
        # plain tensors); every rank then uses rank 0's alphas, so all ranks hold identical group decays.
        from hf_plugins.distributed import broadcast_object, full_tensor

        weights = [full_tensor(g["params"][0].detach()) for g in groups]
        alphas = broadcast_object(esd_alphas(weights, cfg["xmin_pos"], num_streams=cfg["esd_streams"]))
        base = groups[0]["alphadecay_base_wd"]
        decays = linear_decay_map(alphas, base, cfg["s1"], cfg["s2"])
        bad = []
        for g, a, d in zip(groups, alphas, decays):
            if d is None:
                bad.append(g["alphadecay_module"])
                continue
            g["alphadecay_alpha"] = float(a)
            g["weight_decay"] = float(d)
        if bad and not self._alphadecay_warned:
            self._alphadecay_warned = True
            logger.warning(
                "AlphaDecay: no finite alpha for %d matrices (e.g. %s; a zero or rank-deficient matrix); they keep "
                "their previous weight decay.",
                len(bad),
                bad[0],
            )

    def step(self, closure=None):
        groups = self._analysed_groups()
        if groups:
            count = groups[0]["alphadecay_updates"] + 1
            for g in groups:
                g["alphadecay_updates"] = count
            # Refresh inside the update whose number is a multiple of `interval` (official: before the step
            # when (update_step + 1) % every == 0), so the new decays apply to that update already.
            if count % self.alphadecay_config["interval"] == 0:
                self.refresh_decays()
        if not (groups and self._can_merge()):
            return super().step(closure)
        loss = None
        if closure is not None:  # evaluated first, as the base step does, so the decays see its gradients
            with torch.enable_grad():
                loss = closure()
        plan = self._fused_plan() if self.alphadecay_config["fused_update"] else None
        if plan is not None:
            self._fused_step(plan)
            return loss
        merged = self._merged_groups()
        if merged is None:
            super().step()  # per group (the closure was evaluated above)
            return loss
        self._apply_matrix_decays(groups)
        own = self.param_groups
        self.param_groups = merged
        try:
            super().step()
        finally:
            self.param_groups = own
        return loss

    def _can_merge(self) -> bool:
        # A GradScaler that hands fused optimizers `found_inf` may skip the update; the decay must be skipped with
        # it, which only the base step knows: run it per group then.
        return (
            self.alphadecay_config["merge_groups"]
            and type(self)._alphadecay_decoupled
            and getattr(self, "grad_scale", None) is None
            and getattr(self, "found_inf", None) is None
        )

    def _merged_groups(self) -> list[dict] | None:
        """The groups the base update runs on: analysed groups at decay 0 (their decay is applied by
        `_apply_matrix_decays`), merged with every group whose other hyperparameters (lr, betas, eps, fused, ...)
        are equal. None (run per group) when a group has tensor lr / decay, coupled decay or unhashable values."""
        buckets: dict[tuple, dict] = {}
        for g in self.param_groups:
            layout = tuple(g)
            entry = self._alphadecay_layouts.get(layout)
            if entry is None:
                names = sorted(
                    k for k in layout if k not in ("params", "weight_decay") and not k.startswith("alphadecay_")
                )
                entry = self._alphadecay_layouts[layout] = (tuple(names), operator.itemgetter(*names))
            names, get = entry
            lr, wd = g["lr"], g["weight_decay"]
            if isinstance(lr, torch.Tensor) or isinstance(wd, torch.Tensor):
                return None
            if not g.get("decoupled_weight_decay", isinstance(self, torch.optim.AdamW)):
                return None
            key = (names, get(g), 0.0 if "alphadecay_module" in g else wd)
            try:
                bucket = buckets.get(key)
            except TypeError:  # an unhashable hyperparameter value
                return None
            if bucket is None:
                bucket = {k: v for k, v in g.items() if not k.startswith("alphadecay_")}
                bucket["params"], bucket["weight_decay"] = [], key[2]
                buckets[key] = bucket
            bucket["params"].extend(g["params"])
        return list(buckets.values())

    def _fused_plan(self) -> tuple[list, list, list, list, list] | None:
        """(params, grads, per-tensor hyperparameter rows, state dicts, groups' `fused` flags) for the fused Triton
        AdamW update, or None where it does not apply: triton missing; a group with amsgrad, maximize, capturable,
        differentiable, or `foreach=False` / `fused=False` set explicitly; a parameter (with a gradient) that is not a
        plain contiguous fp32 tensor on the one CUDA device (CPU only in Triton's interpreter), or whose gradient is
        sparse, not fp32 or not contiguous; a tensor lr / decay or coupled decay (as `_merged_groups`). Parameters
        without a gradient are skipped, as torch does."""
        from . import _alphadecay_triton as kernels

        if not kernels.available():
            return None
        params, grads, rows, states, fused = [], [], [], [], []
        device, index = None, None
        plain, f32, strided = (torch.Tensor, nn.Parameter), torch.float32, torch.strided
        adamw = isinstance(self, torch.optim.AdamW)
        for g in self.param_groups:
            if g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"]:
                return None
            if g["foreach"] is False or g["fused"] is False or not g.get("decoupled_weight_decay", adamw):
                return None
            lr, wd, (b1, b2), eps = g["lr"], g["weight_decay"], g["betas"], g["eps"]
            if any(isinstance(x, torch.Tensor) for x in (lr, wd, b1, b2, eps)):
                return None
            row = (float(lr), float(wd), float(b1), float(b2), float(eps))
            on_device = bool(g["fused"])
            state = self.state
            for p in g["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if device is None:
                    device, index = p.device, p.get_device()
                    if not _fused_device_ok(device):
                        return None
                if not (
                    type(p) in plain
                    and type(grad) in plain
                    and p.dtype is f32
                    and grad.dtype is f32
                    and p.get_device() == index
                    and grad.get_device() == index
                    and grad.layout is strided
                    and p.is_contiguous()
                    and grad.is_contiguous()
                    and p.numel() > 0
                ):
                    return None
                params.append(p)
                grads.append(grad)
                rows.extend(row)
                states.append(state[p])
                fused.append(on_device)
        return (params, grads, rows, states, fused) if params else None

    @torch.no_grad()
    def _fused_step(self, plan: tuple) -> None:
        """AdamW on every parameter of `plan` (`_fused_plan`) in one Triton launch, each tensor with its own decay
        factor `1 - lr * wd` (its group's current lr and decay), instead of the `_foreach_mul_` pass + the base step.
        State (`step` tensor where torch keeps it, `exp_avg`, `exp_avg_sq`) is torch's, so `state_dict()` and a resume
        on either path are unchanged."""
        from . import _alphadecay_triton as kernels

        params, grads, rows, states, fused = plan
        for p, st, f in zip(params, states, fused):
            if len(st) == 0:  # torch's lazy initialisation (Adam._init_group): step on the device only when fused
                st["step"] = (
                    torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device)
                    if f
                    else torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")
                )
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        device = params[0].device
        steps = [st["step"] for st in states]
        exp_avgs = [st["exp_avg"] for st in states]
        exp_avg_sqs = [st["exp_avg_sq"] for st in states]
        # steps live on one device per group kind (CPU unless fused); a mix is stacked on the CPU
        if len({s.device for s in steps}) > 1:
            steps_cpu = [s for s in steps if s.device.type == "cpu"]
            steps_dev = [s for s in steps if s.device.type != "cpu"]
            torch._foreach_add_(steps_cpu, 1)
            torch._foreach_add_(steps_dev, 1)
            counts = torch.stack([s.to("cpu", torch.float64) for s in steps])
        else:
            torch._foreach_add_(steps, 1)
            counts = torch.stack(steps)
        hyper = torch.frombuffer(array.array("d", rows), dtype=torch.float64).view(-1, 5)
        scalars = kernels.step_scalars(counts, hyper, device)
        numels = tuple(p.numel() for p in params)
        layout = self._alphadecay_fused_layout
        if layout is None or layout.key != numels or layout.device != device:
            layout = self._alphadecay_fused_layout = kernels.FusedLayout(list(numels), device)
        ptrs = layout.pointers(params, grads, exp_avgs, exp_avg_sqs)
        kernels.adamw_update(layout, ptrs, scalars)

    @torch.no_grad()
    def _apply_matrix_decays(self, groups: list[dict]) -> None:
        """p <- p * (1 - lr * wd) for every analysed matrix with a gradient, with its group's current lr and decay:
        torch's AdamW step does exactly this before the moment update (which does not read p), and skips
        parameters without a gradient."""
        params, factors = [], []
        for g in groups:
            factor = 1.0 - g["lr"] * g["weight_decay"]
            if factor == 1.0:
                continue
            for p in g["params"]:
                if p.grad is not None:
                    params.append(_local(p))
                    factors.append(factor)
        if params:
            torch._foreach_mul_(params, factors)

    def alphadecay_table(self) -> dict[str, dict[str, float]]:
        """`{module name: {"alpha": ..., "weight_decay": ...}}` for the analysed matrices."""
        return {
            g["alphadecay_module"]: {"alpha": g["alphadecay_alpha"], "weight_decay": g["weight_decay"]}
            for g in self._analysed_groups()
        }

    def pop_stats(self) -> dict[str, float]:
        """The base optimizer's stats (if any) plus `alphadecay/alpha_{min,median,max}`,
        `alphadecay/wd_{min,max}` and the mean alpha per module type (`alphadecay/alpha/q_proj`, ...)."""
        parent = getattr(super(), "pop_stats", None)
        out: dict[str, Any] = dict(parent()) if parent is not None else {}
        groups = self._analysed_groups()
        alphas = [g["alphadecay_alpha"] for g in groups if math.isfinite(g["alphadecay_alpha"])]
        if alphas:
            out["alphadecay/alpha_min"] = min(alphas)
            out["alphadecay/alpha_median"] = statistics.median(alphas)
            out["alphadecay/alpha_max"] = max(alphas)
            decays = [g["weight_decay"] for g in groups]
            out["alphadecay/wd_min"], out["alphadecay/wd_max"] = min(decays), max(decays)
            by_type: dict[str, list[float]] = {}
            for g in groups:
                if math.isfinite(g["alphadecay_alpha"]):
                    by_type.setdefault(g["alphadecay_module"].rsplit(".", 1)[-1], []).append(g["alphadecay_alpha"])
            for kind, values in sorted(by_type.items()):
                out[f"alphadecay/alpha/{kind}"] = sum(values) / len(values)
        return out


_CLASS_CACHE: dict[type, type] = {}


def alphadecay_optimizer_class(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """The subclass `AlphaDecay<Base>` of `base` whose `step()` counts updates and refreshes the analysed groups'
    weight decay every `alphadecay_interval` updates before the base update (cached per base class)."""
    if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
        raise TypeError(f"`base` must be a torch.optim.Optimizer subclass, got {base!r}.")
    if base not in _CLASS_CACHE:
        _CLASS_CACHE[base] = type(
            f"AlphaDecay{base.__name__}",
            (_AlphaDecayMixin, base),
            {"__module__": __name__, "_alphadecay_decoupled": _is_decoupled_base(base)},
        )
    return _CLASS_CACHE[base]


def _resolve_base(base) -> type[torch.optim.Optimizer]:
    if isinstance(base, str):
        from .stable_spam import StableSPAM

        names = {
            "adamw": torch.optim.AdamW,
            "adam": torch.optim.Adam,
            "sgd": torch.optim.SGD,
            "stable_spam": StableSPAM,
        }
        if base.lower() not in names:
            raise ValueError(f"`base` must be an optimizer class or one of {sorted(names)}, got {base!r}.")
        return names[base.lower()]
    if isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
        return base
    raise ValueError(f"`base` must be a torch.optim.Optimizer subclass or a name, got {base!r}.")


class AlphaDecay:
    """
    AlphaDecay (arXiv 2506.14562) as an optimizer factory: `Trainer(optimizer_cls_and_kwargs=(AlphaDecay, {...}))`
    (the Trainer instantiates the factory and calls it with `(model, **kwargs)`) or `AlphaDecay()(model, ...)` in a
    plain loop. It returns an instance of `AlphaDecay<Base>`, a subclass of the base optimizer.

    Args (of the call):
        model (`nn.Module`): the model; its trainable parameters are optimised.
        lr (`float`): learning rate (required: the Trainer does not pass `args.learning_rate` on this path).
        weight_decay (`float`): the base decay wd that the alphas scale.
        base (`type` or `str`, *optional*, defaults to `torch.optim.AdamW`):
            Base optimizer class, or "adamw", "adam" (the paper's main table: coupled L2), "sgd", "stable_spam".
        interval (`int`, *optional*, defaults to `500`): updates between refreshes (official default, all scripts).
        wd_min_ratio (`float`, *optional*, defaults to `0.6666`): s1, the multiplier at alpha_min (official).
        wd_max_ratio (`float` or `None`, *optional*, defaults to `None`):
            s2, the multiplier at alpha_max; None picks 3 for `torch.optim.Adam` (argparse default and the Adam
            table's scripts) and 5 otherwise (the AdamW table's scripts).
        xmin_pos (`float`, *optional*, defaults to `2`): xmin = the int(N / xmin_pos)-th eigenvalue (the median).
        min_eigs (`int`, *optional*, defaults to `50`): matrices with fewer eigenvalues are not analysed
            (official `eigs_thresh`).
        remove_first, remove_last (`bool`, *optional*, default `True`): leave the first / last `nn.Linear` out of
            the analysis (official `remove_first_layer` / `remove_last_layer`).
        esd_streams (`int`, *optional*, defaults to `1`):
            CUDA streams over which the refresh's batched `eigvalsh` calls are spread (see the benchmark).
        merge_groups (`bool`, *optional*, defaults to `True`):
            With a decoupled base (AdamW; Adam with `decoupled_weight_decay=True`): apply the per-matrix decays in one
            `torch._foreach_mul_` and run the base update on the groups merged by their other hyperparameters
            (usually 2 instead of one per matrix; same result, see `docs/alphadecay.md`). Other bases (coupled
            Adam, SGD, StableSPAM) always run per group.
        fused_update (`bool`, *optional*, defaults to `False`):
            On the merged path, where it applies (CUDA with triton, fp32 plain tensors, no amsgrad / maximize /
            capturable / differentiable, `foreach` and `fused` not set to False): one multi-tensor Triton AdamW launch
            over all parameters with each tensor's own decay factor, instead of the `_foreach_mul_` pass + the base
            step (same update and state, see `docs/alphadecay.md`). Off by default: measured 7% slower than the two
            passes on an H200 (torch's fused AdamW is the faster kernel).
        other_params (`str`, *optional*, defaults to `"hf"`):
            Decay of the parameters not analysed: "hf" follows the Trainer (biases and norms 0, the rest wd);
            "official" puts every one of them at wd, as the official code does.
        **base_kwargs: passed to the base optimizer (betas, eps, fused, StableSPAM's gamma1, ...).

    Example:

        >>> from hf_plugins import AlphaDecay
        >>> trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=AlphaDecay.from_args(args))
        >>> optimizer = AlphaDecay()(model, lr=1e-3, weight_decay=0.1)  # plain PyTorch loop
    """

    def __call__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        base: Any = torch.optim.AdamW,
        interval: int = 500,
        wd_min_ratio: float = WD_MIN_RATIO,
        wd_max_ratio: float | None = None,
        xmin_pos: float = 2.0,
        min_eigs: int = 50,
        remove_first: bool = True,
        remove_last: bool = True,
        other_params: str = "hf",
        esd_streams: int = 1,
        merge_groups: bool = True,
        fused_update: bool = False,
        **base_kwargs,
    ) -> torch.optim.Optimizer:
        base_cls = _resolve_base(base)
        if wd_max_ratio is None:
            wd_max_ratio = 3.0 if base_cls is torch.optim.Adam else 5.0
        if int(interval) != interval or interval < 1:
            raise ValueError(f"`interval` must be a positive integer, got {interval}.")
        if not weight_decay >= 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
        if not 0 <= wd_min_ratio <= wd_max_ratio:
            raise ValueError(
                f"`wd_min_ratio` and `wd_max_ratio` must satisfy 0 <= min <= max, got {wd_min_ratio}, {wd_max_ratio}."
            )
        if not xmin_pos > 1:
            raise ValueError(f"`xmin_pos` must be > 1 (xmin = the int(N / xmin_pos)-th eigenvalue), got {xmin_pos}.")
        if int(min_eigs) != min_eigs or min_eigs < 2:
            raise ValueError(f"`min_eigs` must be an integer >= 2, got {min_eigs}.")
        if int(esd_streams) != esd_streams or esd_streams < 1:
            raise ValueError(f"`esd_streams` must be a positive integer, got {esd_streams}.")
        if other_params not in _OTHER_PARAMS:
            raise ValueError(f"`other_params` must be one of {_OTHER_PARAMS}, got {other_params!r}.")

        matrices = eligible_linears(model, min_eigs=min_eigs, remove_first=remove_first, remove_last=remove_last)
        groups = [
            {
                "params": [w],
                "weight_decay": float(weight_decay),
                "alphadecay_module": name,
                "alphadecay_alpha": math.nan,
                "alphadecay_base_wd": float(weight_decay),
                "alphadecay_updates": 0,
            }
            for name, w in matrices
        ]
        analysed = {id(w) for _, w in matrices}
        if other_params == "hf":
            groups += hf_param_groups(model, weight_decay, exclude=analysed)
        else:
            rest = [p for _, _, p in named_trainable_parameters(model) if id(p) not in analysed]
            if rest:
                groups.append({"params": rest, "weight_decay": float(weight_decay)})
        if not matrices:
            logger.warning(
                "AlphaDecay: no matrix qualifies for the analysis (every trainable nn.Linear has fewer than "
                "min_eigs=%d eigenvalues, or is the first/last one); training with uniform weight decay.",
                min_eigs,
            )
        cls = alphadecay_optimizer_class(base_cls)
        optimizer = cls(
            groups,
            lr=lr,
            alphadecay_interval=interval,
            alphadecay_wd_min_ratio=wd_min_ratio,
            alphadecay_wd_max_ratio=wd_max_ratio,
            alphadecay_xmin_pos=xmin_pos,
            alphadecay_esd_streams=esd_streams,
            alphadecay_merge_groups=merge_groups,
            alphadecay_fused_update=fused_update,
            **base_kwargs,
        )
        logger.info(
            "AlphaDecay(%s): %d matrices in their own groups, %d other groups, refresh every %d updates",
            base_cls.__name__,
            len(matrices),
            len(groups) - len(matrices),
            interval,
        )
        return optimizer

    @classmethod
    def from_args(cls, args, **kwargs) -> tuple[type, dict]:
        """`(AlphaDecay, kwargs)` for `Trainer(optimizer_cls_and_kwargs=...)` with `lr`, `weight_decay`, `betas` and
        `eps` read from `TrainingArguments` (the Trainer ignores them with `optimizer_cls_and_kwargs`), and
        StableSPAM's `total_T` from `max_steps` when `base="stable_spam"`. Explicit `kwargs` win.
        Refuses a DeepSpeed config that would replace this optimizer (an `optimizer` section) or ZeRO-3."""
        from hf_plugins.distributed import check_deepspeed_optimizer

        check_deepspeed_optimizer("AlphaDecay", trainer_args=args)
        base = _resolve_base(kwargs.get("base", torch.optim.AdamW))
        out: dict[str, Any] = {
            "lr": args.learning_rate,
            "weight_decay": args.weight_decay,
            "base": base,
        }
        if base in (torch.optim.AdamW, torch.optim.Adam):
            out.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        else:
            from .stable_spam import StableSPAM

            if issubclass(base, StableSPAM):
                _, spam = StableSPAM.from_args(args, **{k: v for k, v in kwargs.items() if k == "total_T"})
                out.update({k: v for k, v in spam.items() if k not in ("lr", "weight_decay")})
        if args.weight_decay == 0:
            logger.warning(
                "AlphaDecay with weight_decay=0 scales a zero decay: every matrix gets 0. Set --weight-decay "
                "(the paper: 1e-5..1e-6 with Adam, 0.01..0.1 with AdamW)."
            )
        out.update(kwargs)
        out["base"] = base
        return cls, out
