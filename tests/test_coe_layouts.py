"""Chain-of-Experts: the official layer layout, the official gate rule for `routed_scaling_factor`, configs changed
after construction, and MoE -> CoE up-cycling.

References are computed another way: the fp64 per-token loop of test_coe.py (`ref_coe`), the layer's own
intermediate tensors captured by hooks, and hand-computed gates.
"""

import pytest
import torch
from test_coe import TINY, block_input, ids, ref_coe, tiny_coe
from transformers import AutoModelForCausalLM

from hf_plugins.models.coe import CoEConfig, CoEForCausalLM, moe_to_coe


def layer_tensors(model: CoEForCausalLM, layer_idx: int, x: torch.Tensor) -> dict:
    """h (the attention sub-block's output), u0 = LN_post(h), the block's output and the layer's output."""
    layer, seen = model.model.layers[layer_idx], {}
    handles = [
        layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: seen.update(h=a[0], u0=o)),
        layer.mlp.register_forward_hook(lambda m, a, o: seen.update(block=o)),
        layer.register_forward_hook(lambda m, a, o: seen.update(out=o[0] if isinstance(o, tuple) else o)),
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


# ----------------------------------------------------------------------------------------------------------------
# residual_mode


@pytest.mark.parametrize("inner_residual", [True, False])
def test_official_layout_returns_the_chain_state_without_the_residual_stream(inner_residual):
    """residual_mode="official" (the official `CoeDecoderLayer`, outer_residual=false): the layer returns x(C) =
    LN(h) + sum_t d_t (with the inner residual) or d_C (without), and h is not added back."""
    model = tiny_coe(residual_mode="official", inner_residual=inner_residual)
    x = ids()
    for layer_idx in range(model.config.num_hidden_layers):
        seen = layer_tensors(model, layer_idx, x)
        torch.testing.assert_close(seen["out"], seen["block"], atol=0, rtol=0)
        u0 = seen["u0"].reshape(-1, TINY["hidden_size"]).double()
        block = model.model.layers[layer_idx].mlp
        ref = torch.stack([ref_coe(block, u, model.config) for u in u0])
        torch.testing.assert_close(seen["out"].reshape(-1, TINY["hidden_size"]).double(), ref, atol=1e-5, rtol=1e-5)
        if inner_residual:  # x(C) - x(0) is the pre-LN layout's block output
            deltas = (ref - u0).float().reshape(seen["out"].shape)
            assert not torch.allclose(seen["out"], seen["h"] + deltas, atol=1e-3)


def test_official_layout_with_outer_residual_adds_h():
    model = tiny_coe(residual_mode="official", outer_residual=True)
    seen = layer_tensors(model, 1, ids())
    torch.testing.assert_close(seen["out"], seen["h"] + seen["block"], atol=0, rtol=0)
    torch.testing.assert_close(
        seen["block"], seen["u0"] + block_output_deltas(model, 1, seen["u0"]), atol=1e-5, rtol=1e-5
    )


def block_output_deltas(model, layer_idx, u0):
    """sum_t d_t for the layer's chain, from the pre-LN layout's block with the same weights."""
    pre_ln = tiny_coe()
    pre_ln.load_state_dict(model.state_dict())
    with torch.no_grad():
        return pre_ln.model.layers[layer_idx].mlp(u0)


def test_layouts_share_weights_and_differ_only_in_the_residual():
    """The same weights under both layouts: identical state-dict keys, and at C=1 the official layer output is
    LN(h) + MoE(LN(h)) where ours is h + MoE(LN(h))."""
    ours = tiny_coe(num_iterations=1)
    official = tiny_coe(num_iterations=1, residual_mode="official")
    assert ours.state_dict().keys() == official.state_dict().keys()
    official.load_state_dict(ours.state_dict())
    x = ids()
    a, b = layer_tensors(ours, 0, x), layer_tensors(official, 0, x)
    torch.testing.assert_close(a["h"], b["h"], atol=0, rtol=0)  # layer 0's attention input is the same embedding
    torch.testing.assert_close(a["out"] - a["h"] + a["u0"], b["out"], atol=1e-6, rtol=1e-6)


def test_residual_mode_is_settable_from_a_dict_and_round_trips(tmp_path):
    config = CoEConfig(**{**TINY, "residual_mode": "official", "outer_residual": True})
    assert CoEConfig.from_dict(config.to_dict()).residual_mode == "official"
    model = tiny_coe(residual_mode="official")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (loaded.config.residual_mode, loaded.model.layers[0].adds_residual) == ("official", False)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"residual_mode": "post_ln"}, "residual_mode"),
        ({"outer_residual": True}, "outer_residual"),  # the pre-LN layout always adds h
        ({"residual_mode": "official", "first_k_dense_replace": 1}, "first_k_dense_replace"),
        ({"norm_topk_prob": True, "routed_scaling_factor": 2.5}, "routed_scaling_factor"),
    ],
)
def test_inconsistent_layout_and_gate_options_are_refused(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CoEConfig(**{**TINY, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# the gate


def test_gates_follow_the_official_rule_for_renormalisation_and_scaling():
    """Official (DeepSeek-V2) `MoEGate`: renormalise the top-k probabilities if norm_topk_prob and k > 1, otherwise
    multiply them by routed_scaling_factor. With k = 1 the gate is the raw probability times the factor."""
    x = torch.randn(5, TINY["hidden_size"], generator=torch.Generator().manual_seed(0))
    cases = [
        ({"num_experts_per_tok": 1, "norm_topk_prob": True, "routed_scaling_factor": 2.5}, "scaled"),
        ({"num_experts_per_tok": 2, "norm_topk_prob": False, "routed_scaling_factor": 2.5}, "scaled"),
        ({"num_experts_per_tok": 2, "norm_topk_prob": True}, "renormalised"),
    ]
    for overrides, rule in cases:
        block = tiny_coe(**overrides).model.layers[0].mlp
        with torch.no_grad():
            index, weights = block.route(0, x)
            probs = torch.softmax(x.double() @ block.routers[0].weight.double().T, dim=-1)
        top = probs.gather(1, index)
        expected = top / top.sum(-1, keepdim=True) if rule == "renormalised" else top * 2.5
        torch.testing.assert_close(weights.double(), expected, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# configs changed after construction


@pytest.mark.parametrize(
    "field, value",
    [("num_iterations", 0), ("num_experts_per_tok", 99), ("residual_mode", "sandwich"), ("outer_residual", True)],
)
def test_a_config_changed_after_construction_is_checked_by_the_model(field, value):
    config = CoEConfig(**TINY)
    setattr(config, field, value)  # assignments are type-checked only
    with pytest.raises(ValueError, match=f"`{field}`"):
        CoEForCausalLM(config)
    with pytest.raises(ValueError, match=f"`{field}`"):
        AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------------------------------------------
# MoE -> CoE up-cycling


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"residual_mode": "official"},
        {"n_shared_experts": 0, "norm_topk_prob": True},
        {"shared_experts_every_iteration": False, "first_k_dense_replace": 1},
    ],
    ids=["pre-LN with shared expert", "official layout", "no shared expert, renormalised", "shared once, dense first"],
)
@pytest.mark.parametrize("num_iterations", [2, 3])
def test_up_cycled_model_starts_with_exactly_the_moe_logits(overrides, num_iterations):
    """moe_to_coe copies each router into the later iterations' routers and starts the chain scales at 0: the new
    model's logits equal the MoE's bit for bit, while its block runs num_iterations routed calls."""
    moe = tiny_coe(num_iterations=1, **overrides)
    with torch.no_grad():  # a 'trained' MoE: move the weights off their initialisation
        for p in moe.parameters():
            p.add_(0.05 * torch.randn_like(p))
    coe = moe_to_coe(moe, num_iterations=num_iterations)
    assert coe.config.num_iterations == num_iterations and coe.config.learnable_chain_scale
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(coe(x).logits, moe(x).logits, atol=0, rtol=0)
    layer = coe.model.layers[-1].mlp
    assert torch.equal(layer.chain_scale, torch.zeros(num_iterations - 1))
    assert all(torch.equal(r.weight, layer.routers[0].weight) for r in layer.routers)
    out = coe(x, labels=x, output_router_logits=True)
    assert out.aux_losses.shape == (coe.config.num_moe_layers, num_iterations)


def test_up_cycled_chain_scale_learns_and_survives_save_load(tmp_path):
    """The chain scale gets a gradient at 0 (the first iteration's output reaches the loss through the second
    router's input and the layer output), moves with one step, and is saved with the model."""
    coe = moe_to_coe(tiny_coe(num_iterations=1), num_iterations=2).train()
    x = ids()
    coe(x, labels=x).loss.backward()
    grads = [layer.mlp.chain_scale.grad for layer in coe.model.layers]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    torch.optim.SGD(coe.parameters(), lr=0.1).step()
    coe.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for a, b in zip(coe.model.layers, loaded.model.layers):
        assert torch.equal(a.mlp.chain_scale, b.mlp.chain_scale) and a.mlp.chain_scale.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, coe.eval()(x).logits, atol=0, rtol=0)


def test_up_cycling_refuses_what_it_cannot_convert_exactly():
    with pytest.raises(ValueError, match="num_iterations=1"):
        moe_to_coe(tiny_coe(num_iterations=2))
    with pytest.raises(ValueError, match="`num_iterations`"):
        moe_to_coe(tiny_coe(num_iterations=1), num_iterations=1)
    with pytest.raises(ValueError, match="inner residual"):
        moe_to_coe(tiny_coe(num_iterations=1, residual_mode="official", inner_residual=False))
    with pytest.raises(ValueError, match="CoEForCausalLM"):
        moe_to_coe(tiny_coe(num_iterations=1).model)


def test_up_cycling_shares_or_copies_weights():
    moe = tiny_coe(num_iterations=1)
    shared, copied = moe_to_coe(moe), moe_to_coe(moe, copy_weights=True)
    key = "model.layers.0.mlp.experts.gate_up_proj"
    assert shared.state_dict()[key].data_ptr() == moe.state_dict()[key].data_ptr()
    assert copied.state_dict()[key].data_ptr() != moe.state_dict()[key].data_ptr()
    assert block_input(shared, 0, ids()).shape == block_input(moe, 0, ids()).shape
