"""Chain-of-Experts (CoE) decoder, arXiv 2506.18945, built from transformers' Llama pieces.

A CoE layer runs C iterations over one pool of experts; iteration t has its own router, reads the previous
iteration's output and adds its experts' weighted output to it (the paper's equation, `report.MD` of the official
repository):

    x(0) = LN(h);   x(t) = x(t-1) + sum_{i in TopK(s_t, K)} g_{t,i} FFN_i(x(t-1)),   s_t = softmax(U_t x(t-1))

With `residual_mode="pre_ln"` (default) the decoder layer returns h + (x(C) - x(0)), i.e. h + sum_t (routed + shared
experts of iteration t); with C = 1 this is the standard pre-LN MoE block h + MoE(LN(h)). With
`residual_mode="official"` it returns x(C) (plus h with `outer_residual`), the layout of the official code
(github.com/ZihanWang314/CoE, `CoeDecoderLayer` with its published flags), which replaces the un-normalised residual
stream h by LN(h) at every layer. Attention is Llama's GQA with RoPE (the paper's base is DeepSeek-V2-Lite MLA;
attention is not the paper's point). Experts are fused 3-D tensors run through transformers' experts interface
(`grouped_mm` by default) instead of the official Python loop over experts.

This file is saved with every CoE checkpoint (with configuration_coe.py and scaled_rms_norm.py, which it imports
relatively), so it imports only torch and transformers.
"""

import inspect
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.integrations.moe import use_experts_implementation
from transformers.modeling_outputs import MoeCausalLMOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRotaryEmbedding,
)
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder

from .configuration_coe import CoEConfig
from .scaled_rms_norm import ScaledRMSNorm, layernorm_scale


__all__ = [
    "CoECausalLMOutputWithPast",
    "CoEExperts",
    "CoEForCausalLM",
    "CoEModel",
    "CoEPreTrainedModel",
    "CoERouter",
    "CoERouterLogits",
    "CoESparseMoeBlock",
    "coe_router_aux_loss",
]

# transformers 5.17-5.23 call the KV cache `past_key_values`, 5.24 calls it `cache` (argument and output field).
# The in-tree Llama model and decoder layer we inherit from use their own version's name; we look it up once.
_CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
_CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(MoeCausalLMOutputWithPast)} else "past_key_values"


class _Fp32Linear(torch.autograd.Function):
    """`x.float() @ w.float().T`, saving x in its own dtype: plain autograd would keep the fp32 copy of every
    router input for the backward pass (N x H x 4 bytes per layer and iteration, ~1 GiB at the benchmark size)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x.float(), weight.float())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        with torch.autocast(device_type=grad.device.type, enabled=False):
            grad = grad.float()
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight.float()).to(x.dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1]).float()).to(weight.dtype)
        return grad_x, grad_w


class CoERouter(nn.Linear):
    """Router of one iteration: fp32 logits `x @ W.T` with W [num_experts, hidden], no bias (official `MoEGate`).

    An `nn.Linear` so PEFT can target it by name (`routers.0`, ...). The logits are computed in fp32 whatever the
    weight and activation dtypes, with autocast off (autocast would run the matmul in bf16).
    """

    def __init__(self, hidden_size: int, num_experts: int):
        # Created in fp32 even under a bf16 default dtype; `_keep_in_fp32_modules_strict` keeps it so on loading.
        super().__init__(hidden_size, num_experts, bias=False, dtype=torch.float32)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return _Fp32Linear.apply(hidden_states, self.weight)


class CoERouterLogits(nn.Identity):
    """Passes the routing logits through unchanged; transformers' output capture records them here.

    Recording at the router itself would miss adapters: PEFT replaces the router by a wrapper (LoRA calls the
    original router and adds its own term, LIFT does not call it at all), while this module sees the logits that
    actually route, whatever wraps the router.
    """


@use_experts_implementation
class CoEExperts(nn.Module):
    """The routed experts of one layer as 3-D tensors: `gate_up_proj` [E, 2I, H], `down_proj` [E, H, I] (SwiGLU).

    Decorated with transformers' `use_experts_implementation`, so `config._experts_implementation` picks the
    backend at call time: `grouped_mm` (default), `batched_mm`, or `eager` (the loop below). Called once per
    iteration with that iteration's routing.
    """

    def __init__(self, config: CoEConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.hidden_dim = config.hidden_size
        self.intermediate_dim = config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, 2 * self.intermediate_dim, self.hidden_dim))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim, self.intermediate_dim))
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """`hidden_states` [T, H], `top_k_index` / `top_k_weights` [T, K] -> sum_k w_k FFN_{i_k}(x) [T, H]."""
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            hit = torch.unique(top_k_index).tolist()
        for expert in hit:
            token_idx, slot = torch.where(top_k_index == expert)
            x = hidden_states[token_idx]
            gate, up = F.linear(x, self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(self.act_fn(gate) * up, self.down_proj[expert])
            out.index_add_(0, token_idx, (y * top_k_weights[token_idx, slot, None]).to(out.dtype))
        return out


class _AmpExpertsView:
    """`CoEExperts` seen with its expert weights cast to the autocast dtype (a differentiable cast: gradients reach
    the fp32 parameters). Every other attribute is the module's own."""

    def __init__(self, module: CoEExperts, dtype: torch.dtype):
        self.__dict__["_module"] = module
        self.__dict__["gate_up_proj"] = module.gate_up_proj.to(dtype)
        self.__dict__["down_proj"] = module.down_proj.to(dtype)

    def __getattr__(self, name):
        return getattr(self.__dict__["_module"], name)


_experts_dispatch = CoEExperts.forward  # transformers' dispatch to `config._experts_implementation`


def _experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """Mixed precision for the expert kernels. `grouped_mm` / `batched_mm` are not autocast ops, and transformers'
    wrappers cast the activations to the WEIGHT dtype: with fp32 master weights under bf16 autocast (the stock
    `Trainer(bf16=True)` set-up) every expert product would run in fp32, several times slower than the rest of the
    model (a 1-GPU CoE training run measured 4x slower than its 2-GPU FSDP2 run, whose parameters are bf16;
    benchmarks/coe_autocast_bench.py measures the fix). Under autocast the experts therefore see their weights in the autocast dtype, as
    `F.linear` would; outside autocast nothing changes."""
    dev = hidden_states.device.type
    if torch.is_autocast_enabled(dev) and self.gate_up_proj.dtype == torch.float32:
        dtype = torch.get_autocast_dtype(dev)
        if dtype in (torch.bfloat16, torch.float16):
            return _experts_dispatch(_AmpExpertsView(self, dtype), hidden_states.to(dtype), top_k_index, top_k_weights)
    return _experts_dispatch(self, hidden_states, top_k_index, top_k_weights)


CoEExperts.forward = _experts_forward


class CoESharedExpert(LlamaMLP):
    """Always-active SwiGLU expert(s), width `n_shared_experts * moe_intermediate_size` (official `shared_experts`)."""

    def __init__(self, config: CoEConfig):
        nn.Module.__init__(self)
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.n_shared_experts * config.moe_intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]


class CoESparseMoeBlock(nn.Module):
    """The CoE layer: C iterations of (route, run experts, add) over one expert pool.

    Input is the normalised hidden state u0 = x(0) = LN(h) [B, T, H], and d_t = sum_k g_{t,k} FFN_{i_{t,k}}(x(t-1))
    (+ shared experts of x(t-1)). The output is what the decoder layer needs:

    - `residual_mode="pre_ln"`: x(C) - x(0) = sum_t d_t with the inner residual, d_C without it (the layer adds h);
    - `residual_mode="official"`: x(C) itself (the layer adds nothing, or h with `outer_residual`).

    With `learnable_chain_scale` every iteration but the last contributes a_t * d_t instead of d_t.
    """

    def __init__(self, config: CoEConfig):
        super().__init__()
        self.num_iterations = config.num_iterations
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.inner_residual = config.inner_residual
        self.returns_chain_state = config.residual_mode == "official"
        self.shared_every_iteration = config.shared_experts_every_iteration
        self.experts = CoEExperts(config)
        num_routers = config.num_iterations if config.router_per_iteration else 1
        self.routers = nn.ModuleList([CoERouter(config.hidden_size, config.num_experts) for _ in range(num_routers)])
        self.shared_experts = CoESharedExpert(config) if config.n_shared_experts > 0 else None
        self.router_logits = CoERouterLogits()
        # a_t of iterations 1..C-1 (filled in `_init_weights`: values set here are lost under meta-device init).
        self.chain_scale = (
            nn.Parameter(torch.empty(config.num_iterations - 1))
            if config.learnable_chain_scale and config.num_iterations > 1
            else None
        )

    def route(self, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K expert indices and gate weights of iteration `t` (0-based) for x [N, H].

        As the official (DeepSeek-V2) `MoEGate`: the K probabilities are renormalised when `norm_topk_prob` and K > 1,
        otherwise multiplied by `routed_scaling_factor` (the config refuses a factor other than 1 with renormalised
        gates, where it would have no effect).
        """
        router = self.routers[t if len(self.routers) > 1 else 0]
        probs = self.router_logits(router(x).float()).softmax(dim=-1)  # [N, E]; .float() for wrapped routers
        # sorted=True (official: sorted=False) selects the same set; it fixes the summation order across batches.
        weights, index = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob and self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        elif self.routed_scaling_factor != 1.0:
            weights = weights * self.routed_scaling_factor
        return index, weights.to(x.dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x0 = hidden_states.reshape(-1, shape[-1])
        x, total = x0, None
        for t in range(self.num_iterations):
            index, weights = self.route(t, x)
            d = self.experts(x, index, weights)
            if self.shared_experts is not None and self.shared_every_iteration:
                d = d + self.shared_experts(x)
            if self.chain_scale is not None and t < self.num_iterations - 1:
                d = d * self.chain_scale[t].to(d.dtype)
            # Accumulate the deltas instead of returning x(C) - x(0): same value, no cancellation in bf16.
            total = d if total is None or not self.inner_residual else total + d
            x = x + d if self.inner_residual else d
        out = x if self.returns_chain_state else total
        if self.shared_experts is not None and not self.shared_every_iteration:
            out = out + self.shared_experts(x0)
        return out.reshape(shape)


class CoEDecoderLayer(LlamaDecoderLayer):
    """Llama decoder layer with a CoE block (or a dense MLP for the first `first_k_dense_replace` layers) in place of
    the MLP, and the residual layout of `residual_mode`:

        h   = x + Attn(LN_in(x))
        out = h + block(LN_post(h))                       "pre_ln" (and every dense layer)
        out = block(LN_post(h))  [+ h if outer_residual]  "official" (block returns the chain's state x(C))

    With `layernorm_scaling` both block-input norms are scaled by 1/sqrt(layer_idx + 1). The forward passes every
    keyword it does not name (the KV cache under its version-specific name, `cache_position`, ...) to the attention.
    """

    def __init__(self, config: CoEConfig, layer_idx: int):
        nn.Module.__init__(self)  # skip LlamaDecoderLayer.__init__: it would allocate a dense MLP we then discard
        self.hidden_size = config.hidden_size
        self.self_attn = LlamaAttention(config=config, layer_idx=layer_idx)
        self.mlp = LlamaMLP(config) if layer_idx < config.first_k_dense_replace else CoESparseMoeBlock(config)
        scale = layernorm_scale(layer_idx) if config.layernorm_scaling else 1.0
        self.input_layernorm = ScaledRMSNorm(config.hidden_size, eps=config.rms_norm_eps, scale=scale)
        self.post_attention_layernorm = ScaledRMSNorm(config.hidden_size, eps=config.rms_norm_eps, scale=scale)
        official = config.residual_mode == "official" and isinstance(self.mlp, CoESparseMoeBlock)
        self.adds_residual = not official or config.outer_residual

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        out = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + out if self.adds_residual else out


class CoEPreTrainedModel(LlamaPreTrainedModel):
    config: CoEConfig
    config_class = CoEConfig
    base_model_prefix = "model"
    _no_split_modules = ["CoEDecoderLayer"]  # noqa: RUF012  (transformers reads plain class attributes)
    _keep_in_fp32_modules_strict = ["routers"]  # noqa: RUF012
    # Data-dependent routing (sort, histc, variable group sizes): not a full-graph compile target.
    _can_compile_fullgraph = False
    _can_record_outputs = {  # noqa: RUF012
        "router_logits": OutputRecorder(CoERouterLogits, index=0),
        "hidden_states": CoEDecoderLayer,
        "attentions": LlamaAttention,
    }

    def __init__(self, config: CoEConfig, *args, **kwargs):
        config.check_coe_fields()  # the config may have been changed since it was built
        # Not super(): in CoEModel's MRO the next class is LlamaModel, whose __init__ would build Llama layers.
        PreTrainedModel.__init__(self, config, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)  # Normal(0, initializer_range) for linears (routers too) and embeddings
        if isinstance(module, CoEExperts):
            std = self.config.initializer_range
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, CoESparseMoeBlock) and module.chain_scale is not None:
            init.zeros_(module.chain_scale)  # official up-cycling: `coe_weight` starts at 0


class CoEModel(CoEPreTrainedModel, LlamaModel):
    """The CoE decoder stack. `forward` is `LlamaModel.forward` (cache keyword, masks, RoPE, output capture)."""

    def __init__(self, config: CoEConfig):
        CoEPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([CoEDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = ScaledRMSNorm(config.hidden_size, eps=config.rms_norm_eps)  # final norm: never scaled
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


def coe_router_aux_loss(
    router_logits: torch.Tensor, top_k: int, batch_size: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sequence-level load-balancing loss of one router call (DeepSeek-V2 form, official `seq_aux=true`).

    For each sequence b over its non-padding tokens: f_i = count_i * E / (T_b * K) (count_i = how often expert i
    is among the top-K), P_i = mean_t softmax(logits)_{t,i}; loss = mean_b sum_i f_i * P_i. Equals 1 for
    perfectly uniform routing. `router_logits` [B*T, E]; `attention_mask` [B, T] (1 = token) or None.
    Padding is excluded (the official code counts it).
    """
    num_experts = router_logits.shape[-1]
    probs = router_logits.float().softmax(dim=-1).view(batch_size, -1, num_experts)  # [B, T, E]
    seq_len = probs.shape[1]
    if attention_mask is None or attention_mask.dim() != 2:
        mask = probs.new_ones(batch_size, seq_len)
    else:
        mask = attention_mask[:, -seq_len:].to(device=probs.device, dtype=probs.dtype)
    index = torch.topk(probs, top_k, dim=-1).indices  # [B, T, K], the selection the forward pass made
    counts = probs.new_zeros(batch_size, num_experts).scatter_add_(
        1, index.reshape(batch_size, -1), mask.repeat_interleave(top_k, dim=1)
    )
    tokens = mask.sum(dim=1)  # T_b
    valid = tokens > 0
    tokens = tokens.clamp(min=1)
    f = counts * num_experts / (tokens[:, None] * top_k)
    p = (probs * mask[..., None]).sum(dim=1) / tokens[:, None]
    per_seq = (f * p).sum(dim=-1)
    return (per_seq * valid).sum() / valid.sum().clamp(min=1)


@dataclass
class CoECausalLMOutputWithPast(MoeCausalLMOutputWithPast):
    """`MoeCausalLMOutputWithPast` plus `aux_losses` [num_moe_layers, num_iterations]: the unweighted
    load-balancing loss of every router call; `aux_loss` is their sum (the loss adds `router_aux_loss_coef` times
    it in training)."""

    aux_losses: torch.Tensor | None = None


class CoEForCausalLM(CoEPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012

    def __init__(self, config: CoEConfig):
        super().__init__(config)
        self.model = CoEModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache=None,
        **kwargs,
    ) -> CoECausalLMOutputWithPast:
        """Causal-LM forward. The KV cache may be passed as `cache` (transformers >= 5.24) or `past_key_values`
        (<= 5.23); generation passes whichever its version uses.

        The load-balancing loss is computed from the recorded router logits when `output_router_logits` (argument
        or config) is set, or when training with labels and `router_aux_loss_coef > 0`; it is added to `loss`
        (times the coefficient) only in training mode, so evaluation losses stay pure cross-entropy as in the
        official logs (Mixtral adds it whenever `output_router_logits`).
        """
        cache = cache if cache is not None else past_key_values
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        add_aux = self.training and labels is not None and self.config.router_aux_loss_coef > 0
        record = bool(output_router_logits or add_aux) and self.config.num_moe_layers > 0
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=record,
            **{_CACHE_ARG: cache},
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        aux_loss = aux_losses = router_logits = None
        if record:
            router_logits = outputs["router_logits"]
            batch_size = hidden_states.shape[0]
            aux_losses = torch.stack(
                [
                    coe_router_aux_loss(r, self.config.num_experts_per_tok, batch_size, attention_mask)
                    for r in router_logits
                ]
            ).view(self.config.num_moe_layers, self.config.num_iterations)
            aux_loss = aux_losses.sum()
            if add_aux:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)

        return CoECausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            aux_losses=aux_losses,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
            router_logits=router_logits if output_router_logits else None,
            **{_CACHE_FIELD: outputs.get(_CACHE_FIELD)},
        )


# `save_pretrained` writes `auto_map` and copies this file with the files it imports relatively (configuration_coe.py,
# scaled_rms_norm.py): `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` then works without
# hf_plugins.
CoEModel.register_for_auto_class("AutoModel")
CoEForCausalLM.register_for_auto_class("AutoModelForCausalLM")
