"""SEFT tuner: sparse-delta forward with re-pruned positions, the drop/grow/re-prune cycle and the sparsity contract
in custom loops (the Trainer, saving, loading and the CLI: test_seft_trainer.py). References are computed another
way (dense weights in a plain transformers model, explicit top-k over dense gradients)."""

import copy

import pytest
import torch
from _seft_util import seft_layers as _layers
from _seft_util import seft_model as _seft
from _seft_util import seft_train as _train

import hf_plugins  # noqa: F401  (registers PeftType.SEFT)
from hf_plugins import SeftConfig
from hf_plugins.pruning import (
    check_n_m,
    prunable_linears,
    prune_model,
    sparsity_report,
)
from hf_plugins.testing import tiny_model


@pytest.fixture(scope="module")
def pruned_llama_2_4(calib):
    model = tiny_model("llama")
    prune_model(model, "wanda", n_m="2:4", calibration=calib)
    return model


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
        ({"n_m": "5:4"}, "0 < N < M"),
        ({"r": 2.5}, "`r`"),
        ({"r": True}, "`r`"),
        ({"update_interval": 2.5}, "`update_interval`"),
        ({"accumulation_steps": 1.5}, "`accumulation_steps`"),
        ({"total_steps": 2.5}, "`total_steps`"),
        ({"init_seed": 0.5}, "`init_seed`"),
        ({"density": "0.1"}, "`density`"),
        ({"target_sparsity": -0.1}, "`target_sparsity`"),
        ({"drop_fraction": float("nan")}, "`drop_fraction`"),
        ({"resurrection": "yes"}, "`resurrection`"),
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
    pm.seft_prepare_step(0, 100)
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
    pm.seft_prepare_step(0, 100)
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
        pm.seft_prepare_step(step, 100)
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


def test_no_cycle_on_the_last_step_and_static_mode(pruned_llama):
    cfg_model = _seft(pruned_llama, update_interval=5)
    assert [s for s in range(20) if cfg_model.seft_is_cycle_step(s, 20)] == [4, 9, 14]
    static = _seft(pruned_llama, update_interval=None)
    assert not any(static.seft_is_cycle_step(s, 20) for s in range(20))


def test_a_custom_loop_must_say_how_long_it_runs_so_no_cycle_runs_on_the_last_step(pruned_llama, calib):
    """Without the number of optimizer steps, the last step of a custom loop could be a cycle: it would drop a share
    of the trained deltas for new ones at exactly 0 and leave matrices below the pruned base's non-zero count. SEFT
    refuses to run a cycle schedule without it; given once in the config, a loop whose last step falls on a cycle
    step runs no cycle there and merges at exactly the base's non-zero counts."""
    pm = _seft(pruned_llama, update_interval=2)
    with pytest.raises(ValueError, match="total_steps"):
        _train(pm, calib[:4], 2, total=None)
    pm = _seft(pruned_llama, update_interval=2, total_steps=4)
    _train(pm, calib[:4], 4, total=None)  # cycle steps 1 and 3; step 3 is the last one
    assert {int(m.seft_cycles["default"]) for m in _layers(pm).values()} == {1}
    base_nnz = [r["numel"] - r["zeros"] for r in sparsity_report(pruned_llama).matrices]
    merged = pm.merge_and_unload()
    assert [r["numel"] - r["zeros"] for r in sparsity_report(merged).matrices] == base_nnz


def test_a_target_sparsity_no_cycle_can_reach_is_refused_or_warned(pruned_llama, calib):
    """Extra pruning to `target_sparsity` happens at the first cycle. With no cycle schedule, a run declared
    shorter than one interval, or no re-balancing (resurrection off), construction raises; a run that stopped
    before its first cycle warns at merge instead of silently merging at the base's sparsity."""
    for kw in ({"update_interval": None}, {"update_interval": 20, "total_steps": 20}, {"resurrection": False}):
        with pytest.raises(ValueError, match="target_sparsity"):
            _seft(pruned_llama, target_sparsity=0.7, **kw)
    pm = _seft(pruned_llama, target_sparsity=0.7, update_interval=20, accumulation_steps=5)
    _train(pm, calib[:4], 3, total=100)  # stopped before the first cycle
    with pytest.warns(UserWarning, match="more non-zeros than `target_sparsity` allows at merge"):
        merged = pm.merge_and_unload()
    assert sparsity_report(merged).overall == pytest.approx(sparsity_report(pruned_llama).overall)


def test_target_sparsity_above_the_base_is_reached_at_the_first_cycle(pruned_llama, calib):
    pm = _seft(pruned_llama, target_sparsity=0.6)
    _train(pm, calib[:4], 3, total=3)  # cycle after step 2 of 3; step 3 updates the grown deltas
    for name, lin in prunable_linears(pm.merge_and_unload()).items():
        assert int((lin.weight != 0).sum()) == lin.weight.numel() - int(lin.weight.numel() * 0.6), name


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
