"""NeuroTrails (arXiv 2505.17909): a Llama backbone shared by several sparse trails whose logits are averaged.

Built from transformers' own Llama pieces (attention, RoPE, MLP and decoder layer are subclassed or imported), so the
KV-cache keyword of the installed release (`past_key_values` up to 5.23, `cache` from 5.24) is inherited; the forwards
written here accept both names.

This file is saved with every NeuroTrails checkpoint, together with the files it imports relatively
(configuration_neurotrails.py, neurotrails_sparsity.py, neurotrails_callback.py, scaled_rms_norm.py), so it imports
only torch and transformers: a saved model, its masks and its dynamic-sparsity step load with `trust_remote_code=True`
where hf_plugins is not installed.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
from transformers.utils import can_return_tuple

from .configuration_neurotrails import NeuroTrailsConfig
from .neurotrails_callback import NeuroTrailsSparsityCallback
from .neurotrails_sparsity import (
    apply_masks,
    erk_densities,
    prune_rate_at,
    random_mask,
    topology_generator,
    update_layer_topology,
    zero_optimizer_state,
)
from .scaled_rms_norm import ScaledRMSNorm, layernorm_scale


__all__ = [
    "NeuroTrailsCausalLMOutput",
    "NeuroTrailsDecoderLayer",
    "NeuroTrailsForCausalLM",
    "NeuroTrailsModel",
    "NeuroTrailsModelOutput",
    "NeuroTrailsPreTrainedModel",
    "sparse_layer_shapes",
]

# transformers <= 5.23 names the KV cache `past_key_values`, 5.24 names it `cache`.
_LAYER_CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters else "past_key_values"
)
_MASK_CACHE_KWARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
_OUTPUT_CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"

_ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


def sparse_layer_shapes(config: NeuroTrailsConfig) -> dict[str, tuple[int, int]]:
    """Name (in `NeuroTrailsForCausalLM`) -> shape of every weight in the sparse set: all 2-D weights, minus the
    embedding / output layers when `sparse_embeddings` / `sparse_lm_heads` is off. ERK densities are solved over
    this set, so the base model and the causal LM agree on every layer's density."""
    d, v, i = config.hidden_size, config.vocab_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    block = {"self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d)}
    block.update({"self_attn.o_proj": (d, q), "mlp.gate_proj": (i, d), "mlp.up_proj": (i, d), "mlp.down_proj": (d, i)})
    prefixes = [f"model.layers.{j}." for j in range(config.num_shared_layers)]
    prefixes += [
        f"model.trails.{h}.layers.{j}." for h in range(config.num_trails) for j in range(config.blocks_in_head)
    ]
    shapes = {}
    if config.sparse_embeddings:
        shapes["model.embed_tokens"] = (v, d)
    for prefix in prefixes:
        shapes.update({prefix + name: shape for name, shape in block.items()})
    if config.sparse_lm_heads:
        shapes.update({f"lm_heads.{h}": (v, d) for h in range(config.num_trails)})
    return shapes


@dataclass
class NeuroTrailsModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` whose `last_hidden_state` stacks the trails' normalised outputs:
    shape (num_trails, batch, seq_len, hidden_size)."""


@dataclass
class NeuroTrailsCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus per-trail diagnostics (detached; None where not measured).

    `logits` is the mean of the trails' logits (None in a training forward with labels unless
    `return_logits_in_training`); `loss` is the sum (or mean) of the trails' cross-entropies.
    """

    trail_losses: torch.Tensor | None = None
    trail_accuracies: torch.Tensor | None = None
    trail_disagreement: torch.Tensor | None = None
    trail_kl: torch.Tensor | None = None


class NeuroTrailsDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer whose two pre-norms may be scaled by 1/sqrt(depth) (`layernorm_scaling`).

    `layer_idx` is unique over the model (it indexes the KV cache); `depth` is the 1-based position of the block
    along its path (backbone, then trail), the l of LayerNorm Scaling.
    """

    def __init__(self, config: NeuroTrailsConfig, layer_idx: int, depth: int):
        super().__init__(config, layer_idx)
        scale = layernorm_scale(depth - 1) if config.layernorm_scaling else 1.0
        self.depth = depth
        self.input_layernorm = ScaledRMSNorm(config.hidden_size, eps=config.rms_norm_eps, scale=scale)
        self.post_attention_layernorm = ScaledRMSNorm(config.hidden_size, eps=config.rms_norm_eps, scale=scale)


class NeuroTrailsTrail(nn.Module):
    """One trail's blocks and final norm (its output layer lives in `NeuroTrailsForCausalLM.lm_heads`)."""

    def __init__(self, config: NeuroTrailsConfig, trail_idx: int):
        super().__init__()
        s, b = config.num_shared_layers, config.blocks_in_head
        self.layers = nn.ModuleList(
            [NeuroTrailsDecoderLayer(config, layer_idx=s + trail_idx * b + j, depth=s + j + 1) for j in range(b)]
        )
        self.norm = ScaledRMSNorm(config.hidden_size, eps=config.rms_norm_eps)  # final norm: never scaled


class NeuroTrailsPreTrainedModel(PreTrainedModel):
    config_class = NeuroTrailsConfig
    config: NeuroTrailsConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["NeuroTrailsDecoderLayer"]  # noqa: RUF012  (transformers reads a plain class attribute)
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def __init__(self, config: NeuroTrailsConfig, *args, **kwargs):
        config.check_trail_fields()  # the config may have been changed since it was built
        super().__init__(config, *args, **kwargs)

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Masks DDP must not broadcast from rank 0 at every forward (`DistributedDataParallel` reads this attribute
        of the module it wraps): identical on every rank by construction (same seed, same all-reduced gradients), and
        one byte per sparse weight."""
        mine = [name for name, _ in self.named_buffers() if name.endswith("weight_mask")]
        return mine + list(self.__dict__.get("_ddp_ignore_extra", ()))

    @_ddp_params_and_buffers_to_ignore.setter
    def _ddp_params_and_buffers_to_ignore(self, names) -> None:  # `DDP._set_params_and_buffers_to_ignore_for_model`
        self.__dict__["_ddp_ignore_extra"] = list(names)

    # ---- masks: model state, saved with the weights ----

    def _register_masks(self, prefix: str) -> None:
        """Give every sparse weight of this module tree a persistent bool `weight_mask` buffer (filled in
        `_init_weights`: values set here would be lost under meta-device instantiation) and its active count."""
        if self.config.density >= 1.0:
            return
        shapes = sparse_layer_shapes(self.config)
        densities = erk_densities(shapes, self.config.density)
        for name, module in self.named_modules():
            full = prefix + name
            if full not in shapes or hasattr(module, "weight_mask"):
                continue
            if tuple(module.weight.shape) != shapes[full]:
                raise RuntimeError(f"{full}: weight shape {tuple(module.weight.shape)} != expected {shapes[full]}")
            numel = module.weight.numel()
            num_active = max(1, round(densities[full] * numel))
            if num_active >= numel:  # ERK made this layer dense
                continue
            module.register_buffer("weight_mask", torch.ones(shapes[full], dtype=torch.bool), persistent=True)
            module.nt_num_active = num_active

    def sparse_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every masked weight, in a fixed order."""
        return [(name, m) for name, m in self.named_modules() if getattr(m, "weight_mask", None) is not None]

    def layer_densities(self) -> dict[str, float]:
        """Measured density (mask mean) of every masked weight. Synchronises with the device."""
        return {name: m.weight_mask.float().mean().item() for name, m in self.sparse_modules()}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """w <- w * mask for every sparse weight (one foreach multiply)."""
        modules = [m for _, m in self.sparse_modules()]
        apply_masks([m.weight.detach() for m in modules], [m.weight_mask for m in modules])

    @torch.no_grad()
    def sparsity_step(self, optimizer=None, step: int = 0, total_steps: int = 0, seed: int = 0) -> dict | None:
        """The dynamic-sparsity step; call it after every `optimizer.step()` and before `zero_grad()`.

        Applies the masks; after every `update_frequency`-th optimizer step (`(step + 1) % update_frequency == 0`,
        `step` the 0-based index of the step just taken) it also prunes and regrows every sparse layer at the
        cosine-decayed rate (over `total_steps`) and zeroes the optimizer moments of the newly active weights.
        Randomness comes from a generator seeded by (`seed`, `step`), so a resumed run repeats the same choices.
        Returns `{"prune_rate": rate}` after a topology update, else None.

        Custom loop:

            >>> loss = model(**batch).loss
            >>> loss.backward()
            >>> optimizer.step()
            >>> model.sparsity_step(optimizer, step=step, total_steps=num_steps, seed=0)
            >>> optimizer.zero_grad()
        """
        cfg = self.config
        modules = [m for _, m in self.sparse_modules()]
        if not modules:
            return None
        apply_masks([m.weight.detach() for m in modules], [m.weight_mask for m in modules])
        if (step + 1) % cfg.update_frequency != 0:
            return None
        rate = prune_rate_at(step + 1, total_steps, cfg.prune_rate, cfg.prune_rate_min)
        generators: dict[torch.device, torch.Generator] = {}
        for module in modules:
            if not module.weight.requires_grad:  # frozen (e.g. under a PEFT adapter): keep its topology
                continue
            device = module.weight.device
            if device not in generators:
                generators[device] = topology_generator(seed, step, device)
            newly_active = update_layer_topology(
                module.weight,
                module.weight_mask,
                module.nt_num_active,
                rate,
                criterion=cfg.prune_criterion,
                temperature=cfg.prune_temperature,
                growth=cfg.growth,
                generator=generators[device],
            )
            zero_optimizer_state(optimizer, module.weight, newly_active)
        return {"prune_rate": rate}

    def training_callbacks(self) -> list:
        """Trainer callbacks this model needs: `[NeuroTrailsSparsityCallback()]` (masks after every optimizer step,
        topology updates, per-trail logging). Read by harnesses that build the Trainer for a given model."""
        return [NeuroTrailsSparsityCallback()]

    # ---- initialisation ----

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            # Own std (config.embedding_init_std): the official code's sqrt(2/5) is available but not the default.
            init.normal_(module.weight, mean=0.0, std=self.config.embedding_init_std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        else:
            super()._init_weights(module)
        mask = getattr(module, "weight_mask", None)
        if mask is None or mask.device.type == "meta":
            return
        # ERK density per layer, exactly nt_num_active random positions; skipped when the mask was loaded.
        if not getattr(mask, "_is_hf_initialized", False):
            init.copy_(mask, random_mask(mask.shape, module.nt_num_active, device=mask.device))
        if module.weight.device.type != "meta":
            with torch.no_grad():
                module.weight.mul_(mask)

    # ---- statistics for logging ----

    def _accumulate_trail_stats(self, stats: dict[str, torch.Tensor]) -> None:
        mode = "train" if self.training else "eval"
        store = self.__dict__.setdefault("_nt_trail_stats", {})
        sums, counts = store.setdefault(mode, ({}, {}))
        for key, value in stats.items():
            if value is None:
                continue
            sums[key] = sums[key] + value if key in sums else value.clone()
            counts[key] = counts.get(key, 0) + 1

    def pop_trail_statistics(self, mode: str = "train") -> dict[str, float]:
        """Mean per-trail loss / accuracy and between-trail disagreement / KL over the forwards with labels since
        the last call, in `mode` "train" or "eval"; resets them. Synchronises with the device."""
        store = self.__dict__.get("_nt_trail_stats", {})
        sums, counts = store.pop(mode, ({}, {}))
        out: dict[str, float] = {}
        for key, total in sums.items():
            mean = (total / counts[key]).float().cpu()
            if mean.ndim == 0:
                out[key] = mean.item()
            else:
                out.update({f"trail_{h}_{key}": v for h, v in enumerate(mean.tolist())})
        return out


class NeuroTrailsModel(NeuroTrailsPreTrainedModel):
    """Embeddings and shared blocks, then every trail's blocks and final norm. Returns the trails' normalised
    hidden states stacked as `last_hidden_state` (num_trails, batch, seq_len, hidden_size)."""

    def __init__(self, config: NeuroTrailsConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [NeuroTrailsDecoderLayer(config, layer_idx=i, depth=i + 1) for i in range(config.num_shared_layers)]
        )
        self.trails = nn.ModuleList([NeuroTrailsTrail(config, h) for h in range(config.num_trails)])
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self._register_masks(prefix="model.")
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _ensure_cache_layers(self, cache) -> None:
        # generate() builds DynamicCache(config=...) with num_hidden_layers layers (one path); the trails need
        # s + H*b. A lazily growing cache needs nothing; a pre-sized dynamic one gets empty layers appended.
        needed = self.config.num_decoder_layers
        layers = getattr(cache, "layers", None)
        if layers is None or len(layers) >= needed or getattr(cache, "layer_class_to_replicate", None) is not None:
            return
        if isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in layers):
            layers.extend(DynamicLayer() for _ in range(needed - len(layers)))
            return
        raise ValueError(
            f"The cache holds {len(layers)} layers but NeuroTrails needs {needed} (num_hidden_layers - "
            f"blocks_in_head + num_trails * blocks_in_head). Use a DynamicCache (generate's default)."
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> NeuroTrailsModelOutput:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if kwargs.pop("output_attentions", False):
            raise NotImplementedError("NeuroTrails does not return attention weights (output_attentions=True).")
        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if cache is not None:
            self._ensure_cache_layers(cache)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{_MASK_CACHE_KWARG: cache},
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        layer_kwargs = dict(
            attention_mask=causal_mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            use_cache=use_cache,
            **{_LAYER_CACHE_KWARG: cache},
            **kwargs,
        )
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, **layer_kwargs)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        trail_outputs = []
        for trail in self.trails:
            trail_hidden = hidden_states
            for layer in trail.layers:
                trail_hidden = layer(trail_hidden, **layer_kwargs)
                if all_hidden is not None:
                    all_hidden.append(trail_hidden)
            trail_outputs.append(trail.norm(trail_hidden))

        return NeuroTrailsModelOutput(
            last_hidden_state=torch.stack(trail_outputs),
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{_OUTPUT_CACHE_FIELD: cache},
        )


class NeuroTrailsForCausalLM(NeuroTrailsPreTrainedModel, GenerationMixin):
    """NeuroTrails language model: one output layer per trail; `logits` = mean of the trails' logits, `loss` =
    sum (or mean, `head_loss_reduction`) of the trails' cross-entropies."""

    def __init__(self, config: NeuroTrailsConfig):
        super().__init__(config)
        self.model = NeuroTrailsModel(config)
        self.vocab_size = config.vocab_size
        self.lm_heads = nn.ModuleList(
            [nn.Linear(config.hidden_size, config.vocab_size, bias=False) for _ in range(config.num_trails)]
        )
        self._register_masks(prefix="")
        self.post_init()

    def get_output_embeddings(self):
        return None  # H output layers, none of them "the" output embedding

    def resize_token_embeddings(self, *args, **kwargs):
        raise NotImplementedError(
            "NeuroTrails cannot resize its vocabulary (embedding, every trail's output layer and their masks would "
            "need resizing). Build the config with the final vocab_size instead."
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        return_logits: bool | None = None,
        **kwargs,
    ) -> NeuroTrailsCausalLMOutput:
        r"""
        return_logits (`bool`, *optional*):
            Whether to materialise the averaged logits. Default: always, except in a training forward with labels
            (unless `config.return_logits_in_training`), where only the loss is needed.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        if return_logits is None:
            return_logits = labels is None or not self.training or self.config.return_logits_in_training
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        diagnose = labels is not None and isinstance(logits_to_keep, int) and logits_to_keep == 0
        num_trails = self.config.num_trails

        logits_sum, losses, accuracies, predictions, log_probs = None, [], [], [], []
        picked = _diversity_positions(labels, self.config.diversity_tokens) if diagnose else None
        for h in range(num_trails):
            # One trail's logits at a time: its loss is taken and the tensor dropped before the next trail's.
            logits_h = self.lm_heads[h](outputs.last_hidden_state[h][:, keep, :])
            if labels is not None:
                losses.append(self.loss_function(logits=logits_h, labels=labels, vocab_size=self.vocab_size, **kwargs))
            if diagnose:
                with torch.no_grad():
                    acc, pred, logp = _trail_diagnostics(logits_h, labels, picked)
                accuracies.append(acc)
                predictions.append(pred)
                if logp is not None:
                    log_probs.append(logp)
            if return_logits:
                logits_sum = logits_h.float() if logits_sum is None else logits_sum + logits_h.float()
            del logits_h

        loss = trail_losses = trail_acc = disagreement = kl = None
        if labels is not None:
            stacked = torch.stack(losses)
            loss = stacked.sum() if self.config.head_loss_reduction == "sum" else stacked.mean()
            trail_losses = stacked.detach()
        if diagnose:
            trail_acc = torch.stack(accuracies)
            disagreement, kl = _between_trails(predictions, log_probs, labels, picked)
            self._accumulate_trail_stats(
                {"loss": trail_losses, "accuracy": trail_acc, "trail_disagreement": disagreement, "trail_kl": kl}
            )
        logits = None
        if logits_sum is not None:
            logits = (logits_sum / num_trails).to(outputs.last_hidden_state.dtype)

        return NeuroTrailsCausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            trail_losses=trail_losses,
            trail_accuracies=trail_acc,
            trail_disagreement=disagreement,
            trail_kl=kl,
            **{_OUTPUT_CACHE_FIELD: getattr(outputs, _OUTPUT_CACHE_FIELD)},
        )


# ---- diagnostics: per-trail accuracy and between-trail diversity ----


def _diversity_positions(labels: torch.Tensor, num_tokens: int):
    """Flat indices of (up to) the first `num_tokens` labelled next-token positions, and their validity."""
    if num_tokens <= 0:
        return None
    valid = (labels[:, 1:] != -100).reshape(-1)
    order = torch.argsort((~valid).to(torch.uint8), stable=True)[:num_tokens]
    return order, valid[order]


def _trail_diagnostics(logits: torch.Tensor, labels: torch.Tensor, picked):
    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    valid = shift_labels != -100
    pred = shift_logits.argmax(dim=-1)
    acc = ((pred == shift_labels) & valid).sum() / valid.sum().clamp(min=1)
    logp = None
    if picked is not None:
        order, _ = picked
        logp = torch.log_softmax(shift_logits.reshape(-1, shift_logits.shape[-1])[order].float(), dim=-1)
    return acc.float(), pred, logp


def _between_trails(predictions, log_probs, labels, picked):
    """Argmax disagreement rate and mean KL(p_i || p_j) over ordered pairs of distinct trails."""
    if len(predictions) < 2:
        return None, None
    valid = labels[:, 1:] != -100
    n_valid = valid.sum().clamp(min=1)
    pairs = list(itertools.combinations(range(len(predictions)), 2))
    disagreement = sum(((predictions[i] != predictions[j]) & valid).sum() / n_valid for i, j in pairs) / len(pairs)
    kl = None
    if log_probs:
        weight = picked[1].float()
        denom = weight.sum().clamp(min=1)
        total = 0.0
        for i, j in itertools.permutations(range(len(log_probs)), 2):
            per_token = (log_probs[i].exp() * (log_probs[i] - log_probs[j])).sum(-1)
            total = total + (per_token * weight).sum() / denom
        kl = total / (len(log_probs) * (len(log_probs) - 1))
    return disagreement.float(), kl


# `save_pretrained` writes `auto_map` and copies this file with the files it imports relatively:
# `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` then works without hf_plugins.
NeuroTrailsModel.register_for_auto_class("AutoModel")
NeuroTrailsForCausalLM.register_for_auto_class("AutoModelForCausalLM")
