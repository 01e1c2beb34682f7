"""HF-style parameter groups (decay / no-decay) for plain PyTorch loops, with the Trainer's rules.

`transformers.Trainer.create_optimizer` puts biases and normalisation weights at weight decay 0 and everything
else (embeddings included) at `args.weight_decay`. The same split is needed outside the Trainer and by AlphaDecay
for the parameters it does not analyse, so it lives here once.
"""

from __future__ import annotations

import re

import torch
from torch import nn


__all__ = ["NO_DECAY_PATTERNS", "hf_param_groups", "is_no_decay", "strip_wrapper_prefixes"]

# The Trainer's name rules (transformers 5.x `get_decay_parameter_names`), matched on the lower-cased name.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
_NO_DECAY_RE = [re.compile(p) for p in NO_DECAY_PATTERNS]
# Prefixes added by PEFT, torch.compile and DDP/FSDP wrappers; names are compared without them.
_WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.")


def strip_wrapper_prefixes(name: str) -> str:
    """`base_model.model._orig_mod.model.layers.0...` -> `model.layers.0...`."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _is_norm_module(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or type(module).__name__.lower().endswith("norm")


def is_no_decay(name: str, module: nn.Module | None = None) -> bool:
    """True for parameters the Trainer keeps at weight decay 0: biases and normalisation weights."""
    if module is not None and _is_norm_module(module):
        return True
    lowered = name.lower()
    return any(p.search(lowered) for p in _NO_DECAY_RE)


def named_trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Module, torch.nn.Parameter]]:
    """`(name, owning module, parameter)` for each trainable parameter, tied parameters once (first name)."""
    seen: set[int] = set()
    out = []
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            out.append((f"{module_name}.{pname}" if module_name else pname, module, p))
    return out


def hf_param_groups(
    model: nn.Module, weight_decay: float, exclude: set[int] | None = None, **group_options
) -> list[dict]:
    """Two groups like the Trainer's: `[{"params": decayed, "weight_decay": wd}, {"params": rest, "weight_decay":
    0.0}]`, skipping empty groups and parameters whose `id` is in `exclude`. Extra `group_options` go into both."""
    exclude = exclude or set()
    decay, no_decay = [], []
    for name, module, p in named_trainable_parameters(model):
        if id(p) in exclude:
            continue
        (no_decay if is_no_decay(name, module) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), **group_options},
        {"params": no_decay, "weight_decay": 0.0, **group_options},
    ]
    return [g for g in groups if g["params"]]
