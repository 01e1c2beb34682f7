"""SEFT tuner: sparse-delta forward with re-pruned positions, the drop/grow/re-prune cycle, the sparsity contract,
save/load/resume, and the CLI methods. References are computed another way (dense weights in a plain
transformers model, explicit top-k over dense gradients)."""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model

import hf_plugins  # noqa: F401  (registers PeftType.SEFT)
from hf_plugins import SeftConfig
from hf_plugins.pruning import (
    check_n_m,
    prunable_linears,
    prune_model,
    sparsity_report,
)
from hf_plugins.testing import tiny_model
from hf_plugins.tuners.seft import SeftLayer


@pytest.fixture(scope="module")
def pruned_llama_2_4(calib):
    model = tiny_model("llama")
    prune_model(model, "wanda", n_m="2:4", calibration=calib)
    return model


def _seft(model, **kw):
    kw = {"density": 0.05, "update_interval": 2, "accumulation_steps": 1, "task_type": "CAUSAL_LM", **kw}
    return get_peft_model(copy.deepcopy(model), SeftConfig(**kw))


def _layers(pm):
    return {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if isinstance(m, SeftLayer)}


def _train(pm, batch, steps, lr=1e-2, total=None, check=None):
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        pm.seft_prepare_step(step, total)
        pm(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        out = pm.seft_after_optimizer_step(opt, step, total)
        if out is not None and check is not None:
            check(pm, out)
        opt.zero_grad()
    return opt


def _effective_model(pm, base):
    """A plain transformers model holding W_eff = W0 ⊙ (1 - 1_R) + scatter(A, δ), built from the buffers."""
    ref = copy.deepcopy(base)
    ref_lin = prunable_linears(ref)
    with torch.no_grad():
        for name, layer in _layers(pm).items():
            w = ref_lin[name].weight.view(-1)
            w[layer.seft_pruned_indices["default"].long()] = 0
            w[layer.seft_indices["default"].long()] += layer.seft_values["default"].detach()
    return ref


def _dense_grads(ref, batch):
    ref.zero_grad()
    ref(input_ids=batch, labels=batch).loss.backward()
    return {n: lin.weight.grad.detach().clone() for n, lin in prunable_linears(ref).items()}


# -- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"density": 0.0}, "`density`"),
        ({"r": 0}, "`r`"),
        ({"update_interval": 0}, "`update_interval`"),
        ({"update_interval": 4, "accumulation_steps": 5}, "`accumulation_steps`"),
        ({"drop_fraction": 1.5}, "`drop_fraction`"),
        ({"drop_schedule": "step"}, "`drop_schedule`"),
        ({"grow_criterion": "hessian"}, "`grow_criterion`"),
        ({"reprune_criterion": "random"}, "`reprune_criterion`"),
        ({"target_sparsity": 1.0}, "`target_sparsity`"),
        ({"n_m": "2:4", "target_sparsity": 0.7}, "contradicts"),
        ({"n_m": "4:4"}, "0 < N < M"),
    ],
)
def test_bad_configs_raise_errors_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SeftConfig(**kwargs)


def test_unreachable_targets_raise_clear_errors(pruned_llama, pruned_llama_2_4):
    with pytest.raises(ValueError, match="unreachable.*never lower"):
        _seft(pruned_llama, target_sparsity=0.3)
    with pytest.raises(ValueError, match="budget k=.*unreachable"):
        _seft(pruned_llama, density=0.6)
    with pytest.raises(ValueError, match="divisible by 5"):
        _seft(pruned_llama_2_4, n_m="2:5")
    with pytest.raises(ValueError, match="does not follow the 2:4 pattern"):
        _seft(tiny_model("llama"), n_m="2:4")


# -- forward, merge, adapters ---------------------------------------------------------------------------------


def test_forward_and_merge_equal_a_dense_reference_with_repruned_positions(pruned_llama, calib):
    """After a few cycles (R non-empty, some deltas at pruned positions), logits equal a plain transformers model
    holding W0 ⊙ (1 - 1_R) + scatter(A, δ), and merge_and_unload gives the same weights bit for bit."""
    pm = _seft(pruned_llama)
    _train(pm, calib[:4], 6)
    layers = _layers(pm)
    assert sum(m.seft_pruned_indices["default"].numel() for m in layers.values()) > 0
    ref = _effective_model(pm, pruned_llama)
    x = calib[4:6]
    with torch.no_grad():
        ours = pm(input_ids=x).logits
        torch.testing.assert_close(ours, ref(input_ids=x).logits, atol=1e-5, rtol=1e-5)
        with pm.disable_adapter():
            torch.testing.assert_close(pm(input_ids=x).logits, pruned_llama(input_ids=x).logits, atol=0, rtol=0)
    merged = pm.merge_and_unload()
    for (name, a), b in zip(prunable_linears(merged).items(), prunable_linears(ref).values()):
        assert torch.equal(a.weight, b.weight), name


def test_deltas_grown_on_repruned_positions_see_a_zero_base(pruned_llama, calib):
    """A ∩ R non-empty (a delta grown where re-pruning removed W0): W_eff there is δ alone. Logits, the values'
    gradient and the merged weights equal a dense plain-model reference holding W0 ⊙ (1 - 1_R) + scatter(A, δ)."""
    pm = _seft(pruned_llama)
    layers = _layers(pm)
    name = "model.layers.0.mlp.down_proj"
    layer = layers[name]
    w0 = layer.get_base_layer().weight.detach().view(-1)
    A = layer.seft_indices["default"].long()
    support = torch.nonzero(w0 != 0).view(-1)
    outside = support[~torch.isin(support, A)]
    R = torch.sort(torch.cat([A[:5], outside[:20]]))[0]  # 5 deltas on re-pruned positions, 20 plain re-pruned
    layer.seft_pruned_indices["default"] = R.to(torch.int32)
    with torch.no_grad():
        layer.seft_values["default"].copy_(torch.randn(A.numel(), generator=torch.Generator().manual_seed(0)) * 0.1)
    assert layer._seft_plan("default")[1] is not None  # the keep mask is in use
    ref = _effective_model(pm, pruned_llama)
    x = calib[4:6]
    torch.testing.assert_close(pm(input_ids=x).logits, ref(input_ids=x).logits, atol=1e-5, rtol=1e-5)
    pm(input_ids=x, labels=x).loss.backward()
    ref(input_ids=x, labels=x).loss.backward()
    want = prunable_linears(ref)[name].weight.grad.view(-1)[A]
    torch.testing.assert_close(layer.seft_values["default"].grad, want, atol=1e-6, rtol=1e-5)
    merged = pm.merge_and_unload()
    assert torch.equal(prunable_linears(merged)[name].weight, prunable_linears(ref)[name].weight)


def test_bf16_forward_equals_the_merged_weight_bit_for_bit(pruned_llama, calib):
    pm = _seft(pruned_llama)
    _train(pm, calib[:4], 4)
    pm = pm.to(torch.bfloat16)
    x = calib[4:6]
    with torch.no_grad():
        y = pm(input_ids=x).logits
        pm.merge_adapter()
        assert torch.equal(pm(input_ids=x).logits, y)
        pm.unmerge_adapter()
        assert torch.equal(pm(input_ids=x).logits, y)


def test_a_second_adapter_and_set_adapter(pruned_llama, calib):
    pm = _seft(pruned_llama)
    _train(pm, calib[:4], 3)
    pm.add_adapter("other", SeftConfig(density=0.05, init_seed=1, task_type="CAUSAL_LM"))
    x = calib[4:5]
    with torch.no_grad():
        y_default = pm(input_ids=x).logits
        pm.set_adapter("other")
        torch.testing.assert_close(pm(input_ids=x).logits, pruned_llama(input_ids=x).logits)  # untrained: δ = 0
        pm.set_adapter("default")
        torch.testing.assert_close(pm(input_ids=x).logits, y_default)


# -- the cycle ------------------------------------------------------------------------------------------------


def test_grow_picks_the_largest_gradient_positions_and_reprune_the_lowest_sensitivity(pruned_llama, calib):
    """First cycle (p = 1): the new A is the top-k |dL/dW| outside the old A (dense gradient of a plain model with
    the same weights); the re-pruned set R is the |S| - Z lowest |W0 · g| of supp(W0) \\ A_new."""
    pm = _seft(pruned_llama, update_interval=1, grow_criterion="instant_gradient")
    batch = calib[:4]
    old = {n: m.seft_indices["default"].long().clone() for n, m in _layers(pm).items()}
    grads = _dense_grads(_effective_model(pm, pruned_llama), batch)
    pm.seft_prepare_step(0)
    pm(input_ids=batch, labels=batch).loss.backward()
    pm.seft_evolve(None, 0)
    base = prunable_linears(pruned_llama)
    for name, layer in _layers(pm).items():
        g = grads[name].view(-1).abs()
        g[old[name]] = -1
        k = old[name].numel()
        expected = set(torch.topk(g, k).indices.tolist())
        new = set(layer.seft_indices["default"].long().tolist())
        assert new == expected, name
        w0 = base[name].weight.view(-1)
        eligible = (w0 != 0).clone()
        eligible[list(new)] = False
        excess = len(new - set(torch.nonzero(w0 != 0).view(-1).tolist()))
        sens = (w0 * grads[name].view(-1)).abs().masked_fill(~eligible, float("inf"))
        expected_r = set(torch.topk(sens, excess, largest=False).indices.tolist())
        assert set(layer.seft_pruned_indices["default"].tolist()) == expected_r, name
        assert layer.support_size("default") == int(layer.seft_target_nnz["default"])


def test_magnitude_reprune_ablation_removes_the_smallest_base_weights(pruned_llama, calib):
    pm = _seft(pruned_llama, update_interval=1, grow_criterion="instant_gradient", reprune_criterion="magnitude")
    pm.seft_prepare_step(0)
    pm(input_ids=calib[:4], labels=calib[:4]).loss.backward()
    pm.seft_evolve(None, 0)
    for name, layer in _layers(pm).items():
        w0 = prunable_linears(pruned_llama)[name].weight.view(-1)
        new = layer.seft_indices["default"].long()
        eligible = (w0 != 0).clone()
        eligible[new] = False
        excess = int((w0[new] == 0).sum())
        expected = torch.topk(w0.abs().masked_fill(~eligible, float("inf")), excess, largest=False).indices
        assert set(layer.seft_pruned_indices["default"].tolist()) == set(expected.tolist()), name


def test_every_cycle_keeps_the_support_at_the_target_and_keeps_adam_moments(pruned_llama, calib):
    pm = _seft(pruned_llama, update_interval=2, accumulation_steps=2, drop_fraction=0.5, drop_schedule="constant")
    layers = _layers(pm)
    seen = []

    def check(model, out):
        seen.append(out)
        for name, layer in layers.items():
            assert layer.support_size("default") == int(layer.seft_target_nnz["default"]), name

    opt = _train(pm, calib[:4], 4, check=check)
    assert len(seen) == 2 and seen[1]["dropped"] > 0 and seen[0]["repruned"] > 0
    # Third cycle by hand: surviving entries keep exp_avg, dropped are the smallest |δ|, new ones start at 0.
    layer = layers["model.layers.0.mlp.down_proj"]
    values = layer.seft_values["default"]
    before_idx = layer.seft_indices["default"].long().clone()
    for step in (4, 5):  # step 4 opens the grow window, step 5 ends it with a cycle
        pm.seft_prepare_step(step)
        pm(input_ids=calib[:4], labels=calib[:4]).loss.backward()
        opt.step()
        if step == 4:
            opt.zero_grad()
    before_val, before_m = values.detach().clone(), opt.state[values]["exp_avg"].clone()
    pm.seft_evolve(opt, 5)
    after_idx = layer.seft_indices["default"].long()
    n_drop = round(0.5 * before_idx.numel())
    dropped = set(before_idx[torch.argsort(before_val.abs(), stable=True)[:n_drop]].tolist())
    assert set(before_idx.tolist()) - set(after_idx.tolist()) == dropped
    old_pos = {int(p): i for i, p in enumerate(before_idx)}
    for j, p in enumerate(after_idx.tolist()):
        if p in old_pos:
            assert values[j] == before_val[old_pos[p]] and opt.state[values]["exp_avg"][j] == before_m[old_pos[p]]
        else:
            assert values[j] == 0 and opt.state[values]["exp_avg"][j] == 0


def test_resurrection_off_and_n_m_grow_only_inside_the_support(pruned_llama, pruned_llama_2_4, calib):
    for base, kw in ((pruned_llama, {"resurrection": False}), (pruned_llama_2_4, {"n_m": "2:4"})):
        pm = _seft(base, **kw)
        _train(pm, calib[:4], 6)
        for name, layer in _layers(pm).items():
            w0 = prunable_linears(base)[name].weight.view(-1)
            assert (w0[layer.seft_indices["default"].long()] != 0).all(), name
            assert layer.seft_pruned_indices["default"].numel() == 0
        merged = pm.merge_and_unload()
        if "n_m" in kw:
            for name, lin in prunable_linears(merged).items():
                assert torch.equal(lin.weight == 0, prunable_linears(base)[name].weight == 0), name
                assert check_n_m(lin.weight, 2, 4)


def test_no_cycle_on_the_last_step_and_static_mode():
    cfg_model = get_peft_model(tiny_model("llama"), SeftConfig(update_interval=5, task_type="CAUSAL_LM"))
    assert [s for s in range(20) if cfg_model.seft_is_cycle_step(s, 20)] == [4, 9, 14]
    static = get_peft_model(tiny_model("llama"), SeftConfig(update_interval=None, task_type="CAUSAL_LM"))
    assert not any(static.seft_is_cycle_step(s, 20) for s in range(20))


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


def test_target_sparsity_above_the_base_is_reached_at_the_first_cycle(pruned_llama, calib):
    pm = _seft(pruned_llama, target_sparsity=0.6)
    _train(pm, calib[:4], 3, total=3)  # cycle after step 2 of 3; step 3 updates the grown deltas
    for name, lin in prunable_linears(pm.merge_and_unload()).items():
        assert int((lin.weight != 0).sum()) == lin.weight.numel() - int(lin.weight.numel() * 0.6), name


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


@pytest.mark.parametrize(
    "kw",
    [
        {"drop_fraction": 0.5, "drop_schedule": "constant"},
        {"drop_fraction": 0.3, "target_sparsity": 0.6, "grow_criterion": "instant_gradient"},
        {"drop_fraction": 0.5, "resurrection": False},
        {"drop_fraction": 0.5, "reprune_criterion": "magnitude"},
    ],
)
def test_the_batched_cycle_equals_the_per_layer_reference(pruned_llama, calib, kw):
    """`seft_evolve` runs all layers at once (batched.py); the per-layer loop of evolution.py is the reference: after
    every one of four cycles both hold the same positions, values, re-pruned set R and Adam moments."""
    runs = []
    for batched in (True, False):
        pm = _seft(pruned_llama, update_interval=2, accumulation_steps=2, **kw)
        pm.base_model.seft_batched_cycle = batched
        snaps = []
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
        for step in range(8):
            pm.seft_prepare_step(step, 100)
            pm(input_ids=calib[:4], labels=calib[:4]).loss.backward()
            opt.step()
            out = pm.seft_after_optimizer_step(opt, step, 100)
            if out is not None:
                state = {}
                for name, layer in _layers(pm).items():
                    v = layer.seft_values["default"]
                    state[name] = (
                        layer.seft_indices["default"].clone(),
                        v.detach().clone(),
                        layer.seft_pruned_indices["default"].clone(),
                        opt.state[v]["exp_avg"].clone(),
                        opt.state[v]["exp_avg_sq"].clone(),
                    )
                snaps.append((out, state))
            opt.zero_grad()
        runs.append(snaps)
    assert len(runs[0]) == 4
    for (out_b, st_b), (out_r, st_r) in zip(*runs):
        assert out_b == out_r
        for name in st_r:
            for got, want in zip(st_b[name], st_r[name]):
                assert torch.equal(got, want), name
    assert any(out["repruned"] for out, _ in runs[0]) or kw.get("resurrection") is False
    if kw.get("drop_schedule") == "constant":  # dropped resurrected deltas: the batched restore path ran
        assert any(out["restored"] for out, _ in runs[0])


@pytest.mark.gpu
def test_cuda_bf16_forward_with_deltas_on_repruned_positions_equals_the_dense_reference(pruned_llama, calib):
    """On the GPU (Triton zero-and-add kernel), bf16: logits and the values' gradient equal a plain model holding
    W0 ⊙ (1 - 1_R) + scatter(A, δ), with some deltas on re-pruned positions."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    base = copy.deepcopy(pruned_llama).to("cuda", torch.bfloat16)
    pm = _seft(base)
    for layer in _layers(pm).values():
        w0 = layer.get_base_layer().weight.detach().view(-1)
        A = layer.seft_indices["default"].long()
        support = torch.nonzero(w0 != 0).view(-1)
        outside = support[~torch.isin(support, A)]
        layer.seft_pruned_indices["default"] = torch.sort(torch.cat([A[:3], outside[:10]]))[0].to(torch.int32)
        with torch.no_grad():
            layer.seft_values["default"].copy_(torch.randn(A.numel(), device="cuda") * 0.05)
    ref = _effective_model(pm, base)
    x = calib[4:6].cuda()
    assert torch.equal(pm(input_ids=x).logits, ref(input_ids=x).logits)
    pm(input_ids=x, labels=x).loss.backward()
    ref(input_ids=x, labels=x).loss.backward()
    for name, layer in _layers(pm).items():
        want = prunable_linears(ref)[name].weight.grad.view(-1)[layer.seft_indices["default"].long()].float()
        torch.testing.assert_close(layer.seft_values["default"].grad, want, atol=1e-2, rtol=1e-2)
