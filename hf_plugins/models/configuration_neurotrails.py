"""Configuration of NeuroTrails (arXiv 2505.17909): a shared Llama backbone split into sparse "trails"."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig


PRUNE_CRITERIA = ("soft_magnitude", "magnitude")
GROWTH_MODES = ("gradient", "random")
LOSS_REDUCTIONS = ("sum", "mean")


@strict
class NeuroTrailsConfig(LlamaConfig):
    """
    Configuration for NeuroTrails (Grooten et al., arXiv 2505.17909): a Llama decoder whose first
    `num_hidden_layers - blocks_in_head` blocks are shared and whose last `blocks_in_head` blocks, final norm and
    output layer are replicated into `num_trails` independently initialised "trails"; the prediction is the mean of
    the trails' logits. Every 2-D weight is sparse (ERK densities) and its connectivity evolves during training
    (prune by magnitude, regrow by gradient). The Llama fields keep their meaning; `num_hidden_layers` is the depth
    of one path (backbone + one trail), so the model holds `num_hidden_layers - blocks_in_head + num_trails *
    blocks_in_head` decoder layers. The Llama defaults are replaced by the official LLaMA-130M shape
    (`configs/llama_130m.json` of the official code).

    Args:
        num_trails (`int`, *optional*, defaults to `3`):
            Number of trails H, the paper's "heads" (all reported runs use 3). Named `num_trails` because
            transformers reads `num_heads` as attention heads; `num_heads` is refused to avoid the mix-up.
        blocks_in_head (`int`, *optional*, defaults to `8`):
            Decoder blocks per trail, b, with 1 <= b <= num_hidden_layers (official LLaMA-130M script: 8 of 12;
            LLaMA-350M: 16 of 24). `b == num_hidden_layers` gives a full ensemble with no shared block.
        density (`float`, *optional*, defaults to `0.9`):
            Overall fraction of non-zero entries over the sparse weights (`scripts/train_llm.sh`). `1.0` is a dense
            "TreeNet": no masks and no topology updates.
        sparse_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the token embedding is sparse (official default; `--dense_embedding` turns it off).
        sparse_lm_heads (`bool`, *optional*, defaults to `True`):
            Whether each trail's output layer is sparse (official default: every 2-D weight is masked).
        update_frequency (`int`, *optional*, defaults to `50`):
            Optimizer steps between topology updates (LLM script; the vision scripts use 1000).
        prune_rate (`float`, *optional*, defaults to `0.5`):
            Initial fraction of each layer's active weights pruned (and regrown) at an update (official default).
        prune_rate_min (`float`, *optional*, defaults to `0.005`):
            Floor of the cosine decay of the prune rate over the training steps (official `eta_min`).
        prune_criterion (`str`, *optional*, defaults to `"soft_magnitude"`):
            `"soft_magnitude"`: keep weights sampled without replacement with probability proportional to
            |w|^prune_temperature (LLM default, Zhang et al. arXiv 2501.19107); `"magnitude"`: drop the smallest |w|
            (CIFAR script).
        prune_temperature (`float`, *optional*, defaults to `3.0`):
            Exponent T of the soft magnitude criterion (official `--temperature 3.0`; renamed because generate()
            reads a config field named `temperature` as the sampling temperature).
        growth (`str`, *optional*, defaults to `"gradient"`):
            `"gradient"`: regrow the inactive positions with the largest |gradient| (RigL, LLM default);
            `"random"`: uniformly random positions (SET, the ImageNet script).
        head_loss_reduction (`str`, *optional*, defaults to `"sum"`):
            How the trails' cross-entropies are combined into the training loss: `"sum"` (language-model code) or
            `"mean"` (vision code).
        embedding_init_std (`float`, *optional*, defaults to `0.02`):
            Standard deviation of the embedding initialisation. The official LLM code uses sqrt(2/5) ~ 0.632
            (`peft_pretraining/modeling_llama.py`), which the maintainers of the same code lineage (LayerNorm-Scaling,
            lmsdss/LayerNorm-Scaling commit eb1a0a5) called a leftover of an ablation branch and replaced by 0.02;
            pass 0.632 to reproduce the NeuroTrails runs.
        layernorm_scaling (`bool`, *optional*, defaults to `False`):
            Multiply the outputs of each block's two pre-norms by 1/sqrt(l), l the block's 1-based depth along its
            path (LayerNorm Scaling, arXiv 2502.05795). Off in the NeuroTrails runs (`NORM_TYPE=pre`).
        diversity_tokens (`int`, *optional*, defaults to `256`):
            Tokens per forward on which the mean pairwise KL between trails is measured for logging (0 disables the
            KL; accuracy, loss and disagreement are always measured on every labelled token).
        return_logits_in_training (`bool`, *optional*, defaults to `False`):
            Whether a training forward with labels also returns the averaged logits. Off by default: the training
            loss needs only one trail's logits at a time, and the average costs another B x T x V tensor.

    Example:

        >>> from transformers import AutoModelForCausalLM
        >>> from hf_plugins import NeuroTrailsConfig
        >>> config = NeuroTrailsConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        ...                            num_attention_heads=4, num_trails=3, blocks_in_head=2)
        >>> model = AutoModelForCausalLM.from_config(config)
    """

    model_type = "neurotrails"
    keys_to_ignore_at_inference = [  # noqa: RUF012  (read by Trainer.prediction_step)
        "past_key_values",
        "cache",
        "trail_losses",
        "trail_accuracies",
        "trail_disagreement",
        "trail_kl",
    ]

    # LLaMA-130M of the official code (configs/llama_130m.json), instead of LlamaConfig's 7B defaults.
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 1024

    num_trails: int = 3
    blocks_in_head: int = 8
    density: float = 0.9
    sparse_embeddings: bool = True
    sparse_lm_heads: bool = True
    update_frequency: int = 50
    prune_rate: float = 0.5
    prune_rate_min: float = 0.005
    prune_criterion: str = "soft_magnitude"
    prune_temperature: float = 3.0
    growth: str = "gradient"
    head_loss_reduction: str = "sum"
    embedding_init_std: float = 0.02
    layernorm_scaling: bool = False
    diversity_tokens: int = 256
    return_logits_in_training: bool = False

    def __post_init__(self, **kwargs):
        if "num_heads" in kwargs:
            raise ValueError(
                "NeuroTrailsConfig calls the paper's heads `num_trails`; `num_heads` would be read as attention "
                "heads by transformers. Pass `num_trails=...` (and `num_attention_heads=...` for attention)."
            )
        if isinstance(self.density, int):  # JSON / CLI may give 1 for 1.0
            self.density = float(self.density)
        super().__post_init__(**kwargs)
        self.check_trail_fields()

    def check_trail_fields(self) -> None:
        """Raise `ValueError` naming the first NeuroTrails field with an invalid value. Also called by the models'
        `__init__`, so a config changed after construction is checked again (assignments are type-checked only)."""
        if self.num_trails < 1:
            raise ValueError(f"`num_trails` must be >= 1, got {self.num_trails}.")
        if not 1 <= self.blocks_in_head <= self.num_hidden_layers:
            raise ValueError(
                f"`blocks_in_head` must be in [1, num_hidden_layers={self.num_hidden_layers}], got {self.blocks_in_head}."
            )
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"`density` must be in (0, 1], got {self.density}.")
        if self.update_frequency < 1:
            raise ValueError(f"`update_frequency` must be >= 1, got {self.update_frequency}.")
        if not 0.0 <= self.prune_rate < 1.0:
            raise ValueError(f"`prune_rate` must be in [0, 1), got {self.prune_rate}.")
        if not 0.0 <= self.prune_rate_min <= self.prune_rate:
            raise ValueError(
                f"`prune_rate_min` must be in [0, prune_rate={self.prune_rate}], got {self.prune_rate_min}."
            )
        if self.prune_criterion not in PRUNE_CRITERIA:
            raise ValueError(f"`prune_criterion` must be one of {PRUNE_CRITERIA}, got {self.prune_criterion!r}.")
        if not 0 < self.prune_temperature < math.inf:
            raise ValueError(f"`prune_temperature` must be a finite number > 0, got {self.prune_temperature}.")
        if self.growth not in GROWTH_MODES:
            raise ValueError(f"`growth` must be one of {GROWTH_MODES}, got {self.growth!r}.")
        if self.head_loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"`head_loss_reduction` must be one of {LOSS_REDUCTIONS}, got {self.head_loss_reduction!r}."
            )
        if not 0 < self.embedding_init_std < math.inf:
            raise ValueError(f"`embedding_init_std` must be a finite number > 0, got {self.embedding_init_std}.")
        if self.diversity_tokens < 0:
            raise ValueError(f"`diversity_tokens` must be >= 0, got {self.diversity_tokens}.")
        if self.tie_word_embeddings:
            raise ValueError(
                "`tie_word_embeddings` must be False: every trail has its own output layer, none of which can share "
                "the single embedding matrix."
            )

    @property
    def num_shared_layers(self) -> int:
        """Blocks of the shared backbone, s = num_hidden_layers - blocks_in_head."""
        return self.num_hidden_layers - self.blocks_in_head

    @property
    def num_decoder_layers(self) -> int:
        """Decoder layers held by the model (and KV-cache layers needed): s + num_trails * blocks_in_head."""
        return self.num_shared_layers + self.num_trails * self.blocks_in_head


__all__ = ["NeuroTrailsConfig"]


# `save_pretrained` then writes `auto_map` and copies this file, so the checkpoint loads with
# `AutoConfig.from_pretrained(dir, trust_remote_code=True)` where hf_plugins is not installed.
NeuroTrailsConfig.register_for_auto_class()
