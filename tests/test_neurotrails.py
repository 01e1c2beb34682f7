"""NeuroTrails model: config checks, architecture, equivalence with transformers' Llama, cache, save/load."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_plugins  # noqa: F401  (registers the Auto classes)
from hf_plugins.models.neurotrails import NeuroTrailsConfig, NeuroTrailsForCausalLM, NeuroTrailsModel
from hf_plugins.models.scaled_rms_norm import ScaledRMSNorm


TINY = {
    "vocab_size": 61,  # 32000 (T5 tokenizer)
    "hidden_size": 32,  # 768
    "intermediate_size": 48,  # 2048
    "num_hidden_layers": 3,  # 12
    "num_attention_heads": 4,  # 12
    "num_key_value_heads": 2,  # 12
    "blocks_in_head": 2,  # 8
    "num_trails": 3,  # 3
    "max_position_embeddings": 64,  # 1024
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def tiny_neurotrails(seed: int = 0, **overrides) -> NeuroTrailsForCausalLM:
    torch.manual_seed(seed)
    config = NeuroTrailsConfig(**{**TINY, **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


def llama_for_trail(model: NeuroTrailsForCausalLM, h: int) -> LlamaForCausalLM:
    """transformers' own Llama with the weights of backbone + trail h (the reference path)."""
    cfg = model.config
    llama_cfg = LlamaConfig(
        **{k: getattr(cfg, k) for k in (*TINY, "rms_norm_eps") if k in LlamaConfig.__dataclass_fields__}
    )
    llama = LlamaForCausalLM(llama_cfg).eval()
    s = cfg.num_shared_layers
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("weight_mask"):
            continue
        if key.startswith("model.trails."):
            _, _, trail, rest = key.split(".", 3)
            if int(trail) != h:
                continue
            if rest.startswith("layers."):
                _, j, tail = rest.split(".", 2)
                state[f"model.layers.{s + int(j)}.{tail}"] = value
            else:  # norm.weight
                state[f"model.{rest}"] = value
        elif key.startswith("lm_heads."):
            if key == f"lm_heads.{h}.weight":
                state["lm_head.weight"] = value
        else:
            state[key] = value
    missing, unexpected = llama.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return llama


BAD_CONFIGS = [
    ({"num_trails": 0}, "num_trails"),
    ({"blocks_in_head": 0}, "blocks_in_head"),
    ({"blocks_in_head": 4}, "blocks_in_head"),
    ({"density": 0.0}, "density"),
    ({"density": 1.5}, "density"),
    ({"update_frequency": 0}, "update_frequency"),
    ({"prune_rate": 1.0}, "prune_rate"),
    ({"prune_rate_min": 0.6}, "prune_rate_min"),
    ({"prune_criterion": "random"}, "prune_criterion"),
    ({"prune_temperature": 0.0}, "prune_temperature"),
    ({"growth": "momentum"}, "growth"),
    ({"head_loss_reduction": "max"}, "head_loss_reduction"),
    ({"embedding_init_std": 0.0}, "embedding_init_std"),
    ({"diversity_tokens": -1}, "diversity_tokens"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"num_heads": 3}, "num_trails"),
]


@pytest.mark.parametrize("kwargs, field", BAD_CONFIGS)
def test_bad_configs_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        NeuroTrailsConfig(**{**TINY, **kwargs})


@pytest.mark.parametrize("field, value", [("blocks_in_head", 5), ("num_trails", 0), ("density", 1.5)])
def test_a_config_changed_after_construction_is_checked_by_the_model(field, value):
    """Assignments to a config are type-checked only: a model built from a changed config checks it again
    (`blocks_in_head=5` with 3 layers would give negative layer indices)."""
    config = NeuroTrailsConfig(**TINY)
    setattr(config, field, value)
    for build in (NeuroTrailsForCausalLM, NeuroTrailsModel, AutoModelForCausalLM.from_config):
        with pytest.raises(ValueError, match=f"`{field}`"):
            build(config)


def test_config_round_trip_and_no_generation_field_clash():
    """`temperature` as a config field would be read by generate() as the sampling temperature."""
    from transformers import GenerationConfig

    config = NeuroTrailsConfig(**TINY, density=0.7, prune_criterion="magnitude")
    again = NeuroTrailsConfig.from_dict(config.to_dict())
    assert (again.density, again.prune_criterion, again.num_trails) == (0.7, "magnitude", 3)
    assert again.num_shared_layers == 1 and again.num_decoder_layers == 1 + 3 * 2
    own = set(NeuroTrailsConfig.__dataclass_fields__) - set(LlamaConfig.__dataclass_fields__)
    assert not own & set(GenerationConfig._get_default_generation_params())


def test_layout_unique_layer_indices_and_independent_trails():
    model = tiny_neurotrails()
    s, b, h = 1, 2, 3
    assert len(model.model.layers) == s and len(model.model.trails) == h and len(model.lm_heads) == h
    indices = [layer.self_attn.layer_idx for layer in model.model.layers]
    indices += [layer.self_attn.layer_idx for trail in model.model.trails for layer in trail.layers]
    assert indices == list(range(s + h * b))
    depths = [[layer.depth for layer in trail.layers] for trail in model.model.trails]
    assert depths == [[2, 3]] * 3
    # independently initialised trails: different weights everywhere
    w = [trail.layers[0].mlp.up_proj.weight for trail in model.model.trails]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert not torch.equal(model.lm_heads[0].weight, model.lm_heads[1].weight)


@pytest.mark.parametrize("density", [1.0, 0.6])
def test_averaged_logits_and_summed_loss_equal_llama_per_trail(density):
    """Each trail is a Llama path (backbone + its blocks + its norm + its lm_head): compare with transformers'
    own LlamaForCausalLM holding those weights; logits = mean over trails, loss = sum of trail losses."""
    model = tiny_neurotrails(density=density)
    ids = torch.randint(3, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        out = model(ids, labels=ids)
        ref = [llama_for_trail(model, h)(ids, labels=ids) for h in range(3)]
    manual_logits = sum(r.logits for r in ref) / 3
    torch.testing.assert_close(out.logits, manual_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.trail_losses, torch.stack([r.loss for r in ref]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, sum(r.loss for r in ref), atol=1e-5, rtol=1e-5)

    mean_model = tiny_neurotrails(density=density, head_loss_reduction="mean")
    with torch.no_grad():
        mean_out = mean_model(ids, labels=ids)
    torch.testing.assert_close(mean_out.loss, mean_out.trail_losses.mean())


def test_training_forward_skips_the_averaged_logits_unless_asked():
    model = tiny_neurotrails().train()
    ids = torch.randint(3, TINY["vocab_size"], (2, 7))
    assert model(ids, labels=ids).logits is None
    assert model(ids, labels=ids, return_logits=True).logits.shape == (2, 7, TINY["vocab_size"])
    assert model(ids).logits is not None  # no labels: logits are the only output


def test_diagnostics_equal_a_manual_computation():
    model = tiny_neurotrails(diversity_tokens=5)
    ids = torch.randint(3, TINY["vocab_size"], (2, 6))
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
        per_trail = [llama_for_trail(model, h)(ids).logits[:, :-1] for h in range(3)]
    target, valid = labels[:, 1:], labels[:, 1:] != -100
    preds = [lg.argmax(-1) for lg in per_trail]
    acc = torch.stack([((p == target) & valid).sum() / valid.sum() for p in preds]).float()
    torch.testing.assert_close(out.trail_accuracies, acc)
    pairs = [(0, 1), (0, 2), (1, 2)]
    dis = sum(((preds[i] != preds[j]) & valid).sum() / valid.sum() for i, j in pairs) / 3
    torch.testing.assert_close(out.trail_disagreement, dis.float())
    # KL on the first 5 labelled positions, explicit loop
    positions = [(b, t) for b in range(2) for t in range(5) if valid[b, t]][:5]
    total = 0.0
    for i in range(3):
        for j in range(3):
            if i != j:
                for b, t in positions:
                    p, q = F.log_softmax(per_trail[i][b, t], -1), F.log_softmax(per_trail[j][b, t], -1)
                    total += float((p.exp() * (p - q)).sum())
    torch.testing.assert_close(out.trail_kl, torch.tensor(total / (6 * len(positions))), atol=1e-5, rtol=1e-4)
    stats = model.pop_trail_statistics("eval")
    assert stats["trail_1_accuracy"] == pytest.approx(float(acc[1]))
    assert model.pop_trail_statistics("eval") == {}


def test_layernorm_scaling_is_a_python_float_on_the_norm_outputs():
    """With scaling, each pre-norm output is multiplied by 1/sqrt(depth): the same as a Llama whose two pre-norm
    weights are multiplied by that factor."""
    model = tiny_neurotrails(layernorm_scaling=True, density=1.0)
    norms = [m for m in model.modules() if isinstance(m, ScaledRMSNorm)]
    assert all(isinstance(n.scale, float) for n in norms)
    assert not any("scale" in name for name, _ in model.named_buffers())
    assert model.model.trails[2].layers[1].input_layernorm.scale == pytest.approx(1 / 3**0.5)
    assert model.model.trails[0].norm.scale == 1.0  # final norms are not scaled
    ids = torch.randint(3, TINY["vocab_size"], (1, 8))
    with torch.no_grad():
        out = model(ids)
        refs = []
        for h in range(3):
            llama = llama_for_trail(model, h)
            for depth, layer in enumerate(llama.model.layers, start=1):
                layer.input_layernorm.weight.mul_(depth**-0.5)
                layer.post_attention_layernorm.weight.mul_(depth**-0.5)
            refs.append(llama(ids).logits)
    torch.testing.assert_close(out.logits, sum(refs) / 3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pad_left", [False, True])
def test_cached_greedy_generation_equals_uncached(pad_left):
    model = tiny_neurotrails(density=0.7)
    ids = torch.randint(3, TINY["vocab_size"], (2, 6))
    mask = torch.ones_like(ids)
    if pad_left:
        ids[0, :2], mask[0, :2] = 0, 0
    kw = {"attention_mask": mask, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    cached = model.generate(ids, use_cache=True, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    assert cached.shape == (2, 12)
    assert torch.equal(cached, uncached)
    # and the first generated token is the argmax of the averaged logits
    with torch.no_grad():
        first = model(ids, attention_mask=mask).logits[:, -1].argmax(-1)
    assert torch.equal(cached[:, 6], first)


def test_cache_is_extended_to_all_trail_layers():
    from transformers import DynamicCache

    model = tiny_neurotrails()
    cache = DynamicCache(config=model.config)  # sized for num_hidden_layers = 3, the model needs 7
    assert len(cache.layers) == 3
    ids = torch.randint(3, TINY["vocab_size"], (1, 4))
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    assert len(cache.layers) == 7 and cache.get_seq_length() == 4


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_save_load_gives_identical_outputs_and_masks(tmp_path, low_cpu_mem_usage):
    model = tiny_neurotrails(density=0.6)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "model.safetensors")
    assert saved["model.layers.0.mlp.up_proj.weight_mask"].dtype == torch.bool
    torch.manual_seed(123)  # a different RNG state: re-initialised masks would differ
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, low_cpu_mem_usage=low_cpu_mem_usage).eval()
    assert isinstance(loaded, NeuroTrailsForCausalLM)
    assert _same_state(model, loaded)
    ids = torch.randint(3, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, NeuroTrailsModel)
    assert torch.equal(base.layers[0].mlp.up_proj.weight_mask, model.model.layers[0].mlp.up_proj.weight_mask)


def test_bf16_load_keeps_bool_masks(tmp_path):
    tiny_neurotrails(density=0.6).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.lm_heads[0].weight.dtype == torch.bfloat16
    assert loaded.lm_heads[0].weight_mask.dtype == torch.bool


def test_fresh_process_loads_after_import(tmp_path):
    """Auto classes know "neurotrails" in a fresh interpreter once hf_plugins is imported."""
    model = tiny_neurotrails(density=0.6)
    model.save_pretrained(tmp_path / "m")
    ids = torch.arange(3, 10).unsqueeze(0)
    with torch.no_grad():
        save_file({"logits": model(ids).logits}, tmp_path / "expected.safetensors")
    code = f"""
    import torch, hf_plugins
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained({str(tmp_path / "m")!r}).eval()
    out = m(torch.arange(3, 10).unsqueeze(0)).logits
    assert torch.equal(out, load_file({str(tmp_path / "expected.safetensors")!r})["logits"]), "logits differ"
    assert type(m.config).__name__ == "NeuroTrailsConfig"
    print("ok")
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


def test_auto_config_knows_the_type():
    config = AutoConfig.for_model("neurotrails", **TINY)
    assert isinstance(config, NeuroTrailsConfig)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_neurotrails(density=0.6).train()
    ids = torch.randint(3, TINY["vocab_size"], (2, 7))
    model(ids, labels=ids).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], atol=1e-6, rtol=1e-5, msg=name)
