"""Configuration of Chain-of-Experts (CoE) models (arXiv 2506.18945)."""

import math

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig


__all__ = ["RESIDUAL_MODES", "CoEConfig"]

RESIDUAL_MODES = ("pre_ln", "official")


@strict
class CoEConfig(LlamaConfig):
    r"""
    Configuration for a Chain-of-Experts decoder (arXiv 2506.18945; formal equations in the official repository's
    `report.MD`): a Llama-style decoder whose MLP is replaced by a CoE layer, in which a token passes through
    `num_iterations` rounds over one shared pool of experts, each round with its own router reading the output of
    the previous round:

        x(t) = x(t-1) + sum_{i in TopK(s_t, K)} g_{t,i} * FFN_i(x(t-1)),   s_t = softmax(U_t x(t-1)),   t = 1..C

    All Llama fields (`hidden_size`, `num_attention_heads`, `num_key_value_heads`, `rope_parameters`, ...) keep
    their meaning. Defaults follow the official `config.json` (a 4-layer DeepSeek-V2-Lite-shaped model, hidden
    1024, 8 heads, 63 routed + 1 shared expert of width 704, vocabulary 102400) except where stated. The paper's
    attention is DeepSeek-V2 MLA; ours is Llama GQA with RoPE, because attention is not what the paper studies.

    Args:
        num_experts (`int`, *optional*, defaults to `63`):
            Routed experts per CoE layer, shared by all iterations ("N = 64" in the paper is 63 routed + 1 shared).
        num_experts_per_tok (`int`, *optional*, defaults to `4`):
            K, the experts each router picks per iteration. CoE(C=2, K=4) has the expert compute of MoE(K=8)
            (the paper's "same compute" comparison).
        num_iterations (`int`, *optional*, defaults to `2`):
            C, the iterations per layer (official `inner_iter`). `1` gives a plain top-K MoE block.
        router_per_iteration (`bool`, *optional*, defaults to `True`):
            One router per iteration (official `use_igate=true`); `False` shares one router across iterations
            (the paper's "shared gating" ablation, which is worse than MoE).
        inner_residual (`bool`, *optional*, defaults to `True`):
            `I_r = 1` in the paper's equation: x(t) = x(t-1) + experts (official `inner_residual=true`). With `False`,
            x(t) is the experts' output alone, so the chain's output is the last iteration's experts.
        residual_mode (`str`, *optional*, defaults to `"pre_ln"`):
            Where the chain sits in the decoder layer. `"pre_ln"` (ours): a standard pre-LN block, the layer returns
            h + (x(C) - x(0)), i.e. h + MoE(LN(h)) at C = 1. `"official"`: the layout the paper's runs trained
            (official `CoeDecoderLayer` with `outer_residual=false`): the layer returns x(C) itself, i.e.
            LN(h) + sum_t MoE_t with the inner residual, so the un-normalised residual stream h is replaced by its
            normalised copy at every layer (the MoE baseline, C = 1, included). Use it to reproduce the published
            curves; see docs/coe.md.
        outer_residual (`bool`, *optional*, defaults to `False`):
            With `residual_mode="official"`, add h back: the layer returns h + x(C) (official `outer_residual`; the
            published runs use `false`). The `"pre_ln"` layout always adds h, so it refuses this flag.
        n_shared_experts (`int`, *optional*, defaults to `1`):
            Always-active SwiGLU experts of width `n_shared_experts * moe_intermediate_size` (official 1).
        shared_experts_every_iteration (`bool`, *optional*, defaults to `True`):
            Run the shared experts inside every iteration (official behaviour, not in the paper's equation; it
            makes CoE(C=2, K=4) apply 10 expert FFNs per token against 9 for MoE(K=8)). With `False` they run once,
            on the layer input, in parallel to the chain.
        moe_intermediate_size (`int`, *optional*, defaults to `704`):
            Width of each routed expert (official `moe_intermediate_size`).
        first_k_dense_replace (`int`, *optional*, defaults to `0`):
            The first k layers use a dense SwiGLU MLP of width `intermediate_size` instead of a CoE layer
            (official 0: every layer is a CoE layer).
        routed_scaling_factor (`float`, *optional*, defaults to `1.0`):
            Multiplier of the routed experts' gates (official 1.0). As in the official (DeepSeek-V2) gate it applies
            only when the gates are not renormalised (`norm_topk_prob=False` or K = 1); a factor other than 1 with
            renormalised gates is refused rather than silently ignored.
        norm_topk_prob (`bool`, *optional*, defaults to `False`):
            Renormalise the K selected probabilities to sum to one (official `False`: raw softmax probabilities). As
            in the official gate, K = 1 is never renormalised (its gate stays the raw probability).
        learnable_chain_scale (`bool`, *optional*, defaults to `False`):
            Multiply the expert output of every iteration but the last by a learnable scalar, in the chain and in
            the layer's output: x(t) = x(t-1) + a_t * d_t for t < C. The official up-cycling branch
            (`convert_moe_to_coe`) adds this scalar (`coe_weight`, initialised to 0) so that a converted MoE starts
            as the MoE; `hf_plugins.models.coe.moe_to_coe` builds such a model. Initialised to 0 here too.
        router_aux_loss_coef (`float`, *optional*, defaults to `0.001`):
            Coefficient of the sequence-level load-balancing loss, summed over layers and iterations and added to
            the training loss (official `aux_loss_alpha=0.001` with `seq_aux=true`). `0` disables it.
        output_router_logits (`bool`, *optional*, defaults to `False`):
            Return every router's logits (one tensor per layer and iteration) and the aux losses even outside
            training.
        layernorm_scaling (`bool`, *optional*, defaults to `False`):
            LayerNorm Scaling (arXiv 2502.05795): multiply the outputs of block l's pre-attention and pre-MLP norms
            by 1/sqrt(l), l the 1-based layer index. Off in the CoE paper.

    Example:

        >>> from transformers import AutoModelForCausalLM
        >>> from hf_plugins import CoEConfig
        >>> config = CoEConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...                    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
        >>> model = AutoModelForCausalLM.from_config(config)
    """

    model_type = "coe"
    # Tensor-parallel entries for attention and the dense layers only; the CoE experts have no parallel plan.
    base_model_tp_plan = {  # noqa: RUF012  (a class attribute, as in LlamaConfig)
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
    }

    # Official values (config.json of the CoE repository), scaled-down Llama fields keep Llama's names.
    vocab_size: int = 102400  # DeepSeek-V2 tokenizer
    hidden_size: int = 1024
    intermediate_size: int = 2816  # dense layers only (official config has none); ~ 4 x 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6

    num_experts: int = 63
    num_experts_per_tok: int = 4
    num_iterations: int = 2
    router_per_iteration: bool = True
    inner_residual: bool = True
    residual_mode: str = "pre_ln"
    outer_residual: bool = False
    n_shared_experts: int = 1
    shared_experts_every_iteration: bool = True
    moe_intermediate_size: int = 704
    first_k_dense_replace: int = 0
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    learnable_chain_scale: bool = False
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    layernorm_scaling: bool = False

    def __post_init__(self, **kwargs):
        # Checked here rather than in `validate_architecture` so the error is a plain ValueError naming the field
        # (strict's class validators wrap it in StrictDataclassClassValidationError). Types are already checked.
        self.check_coe_fields()
        super().__post_init__(**kwargs)

    def check_coe_fields(self) -> None:
        """Raise `ValueError` naming the first CoE field with an invalid value. Also called by the models'
        `__init__`, so a config changed after construction is checked again (assignments are type-checked only)."""
        if self.num_experts < 1:
            raise ValueError(f"`num_experts` must be >= 1, got {self.num_experts}.")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"`num_experts_per_tok` must be in [1, num_experts={self.num_experts}], got {self.num_experts_per_tok}."
            )
        if self.num_iterations < 1:
            raise ValueError(f"`num_iterations` must be >= 1 (1 is a plain MoE), got {self.num_iterations}.")
        if self.residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"`residual_mode` must be one of {RESIDUAL_MODES}, got {self.residual_mode!r}.")
        if self.outer_residual and self.residual_mode != "official":
            raise ValueError(
                f"`outer_residual` must be False with residual_mode={self.residual_mode!r}, got True: that layout "
                "always adds the residual stream h; the flag belongs to residual_mode='official'."
            )
        if self.n_shared_experts < 0:
            raise ValueError(f"`n_shared_experts` must be >= 0, got {self.n_shared_experts}.")
        if self.moe_intermediate_size < 1:
            raise ValueError(f"`moe_intermediate_size` must be >= 1, got {self.moe_intermediate_size}.")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(
                f"`first_k_dense_replace` must be in [0, num_hidden_layers={self.num_hidden_layers}], "
                f"got {self.first_k_dense_replace}."
            )
        if self.first_k_dense_replace and self.residual_mode == "official":
            raise ValueError(
                f"`first_k_dense_replace` must be 0 with residual_mode='official', got {self.first_k_dense_replace}: "
                "the official layer calls its MLP once per iteration, which only its MoE layers support."
            )
        if not 0 < self.routed_scaling_factor < math.inf:
            raise ValueError(f"`routed_scaling_factor` must be a finite number > 0, got {self.routed_scaling_factor}.")
        if self.norm_topk_prob and self.num_experts_per_tok > 1 and self.routed_scaling_factor != 1.0:
            raise ValueError(
                f"`routed_scaling_factor`={self.routed_scaling_factor} has no effect with `norm_topk_prob=True`: the "
                "official gate renormalises the top-k probabilities instead of scaling them. Set "
                "routed_scaling_factor=1.0, or norm_topk_prob=False to scale the raw probabilities."
            )
        if not 0 <= self.router_aux_loss_coef < math.inf:
            raise ValueError(f"`router_aux_loss_coef` must be a finite number >= 0, got {self.router_aux_loss_coef}.")

    @property
    def num_moe_layers(self) -> int:
        """Layers that hold a CoE block (all but the first `first_k_dense_replace`)."""
        return self.num_hidden_layers - self.first_k_dense_replace


# `save_pretrained` then writes `auto_map` and copies this file, so the checkpoint loads with
# `AutoConfig.from_pretrained(dir, trust_remote_code=True)` where hf_plugins is not installed.
CoEConfig.register_for_auto_class()
