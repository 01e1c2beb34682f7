"""Chain-of-Experts (arXiv 2506.18945): `CoEConfig`, `CoEModel`, `CoEForCausalLM`, registered with the Auto classes.

Importing this package (or `hf_plugins`) registers model type "coe" with AutoConfig, AutoModel and
AutoModelForCausalLM, and `--model-config coe` with the hf-plugins CLI.
"""

import dataclasses

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hf_plugins.registry import register_model_config

from ..configuration_coe import CoEConfig
from ..modeling_coe import (
    CoECausalLMOutputWithPast,
    CoEForCausalLM,
    CoEModel,
    CoEPreTrainedModel,
    coe_router_aux_loss,
)
from .convert import moe_to_coe


AutoConfig.register(CoEConfig.model_type, CoEConfig, exist_ok=True)
AutoModel.register(CoEConfig, CoEModel, exist_ok=True)
AutoModelForCausalLM.register(CoEConfig, CoEForCausalLM, exist_ok=True)

# `--model-config coe` defaults: a small CoE(C=2, K=2, N=16) for from-scratch runs on one device; the paper's
# shape (the CoEConfig defaults) is one `--model-arg` per field away.
SMALL_COE = {
    "hidden_size": 256,  # 1024
    "intermediate_size": 512,  # dense layers only
    "num_hidden_layers": 4,  # 4
    "num_attention_heads": 4,  # 8
    "num_key_value_heads": 4,  # 8
    "num_experts": 16,  # 63 routed + 1 shared
    "num_experts_per_tok": 2,  # 4
    "num_iterations": 2,  # 2
    "moe_intermediate_size": 128,  # 704
    "n_shared_experts": 1,  # 1
    "max_position_embeddings": 2048,  # 4096
    "tie_word_embeddings": False,
}


def build_coe_config(tokenizer, options: dict | None = None) -> CoEConfig:
    """`--model-config coe`: a small `CoEConfig` sized for `tokenizer`'s vocabulary; `options` override fields."""
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(CoEConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"--model-arg names no CoEConfig field: {unknown}")
    fields = {
        **SMALL_COE,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    fields.update(options)
    return CoEConfig(**fields)


register_model_config(
    "coe",
    build_coe_config,
    help="Chain-of-Experts (arXiv 2506.18945), small by default (hidden 256, 4 layers, 16 experts, C=2, K=2); "
    "--model-arg overrides any CoEConfig field, e.g. num_iterations=1 for the MoE baseline",
    paper="arXiv 2506.18945",
)

__all__ = [
    "SMALL_COE",
    "CoECausalLMOutputWithPast",
    "CoEConfig",
    "CoEForCausalLM",
    "CoEModel",
    "CoEPreTrainedModel",
    "build_coe_config",
    "coe_router_aux_loss",
    "moe_to_coe",
]
