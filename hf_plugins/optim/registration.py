"""`--optim stable_spam`, `--optim alphadecay` and `--optim alphadecay:stable_spam` for `hf-plugins train`."""

from __future__ import annotations

import inspect

from hf_plugins.registry import register_optimizer

from .alphadecay import AlphaDecay, _resolve_base
from .stable_spam import StableSPAM


def _accepted(fn) -> set[str]:
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("self", "params", "model")
    }


def _clean(options: dict, allowed: set[str], flag: str) -> dict:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{flag} does not accept --optim-arg {unknown}; known: {sorted(allowed)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _stable_spam(training_args, options: dict):
    return StableSPAM.from_args(
        training_args, **_clean(options, _accepted(StableSPAM.__init__), "--optim stable_spam")
    )


def _alphadecay(base_name: str | None):
    def build(training_args, options: dict):
        options = dict(options)
        if base_name is not None:
            if "base" in options:
                raise ValueError(f"--optim alphadecay:{base_name} fixes the base optimizer; drop --optim-arg base=...")
            options["base"] = base_name
        base = _resolve_base(options.get("base", "adamw"))
        allowed = _accepted(AlphaDecay.__call__) | _accepted(base.__init__)
        flag = "--optim alphadecay" + (f":{base_name}" if base_name else "")
        return AlphaDecay.from_args(training_args, **_clean(options, allowed, flag))

    return build


def _stats_callbacks(options: dict) -> list:
    from .callbacks import OptimizerStatsCallback

    return [OptimizerStatsCallback()]


_MAX_GRAD_NOTE = " The paper trains without global clipping: add --max-grad-norm 0 for faithful runs."
register_optimizer(
    "stable_spam",
    _stable_spam,
    "Stable-SPAM (arXiv 2502.17055): AdamW + adaptive spike clipping, gradient-norm scaling, momentum reset; "
    "lr/betas/eps/weight decay from the training flags, total_T = --max-steps; options: gamma1, gamma2, theta, "
    "reset_interval, eta_min, ..." + _MAX_GRAD_NOTE,
    callbacks=_stats_callbacks,
    paper="arXiv 2502.17055",
)
register_optimizer(
    "alphadecay",
    _alphadecay(None),
    "AlphaDecay (arXiv 2506.14562): per-matrix weight decay from spectral alpha, refreshed every 500 updates, on "
    "AdamW (--optim-arg base=adam for coupled L2); base decay = --weight-decay; options: interval, wd_min_ratio, "
    "wd_max_ratio, min_eigs, other_params",
    callbacks=_stats_callbacks,
    paper="arXiv 2506.14562",
)
register_optimizer(
    "alphadecay:stable_spam",
    _alphadecay("stable_spam"),
    "AlphaDecay's per-matrix weight decay on top of Stable-SPAM (options of both)." + _MAX_GRAD_NOTE,
    callbacks=_stats_callbacks,
    paper="arXiv 2506.14562, arXiv 2502.17055",
)
