"""NeuroTrails (arXiv 2505.17909): `NeuroTrailsConfig`, `NeuroTrailsModel`, `NeuroTrailsForCausalLM`, the
dynamic-sparsity `NeuroTrailsSparsityCallback`.

Importing this package (or `hf_plugins`) registers model type "neurotrails" with AutoConfig, AutoModel and
AutoModelForCausalLM, and `--model-config neurotrails` with the hf-plugins CLI.
"""

import dataclasses

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hf_plugins import registry

from ..configuration_neurotrails import NeuroTrailsConfig
from ..modeling_neurotrails import (
    NeuroTrailsCausalLMOutput,
    NeuroTrailsForCausalLM,
    NeuroTrailsModel,
    NeuroTrailsPreTrainedModel,
    sparse_layer_shapes,
)
from ..neurotrails_callback import NeuroTrailsSparsityCallback, find_neurotrails_model
from ..neurotrails_sparsity import erk_densities, prune_rate_at


AutoConfig.register(NeuroTrailsConfig.model_type, NeuroTrailsConfig, exist_ok=True)
AutoModel.register(NeuroTrailsConfig, NeuroTrailsModel, exist_ok=True)
AutoModelForCausalLM.register(NeuroTrailsConfig, NeuroTrailsForCausalLM, exist_ok=True)

# `--model-config neurotrails` defaults: a small 3-trail model for from-scratch runs on one device; the official
# LLaMA-130M shape (the NeuroTrailsConfig defaults) is one `--model-arg` per field away.
SMALL_NEUROTRAILS = {
    "hidden_size": 128,  # 768
    "intermediate_size": 352,  # 2048
    "num_hidden_layers": 4,  # 12
    "num_attention_heads": 4,  # 12
    "num_key_value_heads": 4,  # 12
    "blocks_in_head": 2,  # 8
    "num_trails": 3,  # 3
    "density": 0.9,  # 0.9
    "max_position_embeddings": 1024,  # 1024
}


def build_neurotrails_config(tokenizer, options: dict | None = None) -> NeuroTrailsConfig:
    """`--model-config neurotrails`: a small `NeuroTrailsConfig` sized for `tokenizer`'s vocabulary; `options`
    (`--model-arg KEY=VALUE`) override any field."""
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(NeuroTrailsConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"--model-arg names no NeuroTrailsConfig field: {unknown}")
    fields = {
        **SMALL_NEUROTRAILS,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    fields.update(options)
    return NeuroTrailsConfig(**fields)


registry.register_model_config(
    "neurotrails",
    build_neurotrails_config,
    help="NeuroTrails (arXiv 2505.17909): shared backbone + 3 sparse trails, small by default (hidden 128, 2 shared "
    "+ 3 x 2 trail blocks, density 0.9); --model-arg overrides any NeuroTrailsConfig field",
    paper="arXiv 2505.17909",
)

__all__ = [
    "SMALL_NEUROTRAILS",
    "NeuroTrailsCausalLMOutput",
    "NeuroTrailsConfig",
    "NeuroTrailsForCausalLM",
    "NeuroTrailsModel",
    "NeuroTrailsPreTrainedModel",
    "NeuroTrailsSparsityCallback",
    "build_neurotrails_config",
    "erk_densities",
    "find_neurotrails_model",
    "prune_rate_at",
    "sparse_layer_shapes",
]
