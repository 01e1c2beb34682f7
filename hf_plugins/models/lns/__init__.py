"""LayerNorm Scaling (arXiv 2502.05795): `lns_llama` / `lns_qwen2` model types, a converter and depth diagnostics."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ..configuration_lns import LnsLlamaConfig, LnsQwen2Config
from ..modeling_lns import (
    LnsLlamaForCausalLM,
    LnsLlamaModel,
    LnsQwen2ForCausalLM,
    LnsQwen2Model,
    apply_layernorm_scaling,
)
from ..scaled_rms_norm import ScaledRMSNorm, layernorm_scale
from .convert import lns_config_from, to_lns


AutoConfig.register(LnsLlamaConfig.model_type, LnsLlamaConfig, exist_ok=True)
AutoModel.register(LnsLlamaConfig, LnsLlamaModel, exist_ok=True)
AutoModelForCausalLM.register(LnsLlamaConfig, LnsLlamaForCausalLM, exist_ok=True)
AutoConfig.register(LnsQwen2Config.model_type, LnsQwen2Config, exist_ok=True)
AutoModel.register(LnsQwen2Config, LnsQwen2Model, exist_ok=True)
AutoModelForCausalLM.register(LnsQwen2Config, LnsQwen2ForCausalLM, exist_ok=True)

from . import pretrain_configs  # noqa: E402  (registers `--model-config lns_llama` and `llama`)


__all__ = [
    "LnsLlamaConfig",
    "LnsLlamaForCausalLM",
    "LnsLlamaModel",
    "LnsQwen2Config",
    "LnsQwen2ForCausalLM",
    "LnsQwen2Model",
    "ScaledRMSNorm",
    "apply_layernorm_scaling",
    "layernorm_scale",
    "lns_config_from",
    "to_lns",
]
