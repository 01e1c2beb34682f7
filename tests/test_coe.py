"""Chain-of-Experts: the layer equation, the experts backends, the aux loss, config validation.

Every check compares with a reference computed another way: an fp64 per-token loop of the paper's equation,
transformers' own Mixtral / Llama with the same weights, or a by-hand load-balancing loss.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from hf_plugins.models.coe import CoEConfig, CoEForCausalLM
from hf_plugins.models.modeling_coe import CoESparseMoeBlock


TINY = {
    "vocab_size": 99,  # 102400 (DeepSeek-V2 tokenizer)
    "hidden_size": 32,  # 1024
    "intermediate_size": 48,  # dense layers only
    "num_hidden_layers": 2,  # 4
    "num_attention_heads": 4,  # 8
    "num_key_value_heads": 2,  # 8
    "num_experts": 8,  # 63 routed + 1 shared
    "num_experts_per_tok": 2,  # 4
    "num_iterations": 2,  # 2
    "moe_intermediate_size": 16,  # 704
    "n_shared_experts": 1,  # 1
    "pad_token_id": 0,
}


def tiny_coe(seed: int = 0, experts: str = "eager", **overrides) -> CoEForCausalLM:
    config = CoEConfig(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = CoEForCausalLM._from_config(config, experts_implementation=experts)
    return model.eval()


def ids(batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# fp64 references of the paper's equations, one token at a time


def ref_expert(block: CoESparseMoeBlock, i: int, x: torch.Tensor) -> torch.Tensor:
    gate, up = (block.experts.gate_up_proj[i].double() @ x).chunk(2)
    return block.experts.down_proj[i].double() @ (F.silu(gate) * up)


def ref_shared(block: CoESparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    s = block.shared_experts
    return s.down_proj.weight.double() @ (F.silu(s.gate_proj.weight.double() @ x) * (s.up_proj.weight.double() @ x))


def ref_routed(block: CoESparseMoeBlock, router_idx: int, x: torch.Tensor, k: int, norm: bool, scale: float):
    """The official (DeepSeek-V2) gate: renormalise the top-k probabilities when asked and k > 1, else scale them."""
    probs = torch.softmax(block.routers[router_idx].weight.double() @ x, dim=-1)
    top = torch.topk(probs, k).indices.tolist()
    gates = probs[top] / probs[top].sum() if norm and k > 1 else probs[top] * scale
    return sum(g * ref_expert(block, i, x) for g, i in zip(gates, top))


def ref_plain_moe(block: CoESparseMoeBlock, x: torch.Tensor, k: int) -> torch.Tensor:
    """A standard top-K MoE block (plus the shared expert if present) for one token x [H]."""
    out = ref_routed(block, 0, x, k, norm=False, scale=1.0)
    return out + ref_shared(block, x) if block.shared_experts is not None else out


def ref_coe(block: CoESparseMoeBlock, x0: torch.Tensor, cfg: CoEConfig) -> torch.Tensor:
    """The CoE block's output for one token, by an explicit loop over iterations: its contribution to the residual
    stream (x(C) - x(0)) in the pre-LN layout, the chain's state x(C) in the official one."""
    x, deltas = x0, []
    for t in range(cfg.num_iterations):
        r = t if cfg.router_per_iteration else 0
        d = ref_routed(block, r, x, cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.routed_scaling_factor)
        if cfg.n_shared_experts and cfg.shared_experts_every_iteration:
            d = d + ref_shared(block, x)
        if cfg.learnable_chain_scale and t < cfg.num_iterations - 1:
            d = d * block.chain_scale[t].double()
        deltas.append(d)
        x = x + d if cfg.inner_residual else d
    out = x if cfg.residual_mode == "official" else sum(deltas) if cfg.inner_residual else x
    if cfg.n_shared_experts and not cfg.shared_experts_every_iteration:
        out = out + ref_shared(block, x0)
    return out


def block_input(model: CoEForCausalLM, layer: int, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """The normalised hidden state u0 = LN_post(h) that layer `layer`'s CoE block receives."""
    seen = {}
    handle = model.model.layers[layer].mlp.register_forward_hook(lambda m, a, o: seen.setdefault("x", a[0]))
    with torch.no_grad():
        model(input_ids, **kwargs)
    handle.remove()
    return seen["x"]


# ----------------------------------------------------------------------------------------------------------------


def test_single_iteration_equals_a_plain_top_k_moe():
    """With C=1 the block is a standard top-K MoE (+ shared expert): compare with the fp64 per-token reference."""
    model = tiny_coe(num_iterations=1)
    block = model.model.layers[1].mlp
    x = block_input(model, 1, ids())
    with torch.no_grad():
        out = block(x).reshape(-1, x.shape[-1])
    ref = torch.stack(
        [ref_plain_moe(block, u, TINY["num_experts_per_tok"]) for u in x.reshape(-1, x.shape[-1]).double()]
    )
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("experts", ["eager", "grouped_mm"])
def test_single_iteration_model_equals_transformers_mixtral(experts):
    """C=1, renormalised top-k, no shared expert: the whole model equals transformers' Mixtral with the same weights
    (Llama attention, softmax top-k router with renormalised weights, fused SwiGLU experts)."""
    model = tiny_coe(num_iterations=1, n_shared_experts=0, norm_topk_prob=True, experts=experts)
    mixtral_cfg = MixtralConfig(
        vocab_size=TINY["vocab_size"],
        hidden_size=TINY["hidden_size"],
        intermediate_size=TINY["moe_intermediate_size"],
        num_hidden_layers=TINY["num_hidden_layers"],
        num_attention_heads=TINY["num_attention_heads"],
        num_key_value_heads=TINY["num_key_value_heads"],
        num_local_experts=TINY["num_experts"],
        num_experts_per_tok=TINY["num_experts_per_tok"],
        rms_norm_eps=model.config.rms_norm_eps,
        max_position_embeddings=model.config.max_position_embeddings,
        rope_parameters=model.config.rope_parameters,  # Mixtral's default theta is 1e6, Llama's 1e4
        sliding_window=None,
        pad_token_id=0,
    )
    mixtral = MixtralForCausalLM._from_config(mixtral_cfg, experts_implementation="eager").eval()
    state = {k.replace("mlp.routers.0.", "mlp.gate."): v for k, v in model.state_dict().items()}
    missing, unexpected = mixtral.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, mixtral(x).logits, atol=1e-5, rtol=1e-5)


def test_all_dense_layers_equal_transformers_llama():
    """With every layer dense (first_k_dense_replace = num_hidden_layers) the model is exactly a Llama: checks the
    attention / norm / residual plumbing we inherit."""
    model = tiny_coe(first_k_dense_replace=TINY["num_hidden_layers"])
    llama_cfg = LlamaConfig(
        **{k: TINY[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")},
        num_attention_heads=TINY["num_attention_heads"],
        num_key_value_heads=TINY["num_key_value_heads"],
        rms_norm_eps=model.config.rms_norm_eps,
        max_position_embeddings=model.config.max_position_embeddings,
        pad_token_id=0,
    )
    llama = LlamaForCausalLM._from_config(llama_cfg).eval()
    llama.load_state_dict(model.state_dict(), strict=True)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, llama(x).logits, atol=0, rtol=0)


CHAIN_CASES = [
    # (case, config overrides)
    ("paper defaults: per-iteration routers, inner residual, shared expert every iteration", {}),
    ("no shared expert", {"n_shared_experts": 0}),
    ("shared expert once, parallel to the chain", {"shared_experts_every_iteration": False}),
    ("one router for all iterations (ablation)", {"router_per_iteration": False}),
    ("no inner residual (ablation)", {"inner_residual": False}),
    ("three iterations, renormalised gates", {"num_iterations": 3, "norm_topk_prob": True}),
    ("raw gates scaled by routed_scaling_factor", {"routed_scaling_factor": 2.5}),
    (
        "one expert per iteration: never renormalised, scaled (official gate)",
        {"num_experts_per_tok": 1, "norm_topk_prob": True, "routed_scaling_factor": 2.5},
    ),
    ("official layout: the block returns x(C)", {"residual_mode": "official"}),
    ("official layout without inner residual", {"residual_mode": "official", "inner_residual": False}),
    ("learnable chain scales", {"num_iterations": 3, "learnable_chain_scale": True}),
]


@pytest.mark.parametrize("case, overrides", CHAIN_CASES, ids=[c[0] for c in CHAIN_CASES])
def test_chain_equals_an_explicit_loop(case, overrides):
    """The block's output equals the paper's equation evaluated by an explicit fp64 loop over iterations."""
    model = tiny_coe(**overrides)
    cfg = model.config
    for layer in range(cfg.num_hidden_layers):
        block = model.model.layers[layer].mlp
        if block.chain_scale is not None:  # initialised to 0; any values must follow the equation
            block.chain_scale.data.uniform_(0.5, 1.5)
        x = block_input(model, layer, ids())
        with torch.no_grad():
            out = block(x).reshape(-1, x.shape[-1])
        ref = torch.stack([ref_coe(block, u, cfg) for u in x.reshape(-1, x.shape[-1]).double()])
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_decoder_layer_adds_the_chain_to_the_un_normalised_residual():
    """Layer output = h + sum_t d_t (the paper's equation in a pre-LN block), not LN(h) + sum_t d_t (official code)."""
    model = tiny_coe()
    layer = model.model.layers[0]
    seen = {}
    layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: seen.update(h=a[0], u0=o))
    layer.mlp.register_forward_hook(lambda m, a, o: seen.update(moe=o))
    layer.register_forward_hook(lambda m, a, o: seen.update(out=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(ids())
    torch.testing.assert_close(seen["out"], seen["h"] + seen["moe"], atol=0, rtol=0)
    ref = torch.stack([ref_coe(layer.mlp, u, model.config) for u in seen["u0"].reshape(-1, 32).double()])
    torch.testing.assert_close((seen["out"] - seen["h"]).reshape(-1, 32).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype, atol",
    [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)],
)
def test_experts_implementations_agree(dtype, atol):
    """eager, batched_mm and grouped_mm give the same logits and gradients (each CoE iteration goes through the
    configured backend)."""
    x = ids()
    results = {}
    for experts in ("eager", "batched_mm", "grouped_mm"):
        model = tiny_coe(experts=experts).to(dtype)
        assert model.config._experts_implementation == experts
        model.train()
        out = model(x, labels=x)
        out.loss.backward()
        grad = model.model.layers[0].mlp.experts.gate_up_proj.grad.float().clone()
        router_grad = model.model.layers[1].mlp.routers[1].weight.grad.float().clone()
        results[experts] = (out.logits.float().detach(), grad, router_grad)
    ref = results["eager"]
    for experts in ("batched_mm", "grouped_mm"):
        for got, want in zip(results[experts], ref):
            torch.testing.assert_close(got, want, atol=atol, rtol=atol)


@pytest.mark.parametrize("experts", ["eager", "batched_mm", "grouped_mm"])
def test_autocast_runs_the_experts_in_the_autocast_dtype(experts):
    """fp32 master weights under bf16 autocast (Trainer(bf16=True)): every backend computes the expert products in
    bf16, exactly as the same experts holding bf16 copies of the weights do, and the gradients reach the fp32
    parameters. (transformers' grouped_mm / batched_mm wrappers cast activations to the weight dtype, which without
    this would run the experts in fp32.)"""
    model = tiny_coe(experts=experts)
    experts_mod = model.model.layers[1].mlp.experts
    torch.manual_seed(0)
    x = torch.randn(12, model.config.hidden_size)
    index = torch.randint(0, model.config.num_experts, (12, model.config.num_experts_per_tok))
    weights = torch.rand(12, model.config.num_experts_per_tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = experts_mod(x, index, weights)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert experts_mod.gate_up_proj.grad is not None and experts_mod.gate_up_proj.grad.dtype == torch.float32
    ref_mod = tiny_coe(experts=experts).to(torch.bfloat16).model.layers[1].mlp.experts
    with torch.no_grad():
        ref_mod.gate_up_proj.copy_(experts_mod.gate_up_proj)
        ref_mod.down_proj.copy_(experts_mod.down_proj)
        ref = ref_mod(x.to(torch.bfloat16), index, weights.to(torch.bfloat16))
    torch.testing.assert_close(out.detach().float(), ref.float(), atol=1e-2, rtol=1e-2)
    with torch.no_grad():  # outside autocast: the fp32 path is unchanged
        assert experts_mod(x, index, weights).dtype == torch.float32


def test_set_experts_implementation_switches_backend():
    model = tiny_coe(experts="eager")
    x = ids()
    with torch.no_grad():
        eager = model(x).logits
        model.set_experts_implementation("grouped_mm")
        assert model.model.layers[0].mlp.experts.config._experts_implementation == "grouped_mm"
        torch.testing.assert_close(model(x).logits, eager, atol=1e-5, rtol=1e-5)


def test_bf16_forward_keeps_routers_fp32():
    """bf16 weights: router weights and logits stay fp32 (official `MoEGate` computes logits in fp32)."""
    config = CoEConfig(**TINY)
    model = CoEForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    assert model.model.layers[0].mlp.routers[0].weight.dtype == torch.float32
    assert model.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids(), output_router_logits=True)
    assert out.logits.dtype == torch.bfloat16
    assert all(r.dtype == torch.float32 for r in out.router_logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_router_logits_and_gradients_are_those_of_an_fp32_linear(dtype):
    """The router's memory-saving autograd function gives F.linear(x.float(), W)'s values and gradients."""
    from hf_plugins.models.modeling_coe import CoERouter

    torch.manual_seed(0)
    router = CoERouter(16, 6)
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = router.weight.detach().clone().requires_grad_(True)
    g = torch.randn(3, 5, 6)
    out = router(x)
    ref = F.linear(x_ref.float(), w_ref)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(router.weight.grad, w_ref.grad, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# the load-balancing loss


def hand_aux(logits: torch.Tensor, batch: int, k: int, mask: torch.Tensor) -> float:
    """DeepSeek-V2 sequence-level balance loss, counted by hand: mean_b sum_i f_i P_i over non-padding tokens."""
    n = logits.shape[-1]
    probs = torch.softmax(logits.double(), dim=-1).view(batch, -1, n)
    per_seq = []
    for b in range(batch):
        tokens = [t for t in range(probs.shape[1]) if mask[b, t]]
        counts = [0] * n
        for t in tokens:
            for i in torch.topk(probs[b, t], k).indices.tolist():
                counts[i] += 1
        p = [sum(probs[b, t, i].item() for t in tokens) / len(tokens) for i in range(n)]
        per_seq.append(sum(counts[i] * n / (len(tokens) * k) * p[i] for i in range(n)))
    return sum(per_seq) / len(per_seq)


def test_aux_loss_per_iteration_matches_a_hand_computation():
    """One loss per layer and iteration, from the logits of the router that iteration used; padding excluded; the
    training loss adds coef * sum, the evaluation loss is pure cross-entropy."""
    model = tiny_coe(router_aux_loss_coef=0.05)
    x = ids()
    mask = torch.ones_like(x)
    mask[1, 6:] = 0  # right padding in the second sequence
    labels = x.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(x, attention_mask=mask, labels=labels, output_router_logits=True)
    cfg = model.config
    assert out.aux_losses.shape == (cfg.num_hidden_layers, cfg.num_iterations)
    assert len(out.router_logits) == cfg.num_hidden_layers * cfg.num_iterations
    for j, logits in enumerate(out.router_logits):
        want = hand_aux(logits, 2, cfg.num_experts_per_tok, mask)
        assert out.aux_losses.flatten()[j].item() == pytest.approx(want, rel=1e-5)
    assert out.aux_loss.item() == pytest.approx(out.aux_losses.sum().item())

    # The recorded logits are the ones that routed: iteration 1 of layer 0 reads u0, iteration 2 reads u0 + d1.
    block = model.model.layers[0].mlp
    u0 = block_input(model, 0, x, attention_mask=mask).reshape(-1, cfg.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(out.router_logits[0], block.routers[0](u0))
        index, weights = block.route(0, u0)
        u1 = u0 + block.experts(u0, index, weights) + block.shared_experts(u0)
        torch.testing.assert_close(out.router_logits[1], block.routers[1](u1), atol=1e-6, rtol=1e-5)

    eval_loss = out.loss
    model.train()
    with torch.no_grad():
        train = model(x, attention_mask=mask, labels=labels)
    assert train.loss.item() == pytest.approx(eval_loss.item() + 0.05 * out.aux_loss.item(), rel=1e-6)
    assert train.router_logits is None  # recorded for the loss, returned only on request


def test_aux_loss_is_one_for_uniform_routing():
    """f_i = P_i = 1/N... scaled: sum_i f_i P_i = 1 when every expert is chosen equally and probabilities are flat."""
    from hf_plugins.models.coe import coe_router_aux_loss

    logits = torch.zeros(2 * 4, 4)  # uniform probabilities; topk of ties picks a fixed set, so f is not uniform
    logits[torch.arange(8), torch.arange(8) % 4] = 1e-4  # break ties so each expert is picked equally (K=1)
    assert coe_router_aux_loss(logits, top_k=1, batch_size=2).item() == pytest.approx(1.0, rel=1e-3)


def test_aux_loss_gradient_reaches_the_routers():
    model = tiny_coe(router_aux_loss_coef=1.0).train()
    x = ids()
    model(x, labels=x).loss.backward()
    for layer in model.model.layers:
        for router in layer.mlp.routers:
            assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    x = ids()
    grads = []
    for checkpointing in (False, True):
        model = tiny_coe().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss = model(x, labels=x).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l0, l1)
    assert g0.keys() == g1.keys() and any("routers" in n for n in g0)
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# LayerNorm Scaling


def test_layernorm_scaling_equals_norm_weights_scaled_by_inverse_sqrt_depth():
    """layernorm_scaling multiplies both block-input norms of layer l (1-based) by 1/sqrt(l), never the final norm:
    the same model without it, with those norm weights scaled by hand, gives the same logits."""
    scaled = tiny_coe(layernorm_scaling=True, num_hidden_layers=3, first_k_dense_replace=1)
    plain = tiny_coe(layernorm_scaling=False, num_hidden_layers=3, first_k_dense_replace=1)
    state = scaled.state_dict()
    for idx in range(3):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            key = f"model.layers.{idx}.{norm}.weight"
            state[key] = state[key] / math.sqrt(idx + 1)
            assert getattr(scaled.model.layers[idx], norm).scale == pytest.approx(1 / math.sqrt(idx + 1))
    plain.load_state_dict(state)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(scaled(x).logits, plain(x).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(scaled(x).logits, tiny_coe(num_hidden_layers=3, first_k_dense_replace=1)(x).logits)
    assert not any("scale" in name for name, _ in scaled.named_buffers())


# ----------------------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_experts", 0),
        ("num_experts_per_tok", 0),
        ("num_experts_per_tok", 9),  # > num_experts
        ("num_iterations", 0),
        ("n_shared_experts", -1),
        ("moe_intermediate_size", 0),
        ("first_k_dense_replace", 3),  # > num_hidden_layers
        ("first_k_dense_replace", -1),
        ("routed_scaling_factor", 0.0),
        ("router_aux_loss_coef", -0.1),
        ("residual_mode", "post_ln"),
    ],
)
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CoEConfig(**{**TINY, field: value})


def test_config_types_are_checked():
    with pytest.raises(StrictDataclassFieldValidationError, match="inner_residual"):
        CoEConfig(**{**TINY, "inner_residual": "yes"})


def test_config_defaults_are_the_official_values():
    cfg = CoEConfig()
    assert (cfg.num_experts, cfg.n_shared_experts, cfg.moe_intermediate_size) == (63, 1, 704)
    assert (cfg.num_experts_per_tok, cfg.num_iterations, cfg.router_per_iteration, cfg.inner_residual) == (
        4,
        2,
        True,
        True,
    )
    assert (cfg.norm_topk_prob, cfg.routed_scaling_factor, cfg.router_aux_loss_coef) == (False, 1.0, 0.001)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.first_k_dense_replace) == (1024, 4, 102400, 0)
    assert cfg.layernorm_scaling is False and cfg.model_type == "coe"


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda
def test_cuda_bf16_backends_agree_and_cached_generation_matches():
    """On CUDA in bf16: grouped_mm (the training default) matches eager, and cached greedy decoding (where
    transformers switches grouped_mm to batched_mm) matches uncached decoding."""
    x = ids().cuda()
    logits = {}
    for experts in ("eager", "grouped_mm"):
        model = tiny_coe(experts=experts).to("cuda", torch.bfloat16)
        with torch.no_grad():
            logits[experts] = model(x).logits.float()
    torch.testing.assert_close(logits["grouped_mm"], logits["eager"], atol=3e-2, rtol=3e-2)
    model = tiny_coe(experts="grouped_mm").cuda()  # fp32: torch's grouped-mm fallback; decode uses batched_mm
    with torch.no_grad():
        cached = model.generate(x[:, :4], max_new_tokens=10, do_sample=False, pad_token_id=0)
        uncached = model.generate(x[:, :4], max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)
