"""`--model-config lns_llama` and `--model-config llama` (its Pre-LN baseline) for `hf-plugins train`.

Both build the same small Llama sized for the tokenizer's vocabulary, so a Pre-LN vs LNS comparison differs
only in the flag. Defaults are a narrow 12-layer version of the paper's LLaMA-130M (768 / 2048 / 12 / 12,
`configs/llama_130m.json` of the official code); override any field with `--model-arg KEY=VALUE`.
"""

from __future__ import annotations

from transformers import LlamaConfig

from hf_plugins.registry import register_model_config

from ..configuration_lns import LnsLlamaConfig


SMALL_LLAMA = {
    "hidden_size": 256,  # 768 (LLaMA-130M)
    "intermediate_size": 688,  # 2048; keeps the 8/3 SwiGLU ratio
    "num_hidden_layers": 12,  # 12 (130M) / 24 (250M-1B)
    "num_attention_heads": 4,  # 12
    "max_position_embeddings": 1024,  # sequences of 256 in the paper
    "initializer_range": 0.02,  # plain Normal(0, 0.02), no depth-scaled init (paper; official README caveat)
    "tie_word_embeddings": False,  # untied, as the official LLaMA configs
}


def _build(layernorm_scaling: bool | None):
    def build(tokenizer, options: dict):
        fields = dict(SMALL_LLAMA)
        fields.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        cls = LlamaConfig if layernorm_scaling is None else LnsLlamaConfig
        known = set(cls.__dataclass_fields__) if hasattr(cls, "__dataclass_fields__") else set()
        unknown = sorted(k for k in options if known and k not in known)
        if unknown:
            raise ValueError(f"--model-arg names no {cls.__name__} field: {unknown}")
        fields.update(options)
        if layernorm_scaling is not None:
            fields.setdefault("layernorm_scaling", layernorm_scaling)
        return cls(**fields)

    return build


register_model_config(
    "lns_llama",
    _build(True),
    "small Llama (12 x 256) with LayerNorm Scaling 1/sqrt(l) on the block-input norms (arXiv 2502.05795)",
    paper="arXiv 2502.05795",
)
register_model_config("llama", _build(None), "small Pre-LN Llama (12 x 256), the LNS baseline (same sizes)")
