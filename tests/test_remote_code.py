"""Saved CoE, LNS and NeuroTrails models load where hf_plugins is not installed.

`save_pretrained` writes `auto_map` into config.json and copies the modeling file with the files it imports
relatively; `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` must then rebuild the model in a
process that cannot import hf_plugins (a `sys.meta_path` entry refuses it, the repository is not on the path) with
identical logits, greedy generations, masks and parameters.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from hf_plugins.models.coe import CoEConfig, moe_to_coe
from hf_plugins.models.lns import LnsLlamaConfig, LnsQwen2Config
from hf_plugins.models.neurotrails import NeuroTrailsConfig


SHAPE = {
    "vocab_size": 61,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
COE = {**SHAPE, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "layernorm_scaling": True}
# name -> (config, files that must be saved next to config.json)
CASES = {
    "coe": (CoEConfig(**COE), {"configuration_coe.py", "modeling_coe.py", "scaled_rms_norm.py"}),
    "coe_official": (CoEConfig(**COE, residual_mode="official"), {"modeling_coe.py"}),
    "lns_llama": (LnsLlamaConfig(**SHAPE), {"configuration_lns.py", "modeling_lns.py", "scaled_rms_norm.py"}),
    "lns_qwen2": (LnsQwen2Config(**SHAPE), {"modeling_lns.py"}),
    "neurotrails": (
        NeuroTrailsConfig(**SHAPE, blocks_in_head=2, num_trails=2, density=0.6, layernorm_scaling=True),
        {
            "configuration_neurotrails.py",
            "modeling_neurotrails.py",
            "neurotrails_sparsity.py",
            "neurotrails_callback.py",
            "scaled_rms_norm.py",
        },
    ),
}

LOAD_WITHOUT_HF_PLUGINS = """
import importlib.util, json, sys


class RefuseHfPlugins:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_plugins":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)")
        return None


sys.meta_path.insert(0, RefuseHfPlugins())

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.dynamic_module_utils import get_imports, get_relative_imports

root, names = sys.argv[1], sys.argv[2].split(",")
ids = load_file(root + "/ids.safetensors")["ids"]
report = {}
for name in names:
    model = AutoModelForCausalLM.from_pretrained(root + "/" + name, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(ids).logits.contiguous()
        generated = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    tensors = {"logits": logits, "generated": generated}
    tensors.update({"state." + k: v.contiguous() for k, v in model.state_dict().items()})
    save_file(tensors, root + "/" + name + "_remote.safetensors")
    info = {"module": type(model).__module__}
    if hasattr(model, "sparsity_step"):  # NeuroTrails' dynamic-sparsity step and callback ship with it
        info["callbacks"] = [type(cb).__module__ for cb in model.training_callbacks()]
        info["densities"] = model.layer_densities()
    report[name] = info
try:
    import hf_plugins  # noqa: F401
    report["hf_plugins"] = "importable"
except ModuleNotFoundError:
    report["hf_plugins"] = "hidden"
print(json.dumps(report))
"""


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_code_is_self_contained(name, tmp_path):
    """Every saved .py file imports only installed libraries (never hf_plugins) and files saved next to it, as
    transformers' `check_imports` and `get_relative_import_files` read them."""
    config, files = CASES[name]
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    saved = {f for f in os.listdir(tmp_path) if f.endswith(".py")}
    assert files <= saved
    for file in saved:
        libraries = set(get_imports(tmp_path / file)) - sys.stdlib_module_names
        assert libraries <= {"torch", "transformers", "huggingface_hub"}, (file, libraries)
        assert {f"{m}.py" for m in get_relative_imports(tmp_path / file)} <= saved, file
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {ref.split(".")[0] + ".py" for ref in auto_map.values()} <= saved


@pytest.mark.slow
def test_saved_models_load_with_trust_remote_code_where_hf_plugins_is_not_importable(tmp_path):
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    expected = {}
    for name, (config, files) in CASES.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        if name == "coe":  # a learnable chain scale (up-cycled model) must round-trip too
            model = moe_to_coe(AutoModelForCausalLM.from_config(CoEConfig(**COE, num_iterations=1)).eval())
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.mlp.chain_scale.fill_(0.7)
        model.save_pretrained(tmp_path / name)
        saved = set(os.listdir(tmp_path / name))
        assert files <= saved, f"{name}: {sorted(files - saved)} not saved"
        auto_map = json.loads((tmp_path / name / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", "AutoModelForCausalLM"}
        with torch.no_grad():
            expected[name] = {
                "logits": model(ids).logits,
                "generated": model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0),
                "state": model.state_dict(),
            }

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(LOAD_WITHOUT_HF_PLUGINS))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), ",".join(CASES)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["hf_plugins"] == "hidden"
    for name, want in expected.items():
        got = load_file(tmp_path / f"{name}_remote.safetensors")
        assert report[name]["module"].startswith("transformers_modules."), report[name]
        torch.testing.assert_close(got["logits"], want["logits"], atol=0, rtol=0)
        assert torch.equal(got["generated"], want["generated"])
        assert {k.removeprefix("state.") for k in got if k.startswith("state.")} == set(want["state"])
        for key, value in want["state"].items():
            assert torch.equal(got["state." + key], value), f"{name}: {key}"
    neurotrails = report["neurotrails"]
    assert all(module.startswith("transformers_modules.") for module in neurotrails["callbacks"])
    assert min(neurotrails["densities"].values()) < 1.0  # masks were loaded, not re-drawn
