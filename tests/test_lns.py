"""LayerNorm Scaling (arXiv 2502.05795): lns_llama / lns_qwen2 against transformers' own models."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import hf_plugins  # noqa: F401  (registers the model types)
from hf_plugins.models.lns import LnsLlamaForCausalLM, LnsQwen2ForCausalLM, ScaledRMSNorm, lns_config_from, to_lns
from hf_plugins.testing import tiny_model


FAMILIES = [("llama", LnsLlamaForCausalLM), ("qwen2", LnsQwen2ForCausalLM)]


def _ids(batch=2, length=12, seed=0, vocab=90):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(6, vocab, (batch, length), generator=g)


def _randomise_norm_gains(model, seed=1):
    """Non-unit gains, so tests see whether the gain and the scale are both applied."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("family, lns_cls", FAMILIES)
def test_scaling_off_equals_transformers_model(family, lns_cls):
    """With layernorm_scaling=False the LNS class is exactly the family's model: same weights, same logits."""
    ref = _randomise_norm_gains(tiny_model(family, num_hidden_layers=3))
    config = lns_config_from(ref.config, layernorm_scaling=False)
    ours = lns_cls(config).eval()
    ours.load_state_dict(ref.state_dict())
    ids = _ids()
    assert torch.equal(ours(ids).logits, ref(ids).logits)
    assert not any(isinstance(m, ScaledRMSNorm) for m in ours.modules())


@pytest.mark.parametrize("family, lns_cls", FAMILIES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_lns_equals_llama_with_gains_divided_by_sqrt_l(family, lns_cls, dtype, tol):
    """In the forward pass, LNS on block l equals the stock model whose two block-input gains are multiplied by
    1/sqrt(l) and whose final norm is unchanged: a reference built from transformers' own model."""
    ref = _randomise_norm_gains(tiny_model(family, num_hidden_layers=5, dtype=dtype))
    ours = to_lns(ref, copy=True).eval()
    assert isinstance(ours, lns_cls)
    with torch.no_grad():
        for i, layer in enumerate(ref.model.layers):
            layer.input_layernorm.weight.mul_(1 / math.sqrt(i + 1))
            layer.post_attention_layernorm.weight.mul_(1 / math.sqrt(i + 1))
    ids = _ids()
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, rtol=tol, atol=tol)


def test_norm_outputs_are_scaled_by_exactly_one_over_sqrt_l():
    """Capture every norm's input and output in a forward pass; block l's two norms return the stock RMSNorm of
    their input times 1/sqrt(l) (l 1-based, the same factor for both), the final norm is not scaled."""
    model = _randomise_norm_gains(tiny_model("lns_llama", num_hidden_layers=6, dtype=torch.float64))
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args[0], out)))
        for name, m in model.named_modules()
        if "norm" in name.rsplit(".", 1)[-1]
    ]
    model(_ids())
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * 6 + 1
    for name, (x, out) in seen.items():
        module = model.get_submodule(name)
        stock = LlamaRMSNorm(x.shape[-1], eps=model.config.rms_norm_eps).double()
        stock.weight.data.copy_(module.weight)
        if name == "model.norm":
            assert type(module) is LlamaRMSNorm
            factor = 1.0
        else:
            layer_idx = int(name.split(".")[2])
            factor = 1.0 / math.sqrt(layer_idx + 1)
            assert module.scale == factor and isinstance(module.scale, float)
        torch.testing.assert_close(out, stock(x) * factor, rtol=1e-13, atol=1e-15)


def test_scale_is_a_float_not_a_buffer_or_parameter():
    model = tiny_model("lns_llama")
    names = [n for n, _ in model.named_buffers()] + list(model.state_dict())
    assert not any("scale" in n for n in names)
    assert set(model.state_dict()) == set(tiny_model("llama").state_dict())


@pytest.mark.parametrize("family", ["lns_llama", "lns_qwen2"])
@pytest.mark.parametrize(
    "load_kwargs",
    [{}, {"low_cpu_mem_usage": True}, {"device_map": "cpu"}],
    ids=["default", "low_cpu_mem", "device_map"],
)
def test_from_pretrained_keeps_the_scale(family, load_kwargs, tmp_path):
    """transformers v5 builds models on the meta device when loading: a buffer-held scale would be wiped
    (OLMo-core PR #698). Reload and compare logits and every block's scale."""
    model = _randomise_norm_gains(tiny_model(family, num_hidden_layers=4))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, **load_kwargs).eval()
    assert type(loaded) is type(model) and loaded.config.layernorm_scaling is True
    for i, layer in enumerate(loaded.model.layers):
        assert layer.input_layernorm.scale == layer.post_attention_layernorm.scale == 1 / math.sqrt(i + 1)
    ids = _ids()
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_meta_device_construction_keeps_the_scale():
    model = _randomise_norm_gains(tiny_model("lns_llama", num_hidden_layers=3))
    with torch.device("meta"):
        empty = LnsLlamaForCausalLM(model.config)
    empty.to_empty(device="cpu")
    empty.load_state_dict(model.state_dict())
    empty.model.rotary_emb.inv_freq.copy_(model.model.rotary_emb.inv_freq)
    assert [lay.input_layernorm.scale for lay in empty.model.layers] == [1.0, 1 / math.sqrt(2), 1 / math.sqrt(3)]
    ids = _ids()
    assert torch.equal(empty.eval()(ids).logits, model(ids).logits)


def test_scaling_off_round_trips_through_the_config(tmp_path):
    cfg = lns_config_from(
        AutoConfig.for_model("qwen2", hidden_size=32, num_attention_heads=4), layernorm_scaling=False
    )
    cfg.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert back.model_type == "lns_qwen2" and back.layernorm_scaling is False and back.hidden_size == 32


def test_convert_a_checkpoint_directory(tmp_path):
    """A saved stock Llama converts with to_lns(path); flipping the flag back gives the stock logits again."""
    ref = _randomise_norm_gains(tiny_model("llama", num_hidden_layers=3, tie_word_embeddings=True))
    ref.save_pretrained(tmp_path)
    lns = to_lns(str(tmp_path))
    assert isinstance(lns, LnsLlamaForCausalLM)
    assert lns.lm_head.weight.data_ptr() == lns.model.embed_tokens.weight.data_ptr()  # still tied
    off = to_lns(lns, layernorm_scaling=False).eval()
    ids = _ids()
    assert torch.equal(off(ids).logits, ref(ids).logits)
    assert not torch.allclose(lns.eval()(ids).logits, ref(ids).logits)


def test_converter_shares_or_copies_weights():
    ref = tiny_model("llama")
    shared, copied = to_lns(ref), to_lns(ref, copy=True)
    w = "model.layers.0.mlp.up_proj.weight"
    assert shared.state_dict()[w].data_ptr() == ref.state_dict()[w].data_ptr()
    assert copied.state_dict()[w].data_ptr() != ref.state_dict()[w].data_ptr()


def test_unsupported_family_gives_a_clear_error():
    with pytest.raises(ValueError, match="supports model types"):
        lns_config_from(AutoConfig.for_model("mistral", hidden_size=32, num_attention_heads=4))


def test_config_validates_its_flag():
    from hf_plugins.models.lns import LnsLlamaConfig

    with pytest.raises(Exception, match="layernorm_scaling"):
        LnsLlamaConfig(layernorm_scaling="yes")


def test_variance_grows_more_slowly_with_depth_under_lns():
    """The paper's mechanism: at random init the Pre-LN residual variance grows ~linearly with depth; with LNS
    each block's update shrinks with 1/sqrt(l). Same weights, fixed seeds, 12 blocks: the growth of the output
    variance over the embeddings is at least 2x smaller under LNS for every seed, and the deep blocks' share
    of the growth is smaller too."""
    from hf_plugins.models.lns.diagnostics import depth_report

    for seed in range(2):
        pre = tiny_model("llama", seed=seed, num_hidden_layers=12, hidden_size=64, intermediate_size=128)
        lns = to_lns(pre, copy=True)
        ids = _ids(batch=4, length=32, seed=seed)
        v_pre, v_lns = depth_report(pre, ids)["variance"], depth_report(lns, ids)["variance"]
        assert v_pre[0] == pytest.approx(v_lns[0])  # same embeddings
        growth_pre, growth_lns = v_pre[-1] - v_pre[0], v_lns[-1] - v_lns[0]
        assert 0 < growth_lns < 0.5 * growth_pre, (seed, growth_lns, growth_pre)
        deep_pre = (v_pre[-1] - v_pre[6]) / growth_pre
        deep_lns = (v_lns[-1] - v_lns[6]) / growth_lns
        assert deep_lns < deep_pre


def test_generation_with_cache_equals_without():
    model = tiny_model("lns_qwen2", num_hidden_layers=3)
    ids = _ids(batch=2, length=6)
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = _ids()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("lns_llama", num_hidden_layers=3).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_sdpa_and_eager_agree():
    eager = tiny_model("lns_llama", num_hidden_layers=3, attn_implementation="eager")
    sdpa = tiny_model("lns_llama", num_hidden_layers=3, attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding exercises the mask path
    keep = mask.bool()  # padded query rows attend to nothing and differ between backends by design
    torch.testing.assert_close(
        sdpa(ids, attention_mask=mask).logits[keep], eager(ids, attention_mask=mask).logits[keep], rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = tiny_model("lns_llama", num_hidden_layers=2)
    ids = _ids()
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
