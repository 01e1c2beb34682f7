"""MoE -> CoE up-cycling: turn a trained CoE model with one iteration (a plain top-K MoE) into a CoE model with C
iterations that computes exactly the same logits before any further training.

The official repository's `convert_moe_to_coe` branch (`scripts/convert_moe_to_coe.py`, DeepSeek-V2) does it by
copying the router into every iteration's router and multiplying the first iteration's expert output by a learnable
scalar `coe_weight` initialised to 0. With x(1) = x(0) + 0 * d_1 = x(0), the last iteration sees the MoE's input and
routes it as the MoE did, so the layer adds the MoE's output; training then moves the scalar away from 0.
"""

from __future__ import annotations

import copy

import torch

from ..configuration_coe import CoEConfig
from ..modeling_coe import CoEForCausalLM, CoESparseMoeBlock


__all__ = ["moe_to_coe"]


def moe_to_coe(model: CoEForCausalLM, num_iterations: int = 2, copy_weights: bool = False) -> CoEForCausalLM:
    """A `CoEForCausalLM` with `num_iterations` iterations whose logits equal those of `model` (a `CoEForCausalLM` with
    `num_iterations=1`, i.e. a top-K MoE), for continued training as CoE.

    The new config is `model.config` with `num_iterations`, `router_per_iteration=True`, `inner_residual=True` and
    `learnable_chain_scale=True`. Every weight is taken over; each layer's router is copied into the routers of the
    later iterations, and the chain scales a_1..a_{C-1} start at 0 (official up-cycling, `coe_weight`). By default the
    new model shares the tensors of `model` (like `merge_and_unload`): do not keep training the old one;
    `copy_weights=True` clones them.

    Example:

        >>> moe = AutoModelForCausalLM.from_pretrained("my-moe")        # a CoE checkpoint with num_iterations=1
        >>> coe = moe_to_coe(moe, num_iterations=2)                    # same logits, now C = 2
        >>> coe.save_pretrained("my-coe")
    """
    if not isinstance(model, CoEForCausalLM):
        raise ValueError(f"moe_to_coe expects a CoEForCausalLM, got {type(model).__name__}.")
    source: CoEConfig = model.config
    if source.num_iterations != 1:
        raise ValueError(
            f"moe_to_coe up-cycles a model with num_iterations=1 (a plain MoE), got num_iterations="
            f"{source.num_iterations}."
        )
    if not isinstance(num_iterations, int) or num_iterations < 2:
        raise ValueError(f"`num_iterations` must be an integer >= 2, got {num_iterations!r}.")
    if source.residual_mode == "official" and not source.inner_residual:
        raise ValueError(
            "moe_to_coe needs the inner residual; an MoE trained with residual_mode='official' and "
            "inner_residual=False returns the experts' output alone, which an up-cycled chain cannot reproduce."
        )
    config = copy.deepcopy(source)
    config.num_iterations = num_iterations
    config.router_per_iteration = True
    config.inner_residual = True
    config.learnable_chain_scale = True
    config.check_coe_fields()

    state = {k: (v.clone() if copy_weights else v) for k, v in model.state_dict().items()}
    for name, block in model.named_modules():
        if not isinstance(block, CoESparseMoeBlock):
            continue
        router = state[f"{name}.routers.0.weight"]
        for t in range(1, num_iterations):
            state[f"{name}.routers.{t}.weight"] = router.clone()
        dtype = block.experts.gate_up_proj.dtype
        state[f"{name}.chain_scale"] = torch.zeros(num_iterations - 1, dtype=dtype, device=router.device)

    with torch.device("meta"):  # no memory and no random init for weights that are assigned below
        new = CoEForCausalLM(config)
    new.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (the RoPE inverse frequencies) are not in the state dict: take them over by name.
    old_buffers = dict(model.named_buffers())
    for name, buf in new.named_buffers():
        if buf.is_meta:
            module_name, _, attr = name.rpartition(".")
            new.get_submodule(module_name)._buffers[attr] = old_buffers[name].clone()
    if config.tie_word_embeddings:
        new.tie_weights()
    new.generation_config = copy.deepcopy(model.generation_config)
    return new.train(model.training)
