"""Chain-of-Experts with the rest of the stack: KV-cache generation, save -> fresh process -> load, PEFT LoRA,
gradient checkpointing under the Trainer, and `hf-plugins train --model-config coe`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_coe import TINY, ids, tiny_coe

from hf_plugins.models.coe import CoEForCausalLM, build_coe_config
from hf_plugins.models.modeling_coe import _CACHE_ARG, _CACHE_FIELD


def test_cached_greedy_generation_equals_uncached():
    """generate() with the KV cache equals generation that recomputes the whole prefix at every step."""
    model = tiny_coe(experts="grouped_mm")
    x = ids(batch=2, length=5)
    with torch.no_grad():
        cached = model.generate(x, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(x, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (2, 17)
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_one_cached_step_equals_the_full_forward(name):
    """The cache is really used (a forward that dropped it would see one token only), under either keyword."""
    model = tiny_coe()
    x = ids(batch=2, length=8)
    with torch.no_grad():
        full = model(x).logits
        prefix = model(x[:, :7], use_cache=True)
        cache = getattr(prefix, _CACHE_FIELD)
        assert cache is not None and cache.get_seq_length() == 7
        step = model(x[:, 7:], use_cache=True, **{name: cache})
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    assert _CACHE_ARG in ("cache", "past_key_values")


LOAD_IN_FRESH_PROCESS = """
import json, sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM
path = sys.argv[1]
try:
    AutoConfig.from_pretrained(path + "/model", trust_remote_code=False)
    before = "loaded"
except Exception as exc:  # without `import hf_plugins` the saved code runs only with trust_remote_code=True
    before = type(exc).__name__
import hf_plugins
model = AutoModelForCausalLM.from_pretrained(path + "/model").eval()
bf16 = AutoModelForCausalLM.from_pretrained(path + "/model", dtype=torch.bfloat16)
ids = load_file(path + "/inputs.safetensors")["ids"]
with torch.no_grad():
    save_file({"logits": model(ids).logits.contiguous()}, path + "/got.safetensors")
layer = model.model.layers[1]
print(json.dumps({
    "before": before,
    "class": type(model).__name__,
    "num_iterations": model.config.num_iterations,
    "layernorm_scaling": model.config.layernorm_scaling,
    "scale": layer.input_layernorm.scale,
    "experts": model.config._experts_implementation,
    "router_dtype_bf16": str(bf16.model.layers[0].mlp.routers[0].weight.dtype),
    "experts_dtype_bf16": str(bf16.model.layers[0].mlp.experts.gate_up_proj.dtype),
}))
"""


def test_save_and_load_in_a_fresh_process(tmp_path):
    """save_pretrained -> a new interpreter -> `import hf_plugins` -> AutoModelForCausalLM.from_pretrained gives the
    same logits (LayerNorm Scaling's Python-float scale survives meta-device loading); routers stay fp32 in bf16."""
    model = tiny_coe(layernorm_scaling=True, num_iterations=3, experts="grouped_mm")
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists()
    x = ids()
    save_file({"ids": x}, tmp_path / "inputs.safetensors")
    with torch.no_grad():
        expected = model(x).logits
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOAD_IN_FRESH_PROCESS), str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["before"] != "loaded"
    assert info["class"] == "CoEForCausalLM"
    assert (info["num_iterations"], info["layernorm_scaling"]) == (3, True)
    assert info["scale"] == pytest.approx(2**-0.5)
    assert info["experts"] == "grouped_mm"
    assert (info["router_dtype_bf16"], info["experts_dtype_bf16"]) == ("torch.float32", "torch.bfloat16")
    torch.testing.assert_close(load_file(tmp_path / "got.safetensors")["logits"], expected, atol=0, rtol=0)


def _randomise_lora(model, std=0.1):
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=std)


def test_lora_on_attention_and_routers(tmp_path):
    """LoRA reaches attention and router projections by name; the router LoRA changes routing (and so the logits),
    gets gradients, survives save/load, and merging gives a plain model with the same outputs."""
    from peft import LoraConfig, PeftModel, get_peft_model

    x = ids()
    base = tiny_coe()
    with torch.no_grad():
        base_logits = base(x).logits
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "routers.0", "routers.1"])
    model = get_peft_model(base, config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum("routers" in n for n in trainable) == 2 * 2 * TINY["num_hidden_layers"]  # A and B, 2 routers, layers
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, base_logits)  # B = 0 at init

    # Only the routers' LoRA is non-zero: any change of the logits comes through changed routing.
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name and "routers" in name:
            torch.nn.init.normal_(p, std=1.0)
    block = model.base_model.model.model.layers[0].mlp
    seen = {}
    handle = block.register_forward_hook(lambda m, a, o: seen.setdefault("u0", a[0]))
    with torch.no_grad():
        routed = model(x, output_router_logits=True)
    handle.remove()
    assert not torch.allclose(routed.logits, base_logits, atol=1e-4)
    # The balance loss sees the adapted router's logits (recorded after the LoRA wrapper), not the base router's.
    u0 = seen["u0"].reshape(-1, TINY["hidden_size"])
    with torch.no_grad():
        torch.testing.assert_close(routed.router_logits[0], block.routers[0](u0))
        assert not torch.allclose(routed.router_logits[0], block.routers[0].base_layer(u0), atol=1e-3)

    _randomise_lora(model)
    model.train()
    model(x, labels=x).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        adapted = model(x).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_coe(), tmp_path / "adapter").eval()
    merged = model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, adapted, atol=0, rtol=0)
        torch.testing.assert_close(merged(x).logits, adapted, atol=1e-5, rtol=1e-5)
    assert isinstance(merged, CoEForCausalLM)


@pytest.mark.parametrize("experts", ["eager", "grouped_mm"])
def test_lora_on_fused_experts_through_target_parameters(experts):
    """The 3-D expert tensors are reachable only through PEFT's `target_parameters` (one such adapter per model).
    The adapted model equals the merged model (dense W + delta run through the plain experts path)."""
    from peft import LoraConfig, get_peft_model

    x = ids()
    config = LoraConfig(r=2, lora_alpha=4, target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    model = get_peft_model(tiny_coe(experts=experts), config)
    _randomise_lora(model)
    model.train()
    model(x, labels=x).loss.backward()
    expert_lora = [p for n, p in model.named_parameters() if p.requires_grad]
    assert expert_lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in expert_lora)
    model.eval()
    with torch.no_grad():
        adapted = model(x).logits
        base = tiny_coe(experts=experts)(x).logits
        merged = model.merge_and_unload()(x).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_build_coe_config_sizes_for_the_tokenizer(tiny_tok):
    config = build_coe_config(tiny_tok, {"num_iterations": 1, "hidden_size": 64})
    assert config.vocab_size == len(tiny_tok) and config.pad_token_id == tiny_tok.pad_token_id
    assert (config.num_iterations, config.hidden_size, config.num_experts) == (1, 64, 16)
    with pytest.raises(ValueError, match="num_iteration"):
        build_coe_config(tiny_tok, {"num_iteration": 2})
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        build_coe_config(tiny_tok, {"num_experts_per_tok": 17})


def test_cli_pretrains_coe_from_scratch(tmp_path):
    """`hf-plugins train --model-config coe --tokenizer tiny` runs under the stock Trainer with the aux loss, and saves
    a model that loads back as CoE with the `--model-arg` overrides."""
    from transformers import AutoModelForCausalLM

    from hf_plugins.cli.main import main

    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model_config", "coe",
            "--tokenizer", "tiny",
            "--model_config_args", "num_hidden_layers=2",
            "--model_config_args", "layernorm_scaling=True",
            "--method", "full",
            "--max_steps", "2",
            "--eval_size", "0",
            "--train_size", "16",
            "--per_device_train_batch_size", "4",
            "--gradient_checkpointing",
            "--learning_rate", "1e-3",
            "--output_dir", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert isinstance(model, CoEForCausalLM)
    assert model.config.num_hidden_layers == 2 and model.config.layernorm_scaling


def test_lift_on_attention_and_routers():
    """hf_plugins' LIFT (sparse fine-tuning of 2-D weights) reaches attention and router projections by name; the
    routers' trainable entries get gradients through the routing gates and the balance loss."""
    from peft import get_peft_model

    from hf_plugins import LiftConfig

    x = ids()
    base = tiny_coe()
    with torch.no_grad():
        base_logits = base(x).logits
    config = LiftConfig(r=2, update_interval=None, target_modules=["q_proj", "v_proj", "routers.0", "routers.1"])
    model = get_peft_model(base, config)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("routers" in n for n in trainable) and all("lift_" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, base_logits, atol=1e-5, rtol=1e-5)
    model.train()
    out = model(x, labels=x)
    assert out.aux_losses.shape == (TINY["num_hidden_layers"], TINY["num_iterations"])
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.items() if "routers" in n)
