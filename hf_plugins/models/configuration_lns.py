"""Configurations of the LayerNorm Scaling model types (`lns_llama`, `lns_qwen2`).

LayerNorm Scaling ("The Curse of Depth in Large Language Models", arXiv 2502.05795, NeurIPS 2025) multiplies
the output of each block's pre-attention and pre-MLP norm by 1/sqrt(l), l the 1-based block index. The configs
are the families' own configs plus one flag; each has its own `model_type` because registering an Auto class
for `LlamaConfig` itself would replace Llama for the whole process.
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, Qwen2Config


__all__ = ["LnsLlamaConfig", "LnsQwen2Config"]


@strict
class LnsLlamaConfig(LlamaConfig):
    """
    [`~transformers.LlamaConfig`] with LayerNorm Scaling.

    Args:
        layernorm_scaling (`bool`, *optional*, defaults to `True`):
            Multiply the outputs of `input_layernorm` and `post_attention_layernorm` of block l (1-based) by
            1/sqrt(l) (paper, LNS equation; official `modeling_llama.py`). The final norm and the embeddings are untouched. With
            `False` the model is exactly transformers' Llama.

    Every other field is [`~transformers.LlamaConfig`]'s; initialisation stays Normal(0, `initializer_range`)
    with no depth-scaled init (the official README warns that combining LNS with scaled init hurts).

    Example:

        >>> from transformers import AutoModelForCausalLM
        >>> from hf_plugins import LnsLlamaConfig
        >>> model = AutoModelForCausalLM.from_config(LnsLlamaConfig(hidden_size=256, num_hidden_layers=12))
    """

    model_type = "lns_llama"

    layernorm_scaling: bool = True


@strict
class LnsQwen2Config(Qwen2Config):
    """
    [`~transformers.Qwen2Config`] with LayerNorm Scaling.

    Args:
        layernorm_scaling (`bool`, *optional*, defaults to `True`):
            Multiply the outputs of `input_layernorm` and `post_attention_layernorm` of block l (1-based) by
            1/sqrt(l) (paper, LNS equation). The final norm is untouched. With `False` the model is exactly
            transformers' Qwen2.
    """

    model_type = "lns_qwen2"

    layernorm_scaling: bool = True


# `save_pretrained` then writes `auto_map` and copies this file, so the checkpoint loads with
# `AutoConfig.from_pretrained(dir, trust_remote_code=True)` where hf_plugins is not installed.
LnsLlamaConfig.register_for_auto_class()
LnsQwen2Config.register_for_auto_class()
