"""LayerNorm Scaling (arXiv 2502.05795) as thin subclasses of transformers' Llama and Qwen2.

For block l = layer_idx + 1:

    h   = x + Attn(RMSNorm_in(x)   / sqrt(l))
    out = h + MLP (RMSNorm_post(h) / sqrt(l))

Only the two block-input norms change: each is replaced by an `LnsRMSNorm` that carries a Python float
`scale` and folds it into the learnable gain (an H-sized multiply, no extra pass over the activations). The
decoder layers, attention backends, cache handling, gradient checkpointing and `generate()` are inherited
from transformers, including each version's forward signature (`past_key_values` up to 5.23, `cache` in
5.24). Parameter names are unchanged, so any Llama/Qwen2 checkpoint loads into these classes and back.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM, Qwen2Model, Qwen2PreTrainedModel

from .configuration_lns import LnsLlamaConfig, LnsQwen2Config


__all__ = [
    "LnsLlamaForCausalLM",
    "LnsLlamaModel",
    "LnsQwen2ForCausalLM",
    "LnsQwen2Model",
    "LnsRMSNorm",
    "apply_layernorm_scaling",
    "layernorm_scale",
]


def layernorm_scale(layer_idx: int) -> float:
    """1/sqrt(l) for the 0-based `layer_idx` (l = layer_idx + 1 counts blocks, not sub-layers; paper, LNS equation)."""
    if layer_idx < 0:
        raise ValueError(f"`layer_idx` must be >= 0, got {layer_idx}")
    return 1.0 / math.sqrt(layer_idx + 1)


class LnsRMSNorm(nn.Module):
    """RMSNorm whose output is multiplied by a fixed `scale`: `(weight * scale) * x / rms(x)`.

    Same parameter name (`weight`), eps and fp32 normalisation as Llama's and Qwen2's RMSNorm. It is our own
    module rather than a subclass of `LlamaRMSNorm` because that class is tagged
    `use_kernel_forward_from_hub("RMSNorm")`: with `use_kernels=True` transformers may swap the forward of
    tagged classes for a hub kernel, and a subclass would inherit the tag and silently lose the scale.
    The class name contains "RMSNorm" so `PreTrainedModel._init_weights` initialises `weight` to ones.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        # The scale is a Python float, not a buffer: transformers v5 builds models on the meta device and only
        # `_init_weights` re-initialises tensors, so a buffer filled in __init__ would come back empty (the same
        # failure made LayerNorm Scaling silently wrong in allenai/OLMo-core PR #698).
        self.scale = float(scale)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return (self.weight * self.scale) * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, scale={self.scale:.6g}"


def apply_layernorm_scaling(layers: nn.ModuleList, norm_names=("input_layernorm", "post_attention_layernorm")) -> None:
    """Replace the block-input norms of every layer in `layers` by `LnsRMSNorm` with scale 1/sqrt(l).

    The gain and eps of the old norm are kept (a model built on the meta device keeps meta gains, which
    loading fills in). QK-norms and the final norm are never touched (paper; OLMo-core). Other model types
    (CoE, NeuroTrails) call this on their own layer lists to offer `layernorm_scaling`.
    """
    for idx, layer in enumerate(layers):
        for name in norm_names:
            old = getattr(layer, name)
            eps = getattr(old, "variance_epsilon", getattr(old, "eps", 1e-6))
            new = LnsRMSNorm(old.weight.shape[0], eps=eps, scale=layernorm_scale(idx))
            new.weight = old.weight  # same Parameter: its device, dtype and any loaded value carry over
            setattr(layer, name, new)


class LnsLlamaModel(LlamaModel):
    """[`~transformers.LlamaModel`] with LayerNorm Scaling on the two block-input norms of every layer."""

    config_class = LnsLlamaConfig
    config: LnsLlamaConfig

    def __init__(self, config: LnsLlamaConfig):
        super().__init__(config)
        if config.layernorm_scaling:
            apply_layernorm_scaling(self.layers)


class LnsLlamaForCausalLM(LlamaForCausalLM, GenerationMixin):
    """[`~transformers.LlamaForCausalLM`] on an [`LnsLlamaModel`]; forward, loss and generation are Llama's."""

    config_class = LnsLlamaConfig
    config: LnsLlamaConfig

    def __init__(self, config: LnsLlamaConfig):
        # LlamaForCausalLM.__init__ would build a plain LlamaModel; these four lines are its body with ours.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LnsLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class LnsQwen2Model(Qwen2Model):
    """[`~transformers.Qwen2Model`] with LayerNorm Scaling on the two block-input norms of every layer."""

    config_class = LnsQwen2Config
    config: LnsQwen2Config

    def __init__(self, config: LnsQwen2Config):
        super().__init__(config)
        if config.layernorm_scaling:
            apply_layernorm_scaling(self.layers)


class LnsQwen2ForCausalLM(Qwen2ForCausalLM, GenerationMixin):
    """[`~transformers.Qwen2ForCausalLM`] on an [`LnsQwen2Model`]."""

    config_class = LnsQwen2Config
    config: LnsQwen2Config

    def __init__(self, config: LnsQwen2Config):
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = LnsQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
