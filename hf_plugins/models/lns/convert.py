"""Turn a Llama / Qwen2 config or model into its LayerNorm Scaling variant (same weights), e.g. to continue
pre-training an existing checkpoint with LNS."""

from __future__ import annotations

import os

from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedConfig, PreTrainedModel, Qwen2Config

from ..configuration_lns import LnsLlamaConfig, LnsQwen2Config
from ..rebuild import rebuild_with_state


__all__ = ["lns_config_from", "to_lns"]

# Source model_type -> LNS config class. The LNS types map to themselves so a flag can be flipped.
_CONFIGS = {
    "llama": LnsLlamaConfig,
    "lns_llama": LnsLlamaConfig,
    "qwen2": LnsQwen2Config,
    "lns_qwen2": LnsQwen2Config,
}
_DROP = ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path", "dtype", "torch_dtype")


def lns_config_from(config: PreTrainedConfig, layernorm_scaling: bool = True) -> LnsLlamaConfig | LnsQwen2Config:
    """The LNS config with every field of a Llama/Qwen2 `config` and `layernorm_scaling` set.

    Raises `ValueError` for other model types (only the block-input norms of Llama-style decoders are known).
    """
    if not isinstance(layernorm_scaling, bool):
        raise ValueError(f"`layernorm_scaling` must be True or False, got {layernorm_scaling!r}.")
    cls = _CONFIGS.get(getattr(config, "model_type", None))
    if cls is None or not isinstance(config, (LlamaConfig, Qwen2Config)):
        raise ValueError(
            f"LayerNorm Scaling conversion supports model types {sorted(_CONFIGS)}, got "
            f"{getattr(config, 'model_type', type(config).__name__)!r}. For other families, subclass their model "
            "and call `hf_plugins.models.lns.apply_layernorm_scaling(model.layers)`."
        )
    fields = {k: v for k, v in config.to_dict().items() if k not in _DROP}
    fields["layernorm_scaling"] = bool(layernorm_scaling)
    new = cls(**fields)
    if getattr(config, "dtype", None) is not None:
        new.dtype = config.dtype
    return new


def to_lns(
    model_or_path: PreTrainedModel | PreTrainedConfig | str | os.PathLike,
    layernorm_scaling: bool = True,
    copy: bool = False,
    **from_pretrained_kwargs,
):
    """Return the LayerNorm Scaling variant of a Llama/Qwen2 config, causal-LM model or local checkpoint.

    - a config -> its LNS config (see `lns_config_from`);
    - a model -> an `LnsLlamaForCausalLM` / `LnsQwen2ForCausalLM` holding the same weights. By default the new
      model shares the tensors of `model` (no copy, like `merge_and_unload`): do not keep training the old one.
      `copy=True` clones them;
    - a directory -> the checkpoint loaded with `from_pretrained(path, **from_pretrained_kwargs)` and converted.
      Save the result with `save_pretrained`; it then loads with `AutoModelForCausalLM` after `import hf_plugins`,
      or with `trust_remote_code=True` anywhere (the modeling files are saved with it).

    Only `model_type`, the class and `layernorm_scaling` change; parameter names are identical, so
    `layernorm_scaling=False` gives back a model with exactly the input's outputs.
    """
    if isinstance(model_or_path, PreTrainedConfig):
        return lns_config_from(model_or_path, layernorm_scaling)
    if isinstance(model_or_path, (str, os.PathLike)):
        model_or_path = AutoModelForCausalLM.from_pretrained(model_or_path, **from_pretrained_kwargs)
    model = model_or_path
    if not isinstance(model, PreTrainedModel) or not hasattr(model, "lm_head"):
        raise ValueError(
            f"to_lns expects a Llama/Qwen2 causal-LM model, config or checkpoint directory, got {type(model).__name__}"
        )
    config = lns_config_from(model.config, layernorm_scaling)
    cls = AutoModelForCausalLM._model_mapping[type(config)]
    state = {k: (v.clone() if copy else v) for k, v in model.state_dict().items()}
    return rebuild_with_state(cls, config, state, model)
