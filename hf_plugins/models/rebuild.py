"""Build a model of another class around an existing model's tensors, without allocating or initialising new ones.

Used by the converters (`to_lns`, `moe_to_coe`); library-only (not saved with checkpoints).
"""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedConfig, PreTrainedModel


__all__ = ["rebuild_with_state"]


def rebuild_with_state(
    cls: type[PreTrainedModel], config: PreTrainedConfig, state: dict[str, torch.Tensor], source: PreTrainedModel
) -> PreTrainedModel:
    """`cls(config)` holding `state` (assigned, not copied: pass clones to decouple), with the non-persistent buffers
    (RoPE inverse frequencies), a copy of the generation config and train/eval mode of `source`, and tied embeddings re-tied.
    `state` must name every parameter and persistent buffer of the new model (strict load)."""
    with torch.device("meta"):  # no memory and no random init for weights that are assigned below
        new = cls(config)
    new.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are not in the state dict: take them over by name.
    old_buffers = dict(source.named_buffers())
    for name, buf in new.named_buffers():
        if buf.is_meta:
            module_name, _, attr = name.rpartition(".")
            new.get_submodule(module_name)._buffers[attr] = old_buffers[name].clone()
    if getattr(config, "tie_word_embeddings", False):
        new.tie_weights()
    new.generation_config = copy.deepcopy(source.generation_config)
    return new.train(source.training)
