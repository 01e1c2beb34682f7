"""LayerNorm Scaling (arXiv 2502.05795) as thin subclasses of transformers' Llama and Qwen2.

For block l = layer_idx + 1:

    h   = x + Attn(RMSNorm_in(x)   / sqrt(l))
    out = h + MLP (RMSNorm_post(h) / sqrt(l))

Only the two block-input norms change: each is replaced by a `ScaledRMSNorm` (scaled_rms_norm.py, shared with CoE and
NeuroTrails) that carries a Python float `scale` and folds it into the learnable gain. The
decoder layers, attention backends, cache handling, gradient checkpointing and `generate()` are inherited
from transformers, including each version's forward signature (`past_key_values` up to 5.23, `cache` in
5.24). Parameter names are unchanged, so any Llama/Qwen2 checkpoint loads into these classes and back.
"""

from __future__ import annotations

from torch import nn
from transformers import GenerationMixin
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM, Qwen2Model, Qwen2PreTrainedModel

from .configuration_lns import LnsLlamaConfig, LnsQwen2Config
from .scaled_rms_norm import ScaledRMSNorm, layernorm_scale


__all__ = [
    "LnsLlamaForCausalLM",
    "LnsLlamaModel",
    "LnsQwen2ForCausalLM",
    "LnsQwen2Model",
    "apply_layernorm_scaling",
]


def apply_layernorm_scaling(layers: nn.ModuleList, norm_names=("input_layernorm", "post_attention_layernorm")) -> None:
    """Replace the block-input norms of every layer in `layers` by `ScaledRMSNorm` with scale 1/sqrt(l).

    The gain and eps of the old norm are kept (a model built on the meta device keeps meta gains, which
    loading fills in). QK-norms and the final norm are never touched (paper; OLMo-core). Use it to add LayerNorm
    Scaling to another Llama-style family's layer list.
    """
    for idx, layer in enumerate(layers):
        for name in norm_names:
            old = getattr(layer, name)
            eps = getattr(old, "variance_epsilon", getattr(old, "eps", 1e-6))
            new = ScaledRMSNorm(old.weight.shape[0], eps=eps, scale=layernorm_scale(idx))
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


# `save_pretrained` writes `auto_map` and copies this file with the files it imports relatively (configuration_lns.py,
# scaled_rms_norm.py): `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` then works without
# hf_plugins.
LnsLlamaModel.register_for_auto_class("AutoModel")
LnsLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
LnsQwen2Model.register_for_auto_class("AutoModel")
LnsQwen2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
