"""AlphaDecay: module-wise weight decay from the heavy-tailedness of each weight matrix's spectrum.

Paper: "AlphaDecay: Module-wise Weight Decay for Heavy-Tailed Balancing in LLMs", arXiv 2506.14562 (NeurIPS 2025);
official code github.com/hed-ucas/AlphaDecay, commit 23ce27c (`LLaMa-pretraining/WeightDecayUnbalance.py`, class
`modulewise_AlphaDecay`; defaults from its `torchrun_main.py` argparse and `scripts/`).

Every `interval` optimizer updates (and once at construction) each analysed matrix gets its power-law exponent
alpha (Hill estimator on the eigenvalues of its smaller Gram matrix, `hf_plugins.optim.esd`), and alpha is mapped
linearly from [alpha_min, alpha_max] onto [s1 * wd, s2 * wd]: heavier tails (smaller alpha) get weaker decay. Each
analysed matrix has its own parameter group; the refresh runs inside `step()` (`_alphadecay_step.py`), so no
callback is needed, and alphas, decays and the update counter live in the groups, so they survive `state_dict()`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ._alphadecay_step import AlphaDecayMixin, check_alphadecay_config, linear_decay_map
from .esd import eligible_linears
from .param_groups import hf_param_groups, named_trainable_parameters
from .stable_spam import StableSPAM, _is_number


logger = logging.getLogger(__name__)

__all__ = ["AlphaDecay", "alphadecay_optimizer_class", "linear_decay_map"]

WD_MIN_RATIO = 0.6666  # official argparse `--wd_min_ratio` (s1)
_OTHER_PARAMS = ("hf", "official")


_CLASS_CACHE: dict[type, type] = {}


def alphadecay_optimizer_class(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """The subclass `AlphaDecay<Base>` of `base` whose `step()` counts updates and refreshes the analysed groups'
    weight decay every `alphadecay_interval` updates before the base update (cached per base class)."""
    if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
        raise TypeError(f"`base` must be a torch.optim.Optimizer subclass, got {base!r}.")
    if base not in _CLASS_CACHE:
        torch_adam = base in (torch.optim.AdamW, torch.optim.Adam)
        _CLASS_CACHE[base] = type(
            f"AlphaDecay{base.__name__}",
            (AlphaDecayMixin, base),
            {
                "__module__": __name__,
                # `step()` is torch's Adam/AdamW: decoupled decay = `p.mul_(1 - lr * wd)` before the update
                "_alphadecay_decoupled": torch_adam,
                "_alphadecay_rejects_sparse": torch_adam or issubclass(base, StableSPAM),
            },
        )
    return _CLASS_CACHE[base]


def _resolve_base(base) -> type[torch.optim.Optimizer]:
    if isinstance(base, str):
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
        interval (`int`, *optional*, defaults to `500`): updates between refreshes (official
            `--unbalancedWD_every`, 500 in the argparse default and every script).
        wd_min_ratio (`float`, *optional*, defaults to `0.6666`): s1, the multiplier at alpha_min (official
            argparse `--wd_min_ratio`).
        wd_max_ratio (`float` or `None`, *optional*, defaults to `None`):
            s2, the multiplier at alpha_max; None picks 3 for `torch.optim.Adam` (official argparse `--wd_max_ratio`
            and the scripts of the paper's Adam table) and 5 otherwise (the scripts of its AdamW table).
        xmin_pos (`float`, *optional*, defaults to `2`): xmin = the int(N / xmin_pos)-th eigenvalue, the median
            (official `xmin_pos=2`, `pl_fitting="median"`).
        min_eigs (`int`, *optional*, defaults to `50`): matrices with fewer eigenvalues are not analysed
            (official `eigs_thresh`).
        remove_first, remove_last (`bool`, *optional*, default `True`): leave the first / last `nn.Linear` out of
            the analysis (official `remove_first_layer` / `remove_last_layer`).
        esd_streams (`int`, *optional*, defaults to `1`):
            GPU worker threads / CUDA streams of the refresh's `eigvalsh` (ours; docs/alphadecay.md, "The ESD").
        merge_groups (`bool`, *optional*, defaults to `True`):
            With a decoupled base (AdamW; Adam with `decoupled_weight_decay=True`): apply the per-matrix decays in one
            `torch._foreach_mul_` and run the base update on the groups merged by their other hyperparameters
            (usually 2 instead of one per matrix; same result, see `docs/alphadecay.md`). Other bases (coupled
            Adam, SGD, StableSPAM) run per group; StableSPAM's fused kernels take every group in one launch, each
            matrix's decay folded into the update.
        overlap_refresh (`bool` or `None`, *optional*, defaults to `None`):
            Compute each refresh's spectra on a worker thread (and a side CUDA stream) during the forward and
            backward pass before the refresh update, instead of inside that update: the same alphas and decays
            (the weights are the same), the latency hidden. None: on when the analysed weights are on one CUDA
            device; True: also on CPU; False: never.
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
        overlap_refresh: bool | None = None,
        **base_kwargs,
    ) -> torch.optim.Optimizer:
        if not isinstance(model, nn.Module):
            raise TypeError(f"AlphaDecay needs the model (an nn.Module), got {type(model).__name__}.")
        base_cls = _resolve_base(base)
        if wd_max_ratio is None:
            wd_max_ratio = 3.0 if base_cls is torch.optim.Adam else 5.0
        check_alphadecay_config(
            interval, wd_min_ratio, wd_max_ratio, xmin_pos, esd_streams, merge_groups, overlap_refresh
        )
        if not (_is_number(weight_decay) and 0 <= weight_decay < math.inf):
            raise ValueError(f"`weight_decay` must be a finite number >= 0, got {weight_decay!r}.")
        if not (_is_number(min_eigs) and int(min_eigs) == min_eigs and min_eigs >= 2):
            raise ValueError(f"`min_eigs` must be an integer >= 2, got {min_eigs!r}.")
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
            alphadecay_overlap_refresh=overlap_refresh,
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
        elif issubclass(base, StableSPAM):
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
