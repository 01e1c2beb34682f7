"""Optimizers: Stable-SPAM, AlphaDecay (module-wise weight decay from heavy-tailed spectra) and the batched ESD
analysis AlphaDecay uses. Importing this package registers `--optim stable_spam`, `--optim alphadecay` and
`--optim alphadecay:stable_spam` with `hf_plugins.registry`."""

from . import registration  # fills hf_plugins.registry
from .alphadecay import AlphaDecay, alphadecay_optimizer_class, linear_decay_map
from .callbacks import OptimizerStatsCallback
from .esd import esd_alphas, gram_eigenvalues, hill_alpha, model_esd
from .param_groups import hf_param_groups
from .stable_spam import StableSPAM


__all__ = [
    "AlphaDecay",
    "OptimizerStatsCallback",
    "StableSPAM",
    "alphadecay_optimizer_class",
    "esd_alphas",
    "gram_eigenvalues",
    "hf_param_groups",
    "hill_alpha",
    "linear_decay_map",
    "model_esd",
]
