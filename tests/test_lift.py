"""LIFT as a PEFT tuner: selection, gradients, refresh, merge, save/load, configs (tiny models, CPU).

Each test compares against a reference computed another way: an fp64 SVD top-k, the dense gradient of a
merged model gathered at the indices, an explicit remap loop, transformers' own model with merged weights,
PEFT LoRA's trainable-parameter count.
"""

import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import hf_plugins  # noqa: F401  (registers LIFT)
from hf_plugins import LiftConfig
from hf_plugins.testing import tiny_llama, tiny_model
from hf_plugins.tuners.lift import LiftLayer, low_rank_approximation, select_principal_indices
from hf_plugins.tuners.lift import selection as selection_module


IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7], [2, 7, 18, 28, 18, 28, 4, 5, 9, 0]])


def _lift(base=None, **kw):
    kw.setdefault("r", 2)
    kw.setdefault("task_type", "CAUSAL_LM")
    return get_peft_model(base if base is not None else tiny_llama(), LiftConfig(**kw))


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LiftLayer)]


def _train(model, steps=3, lr=1e-2, refresh_every=None, seed=0):
    """A few AdamW steps on random tokens; returns the optimizer."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(1, steps + 1):
        ids = torch.randint(0, 60, (2, 12))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if refresh_every and step % refresh_every == 0:
            model.refresh_masks(opt)
    model.eval()
    return opt


# ------------------------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------------------------


def _reference_topk(w, q, k, largest=True):
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    approx = (u[:, :q] * s[:q]) @ vh[:q]
    return set(torch.topk(approx.abs().flatten(), k, largest=largest).indices.tolist())


@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])
@pytest.mark.parametrize("method", ["svd", "eigh"])
def test_selection_takes_the_largest_entries_of_the_truncated_svd(shape, method):
    """The official LIFT configs pass `mask_type=lift_sparse`, from which the code derives `largest=False` and
    trains the smallest entries. Guards that our selection equals top-k with largest=True of the exact rank-q
    SVD (fp64 reference), and is far from the smallest-entries mask."""
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64)
    q, k = 3, 40
    got = set(select_principal_indices(w, k, q, method).tolist())
    assert got == _reference_topk(w, q, k)
    assert len(got & _reference_topk(w, q, k, largest=False)) == 0


def test_eigh_selection_overlaps_exact_svd_in_fp32():
    """fp32 Gram eigenvectors vs the fp64 SVD on flat-spectrum random matrices: overlap >= 99% (measured 100%)."""
    torch.manual_seed(1)
    for shape in [(96, 64), (64, 96)]:
        w = torch.randn(*shape) * 0.02
        k = 4 * sum(shape)
        got = set(select_principal_indices(w, k, 4, "eigh").tolist())
        assert len(got & _reference_topk(w, 4, k)) / k >= 0.99


def test_randomized_selection_agrees_on_decaying_spectra():
    """Randomized subspace iteration (oversample 16, niter 4) recovers >= 99% of the exact mask when the singular
    values decay past q (as in trained weights with a few dominant directions)."""
    torch.manual_seed(2)
    m, n = 80, 60
    u, _ = torch.linalg.qr(torch.randn(m, n))
    v, _ = torch.linalg.qr(torch.randn(n, n))
    s = torch.logspace(0, -3, n)
    w = (u * s) @ v.T
    k, q = 4 * (m + n), 4
    got = set(select_principal_indices(w, k, q, "randomized").tolist())
    assert len(got & _reference_topk(w, q, k)) / k >= 0.99


def test_low_rank_approximation_methods_agree():
    torch.manual_seed(3)
    w = torch.randn(3, 20, 12, dtype=torch.float64)  # batched
    ref = low_rank_approximation(w, 5, "svd")
    torch.testing.assert_close(low_rank_approximation(w, 5, "eigh"), ref, atol=1e-10, rtol=1e-10)
    assert torch.equal(low_rank_approximation(w, None), w)
    assert torch.equal(low_rank_approximation(w, 12), w)  # q >= min(m, n): the matrix itself


def test_budget_matches_lora_and_default_targets():
    """k = r (m + n) per matrix: LIFT r=2 trains as many entries as LoRA r=2 on the same (default) modules."""
    lift = _lift(r=2)
    lora = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    n_lift = sum(p.numel() for p in lift.parameters() if p.requires_grad)
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert n_lift == n_lora
    names = {n.rsplit(".", 1)[-1] for n, _ in _layers(lift)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    cfg = LiftConfig(density=0.1)
    assert cfg.budget(64, 32) == (205, 2)  # round(0.1 * 2048), q = round(205 / 96)
    assert LiftConfig(r=2, lra_rank="full").budget(8, 8) == (32, None)
    assert LiftConfig(r=100).budget(8, 8) == (64, None)  # capped at m * n; q >= min(m, n): plain magnitude


def test_exclude_modules_and_modules_to_save(tmp_path):
    """PEFT's generic options work: excluded projections stay plain, `modules_to_save` trains and saves lm_head."""
    model = _lift(exclude_modules=["down_proj"], modules_to_save=["lm_head"])
    assert {n.rsplit(".", 1)[-1] for n, _ in _layers(model)} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
    }
    assert any("lm_head" in n and p.requires_grad for n, p in model.named_parameters())
    _train(model, steps=1)
    expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    assert torch.equal(PeftModel.from_pretrained(tiny_llama(), tmp_path)(input_ids=IDS).logits, expected)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_default_targets_for_other_families(family):
    model = _lift(tiny_model(family))
    assert len(_layers(model)) == 7 * 2


@pytest.mark.parametrize(
    "family, overrides",
    [("lns_llama", {}), ("lns_qwen2", {}), ("coe", {}), ("neurotrails", {"blocks_in_head": 1})],
)
def test_default_targets_for_hf_plugins_models(family, overrides):
    """`target_module_mapping` covers our own model types (no `target_modules` needed); outputs start unchanged."""
    base = tiny_model(family, **overrides)
    expected = base(input_ids=IDS).logits
    model = _lift(base)
    names = {n.rsplit(".", 1)[-1] for n, _ in _layers(model)}
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= names
    model.initialize_masks()
    torch.testing.assert_close(model(input_ids=IDS).logits, expected, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Gradients, forward equivalences
# ------------------------------------------------------------------------------------------------------------


def _merged_reference(peft_model):
    """A plain transformers model whose weights are W0 + delta, built from the state dicts (not via merge)."""
    ref = tiny_llama()
    sd = ref.state_dict()
    for name, layer in _layers(peft_model):
        key = name.removeprefix("base_model.model.") + ".weight"
        sd[key] = layer.get_base_layer().weight.detach() + layer.get_delta_weight("default")
    ref.load_state_dict(sd)
    return ref


def test_value_grads_equal_the_dense_gradient_gathered_at_the_indices():
    model = _lift(init_weights=False)
    model.initialize_masks()
    ref = _merged_reference(model)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    ref(input_ids=IDS, labels=IDS).loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, layer in _layers(model):
        dense = ref_params[name.removeprefix("base_model.model.") + ".weight"].grad
        got = layer.lift_values["default"].grad
        want = dense.reshape(-1)[layer.lift_indices["default"].long()]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert layer.get_base_layer().weight.grad is None


def test_forward_equals_transformers_with_merged_weights_and_disable_gives_base():
    base_logits = tiny_llama()(input_ids=IDS).logits
    model = _lift(init_weights=False)
    _train(model, steps=2, refresh_every=1)  # residual entries exist now
    assert any(layer.lift_residual_indices["default"].numel() for _, layer in _layers(model))
    out = model(input_ids=IDS).logits
    torch.testing.assert_close(out, _merged_reference(model)(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        assert torch.equal(model(input_ids=IDS).logits, base_logits)
    model.merge_adapter()
    torch.testing.assert_close(model(input_ids=IDS).logits, out, atol=1e-6, rtol=1e-6)
    model.unmerge_adapter()
    assert torch.equal(model(input_ids=IDS).logits, out)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, LiftLayer) for m in merged.modules())
    torch.testing.assert_close(merged(input_ids=IDS).logits, out, atol=1e-6, rtol=1e-6)


def test_bf16_base_merged_equals_unmerged_bit_for_bit():
    """Forward forms W0 + v with one rounding per entry, exactly like merge: identical bf16 logits."""
    model = _lift(tiny_llama(dtype=torch.bfloat16), init_weights=False)
    model.initialize_masks()
    layer = _layers(model)[0][1]
    assert layer.lift_values["default"].dtype == torch.float32  # PEFT's adapter autocast
    assert layer.lift_indices["default"].dtype == torch.int32
    out = model(input_ids=IDS).logits
    model.merge_adapter()
    assert torch.equal(model(input_ids=IDS).logits, out)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = _lift(init_weights=False)
        model.initialize_masks()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads.append(torch.cat([layer.lift_values["default"].grad for _, layer in _layers(model)]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)


def _saved_activation_bytes(model):
    """Bytes saved for backward that are not parameters or buffers of the model (nor its effective-weight cache,
    persistent model state whose slices backward reads)."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    cache = getattr(model.base_model, "weight_cache", None)
    total = []

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if cache is not None and cache.buffer is not None and ptr == cache.buffer.untyped_storage().data_ptr():
            return t
        if ptr not in own:
            total.append(t.numel() * t.element_size())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=IDS, labels=IDS)
    return sum(total)


@pytest.mark.parametrize("cache", [True, False])
def test_activation_memory_is_no_larger_than_loras(cache):
    """Nothing dense per weight is saved for backward: LIFT saves no more than LoRA at the same budget (the
    naive scatter-into-weight implementation saves about one copy of every adapted weight). The effective-weight
    cache is one persistent copy of the adapted weights, not activation memory."""
    lift = _lift(r=2, cache_effective_weight=cache)
    lift.initialize_masks()
    lora = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert _saved_activation_bytes(lift) <= _saved_activation_bytes(lora)
    adapted = sum(layer.weight_numel for _, layer in _layers(lift)) * 4  # fp32 tiny model
    assert lift.base_model.weight_cache.nbytes == (adapted if cache else 0)


# ------------------------------------------------------------------------------------------------------------
# Refresh
# ------------------------------------------------------------------------------------------------------------


def test_keep_refresh_leaves_outputs_unchanged_and_remaps_adam_state_like_a_reference():
    model = _lift(update_interval=2)
    opt = _train(model, steps=2)
    before_logits = model(input_ids=IDS).logits
    inner = opt.state
    before = {}
    for _, layer in _layers(model):
        p = layer.lift_values["default"]
        before[id(layer)] = (
            layer.lift_indices["default"].tolist(),
            p.detach().clone(),
            inner[p]["exp_avg"].clone(),
            inner[p]["exp_avg_sq"].clone(),
            inner[p]["step"].clone(),
        )
    stats = model.refresh_masks(opt)
    assert stats["matrices"] == 14 and stats["kept_fraction"] < 1.0
    torch.testing.assert_close(model(input_ids=IDS).logits, before_logits, atol=0, rtol=0)
    for _, layer in _layers(model):
        old_idx, old_val, old_m, old_v, old_step = before[id(layer)]
        pos = {p: i for i, p in enumerate(old_idx)}
        p = layer.lift_values["default"]
        res = dict(
            zip(layer.lift_residual_indices["default"].tolist(), layer.lift_residual_values["default"].tolist())
        )
        for j, new_pos in enumerate(layer.lift_indices["default"].tolist()):
            if new_pos in pos:
                i = pos[new_pos]
                assert (p[j], inner[p]["exp_avg"][j], inner[p]["exp_avg_sq"][j]) == (old_val[i], old_m[i], old_v[i])
            else:
                assert inner[p]["exp_avg"][j] == 0 and inner[p]["exp_avg_sq"][j] == 0 and p[j] == 0
        new_set = set(layer.lift_indices["default"].tolist())
        for old_pos, i in pos.items():  # leaving entries carry their change in the residual
            if old_pos not in new_set and old_val[i] != 0:
                assert res[old_pos] == pytest.approx(float(old_val[i]))
        assert not (new_set & set(res))
        assert torch.equal(inner[p]["step"], old_step)


def test_refresh_without_an_optimizer_argument_remaps_the_last_optimizer_seen():
    """Forgetting to pass the optimizer must not leave moments attached to the wrong entries."""
    a, b = _lift(update_interval=2), _lift(update_interval=2)
    opt_a, opt_b = _train(a, steps=2), _train(b, steps=2)
    a.refresh_masks(opt_a)
    b.refresh_masks()
    for (_, la), (_, lb) in zip(_layers(a), _layers(b)):
        pa, pb = la.lift_values["default"], lb.lift_values["default"]
        assert torch.equal(opt_a.state[pa]["exp_avg"], opt_b.state[pb]["exp_avg"])


def test_reset_refresh_drops_leaving_entries():
    with pytest.warns(UserWarning, match="on_leave='reset'"):
        cfg = LiftConfig(r=2, update_interval=2, on_leave="reset", task_type="CAUSAL_LM")
    model = get_peft_model(tiny_llama(), cfg)
    opt = _train(model, steps=2)
    model.refresh_masks(opt)
    ref = _merged_reference(model)
    for _, layer in _layers(model):
        assert layer.lift_residual_indices["default"].numel() == 0
    torch.testing.assert_close(model(input_ids=IDS).logits, ref(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)


def test_lazy_selection_on_first_training_forward_equals_initialize_masks():
    a, b = _lift(), _lift()
    a.initialize_masks()
    b.train()
    b(input_ids=IDS)
    for (_, la), (_, lb) in zip(_layers(a), _layers(b)):
        assert torch.equal(la.lift_indices["default"], lb.lift_indices["default"])
        assert lb.is_ready("default")


def test_warns_once_when_no_refresh_happens():
    model = _lift(update_interval=1)
    with pytest.warns(UserWarning, match="no mask refresh happened"):
        _train(model, steps=3)
    fixed = _lift(update_interval=None)
    _train(fixed, steps=3)  # no warning for a fixed mask (pytest turns hf_plugins warnings into errors)


# ------------------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update_interval", [None, 1])
def test_save_load_gives_identical_logits_without_any_decomposition(update_interval, tmp_path, monkeypatch):
    model = _lift(update_interval=update_interval, init_weights=False)
    _train(model, steps=2, refresh_every=update_interval)
    expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)

    def fail(*a, **k):
        raise AssertionError("loading must not recompute a mask")

    monkeypatch.setattr(selection_module, "low_rank_approximation", fail)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(loaded(input_ids=IDS).logits, expected)
    loaded.train()
    loaded(input_ids=IDS)  # ready flags were loaded: no lazy selection either


def test_adapter_file_is_sparse(tmp_path):
    """8 bytes per trained entry (int32 index + fp32 value) plus, per module, a ready flag and the weight shape."""
    from safetensors.torch import load_file

    model = _lift(r=2)
    model.initialize_masks()
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "adapter_model.safetensors")
    k = sum(v.numel() for key, v in sd.items() if key.endswith("lift_values"))
    assert k == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(v.numel() * v.element_size() for v in sd.values()) == 8 * k + (1 + 16) * len(_layers(model))
    assert all(v.dtype == torch.int32 for key, v in sd.items() if key.endswith("indices"))


def test_loading_onto_a_base_with_other_shapes_raises(tmp_path):
    model = _lift()
    model.initialize_masks()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="different shapes"):
        PeftModel.from_pretrained(tiny_llama(hidden_size=16, intermediate_size=32), tmp_path)


def test_multiple_adapters_and_set_adapter(tmp_path):
    m1, m2 = _lift(init_weights=False), _lift(init_weights=False, selection_seed=7, r=1)
    for m, d in ((m1, "a"), (m2, "b")):
        _train(m, steps=1)
        m.save_pretrained(tmp_path / d)
    expect_a, expect_b = m1(input_ids=IDS).logits, m2(input_ids=IDS).logits
    model = PeftModel.from_pretrained(tiny_llama(), tmp_path / "a", adapter_name="a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    assert torch.equal(model(input_ids=IDS).logits, expect_a)
    model.set_adapter("b")
    assert torch.equal(model(input_ids=IDS).logits, expect_b)


def _adapter_tensors(model, name):
    out = {}
    for key, m in _layers(model):
        for attr in ("lift_values", "lift_indices", "lift_residual_indices", "lift_residual_values", "lift_ready"):
            out[f"{key}.{attr}"] = getattr(m, attr)[name].detach().clone()
    return out


@pytest.mark.parametrize("on_leave", ["keep", "reset"])
def test_a_refresh_touches_only_the_active_trainable_adapter(on_leave):
    """Two named adapters: "first" is trained (with refreshes), then "second" is added, activated and trained with
    `maybe_refresh` after every update. No tensor of the frozen "first" may change and its logits stay bit-identical
    (before, every adapter with an update_interval was re-selected: "reset" changed its logits, "keep" rewrote its
    indices and residuals)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # on_leave="reset" warns that refreshes change the function
        cfg = {"r": 2, "update_interval": 2, "on_leave": on_leave, "task_type": "CAUSAL_LM"}
        model = get_peft_model(tiny_llama(), LiftConfig(**cfg), adapter_name="first")
        _train(model, steps=3, refresh_every=2)
        model.add_adapter("second", LiftConfig(**cfg))
    before = _adapter_tensors(model, "first")
    logits_first = model(input_ids=IDS).logits
    model.set_adapter("second")
    torch.manual_seed(1)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    refreshed = []
    for step in range(1, 6):
        ids = torch.randint(0, 60, (2, 12))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if model.base_model.maybe_refresh(step, opt) is not None:
            refreshed.append(step)
    model.eval()
    assert len(refreshed) >= 2
    assert any(v.abs().sum() > 0 for k, v in _adapter_tensors(model, "second").items() if k.endswith("lift_values"))
    after = _adapter_tensors(model, "first")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    model.set_adapter("first")
    assert torch.equal(model(input_ids=IDS).logits, logits_first)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"r": 0}, "`r`"),
        ({"density": 1.5}, "`density`"),
        ({"lra_rank": 0}, "`lra_rank`"),
        ({"lra_rank": "half"}, "`lra_rank`"),
        ({"selection_method": "qr"}, "`selection_method`"),
        ({"update_interval": 0}, "`update_interval`"),
        ({"on_leave": "drop"}, "`on_leave`"),
        ({"niter": -1}, "`niter`"),
    ],
)
def test_bad_configs_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LiftConfig(**kwargs)


def test_ready_flag_is_cached_after_selection_and_reloaded_from_a_state_dict():
    """The training forward must not read the device flag every step (a GPU sync per layer): once a layer is
    ready the answer is cached; loading a state dict whose flags say "not ready" clears the cache."""
    model = _lift()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}  # flags still False: no mask chosen yet
    model.initialize_masks()
    layer = _layers(model)[0][1]
    assert layer.is_ready("default")
    flag = layer.lift_ready["default"]
    flag.fill_(False)  # behind the cache's back: the cached answer stands (no device read)
    assert layer.is_ready("default")
    flag.fill_(True)
    model.load_state_dict(fresh)  # the load pre-hook clears the cache; the loaded flag is False again
    assert not layer.is_ready("default")
    model.train()
    model(input_ids=IDS, labels=IDS)  # lazy selection on the first training forward marks it ready again
    assert layer.is_ready("default")
