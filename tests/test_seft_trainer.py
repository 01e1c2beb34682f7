"""SEFT under the stock Trainer (the sparsity contract after merging, exact resume), saving and loading through every
entry point (PEFT, transformers' load_adapter, a fresh process), and the CLI methods with their baselines."""

import copy

import pytest
import torch
from _seft_util import seft_layers as _layers
from _seft_util import seft_model as _seft
from _seft_util import seft_train as _train
from peft import PeftModel, get_peft_model

import hf_plugins  # noqa: F401  (registers PeftType.SEFT)
from hf_plugins.pruning import prunable_linears, sparsity_report
from hf_plugins.tuners.seft import SeftLayer


# -- the sparsity contract and persistence under the Trainer --------------------------------------------------


def _trainer(pm, calib, out_dir, steps, save_steps=0):
    from transformers import Trainer, TrainingArguments

    from hf_plugins.tuners.seft import SeftCallback

    rows = [{"input_ids": r, "labels": r} for r in calib]
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_steps=100,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    return Trainer(model=pm, args=args, train_dataset=rows, callbacks=[SeftCallback()])


def test_trainer_run_keeps_the_merged_sparsity_and_resumes_exactly(pruned_llama, calib, tmp_path):
    """Sparsity contract: after Trainer training (cycles at steps 2 and 4), merge_and_unload has exactly the pruned
    base's non-zero count in every matrix. Resume: stopping at step 3 (inside a grow window) and resuming gives the
    same adapter as the uninterrupted run; save -> load gives identical logits."""
    kw = {"update_interval": 2, "accumulation_steps": 2}
    full = _trainer(_seft(pruned_llama, **kw), calib, tmp_path / "full", 6)
    full.train()
    torch.manual_seed(0)
    part = _trainer(_seft(pruned_llama, **kw), calib, tmp_path / "part", 6, save_steps=3)
    part.train()
    resumed = _trainer(_seft(pruned_llama, **kw), calib, tmp_path / "part", 6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        if "seft_" in key:
            assert torch.equal(a[key], b[key]), key
    assert sum(m.seft_pruned_indices["default"].numel() for m in _layers(full.model).values()) > 0

    full.model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(copy.deepcopy(pruned_llama), tmp_path / "adapter")
    x = calib[:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, full.model(input_ids=x).logits, atol=0, rtol=0)

    base_zeros = [r["zeros"] for r in sparsity_report(pruned_llama).matrices]
    merged = full.model.merge_and_unload()
    assert [r["zeros"] for r in sparsity_report(merged).matrices] == base_zeros


# -- CLI methods ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    from hf_plugins.cli.main import main

    out = tmp_path_factory.mktemp("pruned")
    assert main(["prune", "--model", "tiny", "--nsamples", "4", "--seqlen", "32", "--output_dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("method", ["seft", "lora_star", "sqft"])
def test_cli_methods_keep_the_base_sparsity(method, pruned_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_plugins.cli.train_job import parse_train_args, run_training

    argv = ["train", "--model", str(pruned_dir), "--method", method, "--max_steps", "3", "--eval_size", "0"]
    argv += ["--train_size", "16", "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path)]
    if method == "seft":
        argv += [
            "--method_args",
            "update_interval=1",
            "--method_args",
            "accumulation_steps=1",
            "--method_args",
            "density=0.05",
        ]
    else:
        argv += ["--method_args", "calib_nsamples=4"] if method == "lora_star" else []
    result = run_training(parse_train_args(argv[1:]))
    model = result["trainer"].model
    base = AutoModelForCausalLM.from_pretrained(pruned_dir)
    base_zeros = [r["zeros"] for r in sparsity_report(base).matrices]
    if method == "seft":
        merged = model.merge_and_unload()
    else:  # the baselines' callbacks merged (SQFT: masked; LoRA*: then Wanda re-pruning) at on_train_end
        assert all(layer.merged for layer in model.modules() if hasattr(layer, "lora_A") and layer.lora_A)
        merged = model.unload()
    # LoRA*: Wanda per row at each matrix's measured ratio; the base was Wanda-pruned per row, so exact.
    assert [r["zeros"] for r in sparsity_report(merged).matrices] == base_zeros


def test_sqft_masked_lora_forward_and_merge_equal_a_dense_reference(pruned_llama, calib):
    """SQFT-like: forward = F.linear(x, W0 + s (BA) ⊙ 1_supp(W0)); the masked merge gives the same weights."""
    from peft import LoraConfig

    from hf_plugins.tuners.seft.baselines import mask_lora_in_training_, sqft_merge_

    pm = get_peft_model(copy.deepcopy(pruned_llama), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    assert mask_lora_in_training_(pm) == 14
    ref = copy.deepcopy(pruned_llama)
    with torch.no_grad():
        for name, lin in prunable_linears(ref).items():
            lora = pm.get_base_model().get_submodule(name)
            delta = lora.lora_B["default"].weight @ lora.lora_A["default"].weight * lora.scaling["default"]
            lin.weight += delta * (lin.weight != 0)
    x = calib[:2]
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=x).logits, ref(input_ids=x).logits, atol=1e-5, rtol=1e-5)
        sqft_merge_(pm)
        torch.testing.assert_close(pm(input_ids=x).logits, ref(input_ids=x).logits, atol=1e-5, rtol=1e-5)
    base_zeros = [r["zeros"] for r in sparsity_report(pruned_llama).matrices]
    assert [r["zeros"] for r in sparsity_report(pm.unload()).matrices] == base_zeros


def test_transformers_load_adapter_loads_a_repruned_adapter_saved_inside_a_grow_window(pruned_llama, calib, tmp_path):
    """transformers' `model.load_adapter(dir)` checks shapes before any load hook, so the variable-length buffers
    (R, the grow window) must be created with their saved lengths: the adapter config records them. A run stopped
    after a cycle (R non-empty) and inside the next grow window loads with identical buffers and logits."""
    pm = _seft(pruned_llama, update_interval=4, accumulation_steps=3)
    _train(pm, calib[:4], 6, total=10)  # cycle after step 3; steps 5.. are the next window
    layers = _layers(pm)
    assert sum(m.seft_pruned_indices["default"].numel() for m in layers.values()) > 0
    assert all(m.seft_grow_candidates["default"].numel() > 0 for m in layers.values())
    pm.save_pretrained(tmp_path)
    loaded = copy.deepcopy(pruned_llama)
    loaded.load_adapter(str(tmp_path))
    got = {n: m for n, m in loaded.named_modules() if isinstance(m, SeftLayer)}
    assert got.keys() == layers.keys()
    for name, layer in layers.items():
        for attr in ("seft_indices", "seft_values", "seft_pruned_indices", "seft_grow_candidates", "seft_grow_scores"):
            assert torch.equal(getattr(got[name], attr)["default"], getattr(layer, attr)["default"]), (name, attr)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=calib[:2]).logits, pm(input_ids=calib[:2]).logits)


def test_a_config_with_recorded_sizes_but_no_loaded_tensors_refuses_to_run(pruned_llama, calib, tmp_path):
    """The recorded sizes pre-allocate placeholder buffers; a model created from such a config without loading the
    adapter's tensors must not run on the placeholders (they would zero base weights)."""
    from peft import PeftConfig

    pm = _seft(pruned_llama)
    _train(pm, calib[:4], 3, total=3)
    pm.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert config.pruned_sizes
    fresh = get_peft_model(copy.deepcopy(pruned_llama), config)
    with pytest.raises(ValueError, match="never loaded"):
        fresh(input_ids=calib[:1])


def test_a_fresh_process_loads_a_saved_seft_adapter(pruned_llama, calib, tmp_path):
    """Registration happens on `import hf_plugins`; a new interpreter must load the adapter with it."""
    import subprocess
    import sys

    pm = _seft(pruned_llama)
    _train(pm, calib[:4], 3, total=3)
    pm.save_pretrained(tmp_path / "adapter")
    pruned_llama.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        torch.save(pm(input_ids=calib[:1]).logits, tmp_path / "logits.pt")
    code = (
        "import torch, hf_plugins; from peft import PeftModel; from transformers import AutoModelForCausalLM;"
        f"m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{tmp_path / 'base'}'), '{tmp_path / 'adapter'}');"
        f"ids = torch.tensor({calib[:1].tolist()});"
        f"assert torch.equal(m(input_ids=ids).logits, torch.load('{tmp_path / 'logits.pt'}')); print('ok', m.peft_type)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok PeftType.SEFT" in out.stdout
