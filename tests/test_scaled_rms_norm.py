"""The one scaled RMSNorm of CoE, LNS and NeuroTrails, and why hub kernels cannot drop its scale.

transformers tags `LlamaRMSNorm` (and other families' RMSNorms) with `use_kernel_forward_from_hub("RMSNorm")`. With
the `kernels` package installed, the tag sets a class attribute `kernel_layer_name`, and `kernelize` (run by
`from_pretrained(..., use_kernels=True)`) replaces the forward of every module whose class has that attribute,
inherited ones included, by a hub kernel computing weight * x / rms(x). These tests put the tag on transformers'
classes as the decorator would, replace the forwards exactly as that selection does, and check that the logits of
every model type with LayerNorm Scaling do not change.
"""

import math
import types

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from hf_plugins.models.coe import CoEConfig
from hf_plugins.models.lns import LnsLlamaConfig, LnsQwen2Config
from hf_plugins.models.neurotrails import NeuroTrailsConfig
from hf_plugins.models.scaled_rms_norm import ScaledRMSNorm


SHAPE = {
    "vocab_size": 61,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
}
MODELS = {
    "lns_llama": lambda: LnsLlamaConfig(**SHAPE),
    "lns_qwen2": lambda: LnsQwen2Config(**SHAPE),
    "coe": lambda: CoEConfig(
        **SHAPE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, layernorm_scaling=True
    ),
    "neurotrails": lambda: NeuroTrailsConfig(**SHAPE, blocks_in_head=2, num_trails=2, layernorm_scaling=True),
}


def build(name: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MODELS[name]()).eval()
    with torch.no_grad():  # norm gains away from 1, so a dropped scale cannot hide behind a symmetric init
        for module in model.modules():
            if "RMSNorm" in type(module).__name__:
                module.weight.uniform_(0.5, 1.5)
    return model


def kernelize_like_the_hub(model) -> int:
    """What `kernelize` does to a model with an "RMSNorm" hub kernel registered: every module whose class carries
    `kernel_layer_name == "RMSNorm"` gets the kernel's forward, here a stock RMSNorm (weight * x / rms(x)). Returns
    the number of replaced modules."""
    replaced = 0
    for module in model.modules():
        if getattr(type(module), "kernel_layer_name", None) == "RMSNorm":
            module.forward = types.MethodType(LlamaRMSNorm.forward, module)
            replaced += 1
    return replaced


@pytest.fixture
def hub_kernel_tags(monkeypatch):
    """The class attribute `use_kernel_forward_from_hub("RMSNorm")` sets when the `kernels` package is installed."""
    for cls in (LlamaRMSNorm, Qwen2RMSNorm):
        monkeypatch.setattr(cls, "kernel_layer_name", "RMSNorm", raising=False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hub_kernel_replacement_cannot_drop_the_layernorm_scale(name, hub_kernel_tags):
    model = build(name)
    scaled = [m for m in model.modules() if getattr(m, "scale", 1.0) != 1.0]
    assert scaled, "the model should have scaled block-input norms"
    assert not any(hasattr(type(m), "kernel_layer_name") for m in scaled)  # nor inherited
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        kernelize_like_the_hub(model)  # may replace unscaled norms (e.g. a stock final norm): same computation
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_the_check_sees_a_dropped_scale(hub_kernel_tags, monkeypatch):
    """Control: were the scaled norm tagged too, the same replacement would change the logits."""
    model = build("lns_llama")
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(ScaledRMSNorm, "kernel_layer_name", "RMSNorm", raising=False)
    with torch.no_grad():
        before = model(ids).logits
        assert kernelize_like_the_hub(model) == 2 * SHAPE["num_hidden_layers"] + 1
        assert not torch.allclose(model(ids).logits, before, atol=1e-3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_type_uses_the_one_scaled_norm_with_one_over_sqrt_depth(name):
    """The block-input norms of every model type are `ScaledRMSNorm` with scale 1/sqrt(l) along the block's path
    (NeuroTrails: backbone then trail), Python floats, not buffers."""
    model = build(name)
    blocks = [m for m in model.modules() if hasattr(m, "input_layernorm")]
    assert blocks
    for block in blocks:
        depth = getattr(block, "depth", None) or block.self_attn.layer_idx + 1
        for norm in (block.input_layernorm, block.post_attention_layernorm):
            assert type(norm) is ScaledRMSNorm
            assert isinstance(norm.scale, float) and norm.scale == pytest.approx(1 / math.sqrt(depth))
    assert not any("scale" in key for key, _ in model.named_buffers())


def test_unscaled_norm_equals_llamas():
    norm, ref = ScaledRMSNorm(16, eps=1e-5), LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(norm.weight)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 16).to(dtype)
        torch.testing.assert_close(norm.to(dtype)(x), ref.to(dtype)(x), atol=0, rtol=0)
