"""AlphaDecay: the alpha -> decay map, the groups it builds, refresh timing, equivalence with a hand-grouped base
optimizer, exact resume, wrapping StableSPAM, and argument validation."""

import io
import math

import pytest
import torch

from hf_plugins import AlphaDecay, StableSPAM, esd_alphas
from hf_plugins.optim.alphadecay import linear_decay_map
from hf_plugins.testing import tiny_model


MIN_EIGS = 8  # the tiny Llama's matrices have 16-64 eigenvalues; the official threshold (50) would skip them all


def test_linear_decay_map_hand_example():
    """wd 0.1, s1 0.5, s2 2.5, alphas [2, 3, 4]: alpha_min -> 0.05, the middle -> 0.05 + 2.0 * 0.1 * 0.5 = 0.15,
    alpha_max -> 0.25; a NaN alpha maps to None (its matrix keeps the previous decay)."""
    out = linear_decay_map([2.0, 3.0, 4.0, math.nan], 0.1, 0.5, 2.5)
    assert out[:3] == pytest.approx([0.05, 0.15, 0.25])
    assert out[3] is None
    assert linear_decay_map([3.0, 3.0], 0.1, 0.5, 2.5) == [0.1, 0.1]  # no spread: the base decay


def _model(**kw):
    m = tiny_model("llama", seed=0, **kw)
    m.train()
    return m


def _groups_by_name(opt):
    return {g["alphadecay_module"]: g for g in opt.param_groups if "alphadecay_module" in g}


def test_groups_and_initial_decays():
    model = _model()
    opt = AlphaDecay()(model, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS)
    assert isinstance(opt, torch.optim.AdamW)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    analysed = _groups_by_name(opt)
    assert list(analysed) == linears[1:-1]  # first (layers.0.q_proj) and last (lm_head) left out, as the paper
    weights = [model.get_submodule(n).weight for n in analysed]
    alphas = esd_alphas(weights)
    expected = linear_decay_map(alphas, 0.1, 0.6666, 5.0)  # AdamW base: s2 = 5 (the AdamW table's scripts)
    for g, a, d in zip(analysed.values(), alphas, expected):
        assert g["alphadecay_alpha"] == pytest.approx(a) and g["weight_decay"] == pytest.approx(d)
        assert type(g["weight_decay"]) is float and type(g["alphadecay_alpha"]) is float  # weights_only-safe
    decays = [g["weight_decay"] for g in analysed.values()]
    assert min(decays) == pytest.approx(0.06666) and max(decays) == pytest.approx(0.5)
    # the rest follows the Trainer's rules: norms at 0, embeddings and the excluded linears at the base decay
    rest = [g for g in opt.param_groups if "alphadecay_module" not in g]
    by_id = {id(p): g["weight_decay"] for g in rest for p in g["params"]}
    assert by_id[id(model.model.norm.weight)] == 0.0
    assert by_id[id(model.model.embed_tokens.weight)] == 0.1
    assert by_id[id(model.lm_head.weight)] == 0.1
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)


def test_official_other_params_and_tied_embeddings():
    model = _model(tie_word_embeddings=True)
    opt = AlphaDecay()(model, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS, other_params="official", base="adam")
    rest = [g for g in opt.param_groups if "alphadecay_module" not in g]
    assert len(rest) == 1 and rest[0]["weight_decay"] == 0.1  # norms decayed too, as the official code
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    assert max(g["weight_decay"] for g in _groups_by_name(opt).values()) == pytest.approx(0.3)  # Adam: s2 = 3


def _random_grads(model, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 0.5


def test_decays_change_at_refresh_steps_only_and_apply_to_that_update():
    model = _model()
    opt = AlphaDecay()(model, lr=5e-2, weight_decay=0.1, min_eigs=MIN_EIGS, interval=3)
    analysed = list(_groups_by_name(opt).values())
    prev = [g["weight_decay"] for g in analysed]
    for step in range(1, 8):
        _random_grads(model, step)
        before = [g["params"][0].detach().clone() for g in analysed]
        opt.step()
        now = [g["weight_decay"] for g in analysed]
        if step % 3 == 0:
            assert now != prev, f"no refresh at step {step}"
            # refreshed from the weights as they were before this update, in time for this update
            assert now == pytest.approx(linear_decay_map(esd_alphas(before), 0.1, 0.6666, 5.0))
        else:
            assert now == prev, f"decays changed at step {step}"
        assert all(g["alphadecay_updates"] == step for g in analysed)
        prev = now


def test_equals_base_optimizer_with_the_same_groups():
    """Between refreshes AlphaDecay(AdamW) is AdamW with one group per matrix at its decay: compare with a plain
    AdamW built by hand from the same groups."""
    model_a, model_b = _model(), _model()
    opt_a = AlphaDecay()(model_a, lr=1e-2, weight_decay=0.1, min_eigs=MIN_EIGS, interval=1000)
    name_to_b = dict(model_b.named_parameters())
    id_to_name = {id(p): n for n, p in model_a.named_parameters()}
    groups_b = [
        {"params": [name_to_b[id_to_name[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
        for g in opt_a.param_groups
    ]
    opt_b = torch.optim.AdamW(groups_b, lr=1e-2)
    for step in range(4):
        _random_grads(model_a, step)
        _random_grads(model_b, step)
        opt_a.step()
        opt_b.step()
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(pa, pb), n


def _save_load(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("base", ["adamw", "stable_spam"])
def test_resume_is_exact(base):
    """Save after 4 updates (interval 3: one refresh done, the next due at 6), load into a fresh factory call on a
    copy of the weights, continue to 8: identical weights, alphas, decays and counters."""
    kw = {"lr": 2e-2, "weight_decay": 0.1, "min_eigs": MIN_EIGS, "interval": 3, "base": base}
    model_a = _model()
    opt_a = AlphaDecay()(model_a, **kw)
    for step in range(1, 9):
        _random_grads(model_a, step)
        opt_a.step()

    model_b = _model()
    opt_b = AlphaDecay()(model_b, **kw)
    for step in range(1, 5):
        _random_grads(model_b, step)
        opt_b.step()
    saved = _save_load(opt_b)
    model_c = _model()
    model_c.load_state_dict(model_b.state_dict())
    opt_c = AlphaDecay()(model_c, **kw)
    opt_c.load_state_dict(saved)
    assert [g["weight_decay"] for g in opt_c.param_groups] == [g["weight_decay"] for g in opt_b.param_groups]
    for step in range(5, 9):
        _random_grads(model_c, step)
        opt_c.step()
    for (n, pa), pc in zip(model_a.named_parameters(), model_c.parameters()):
        assert torch.equal(pa, pc), n
    assert opt_c.alphadecay_table() == opt_a.alphadecay_table()
    assert _groups_by_name(opt_c)["model.layers.0.self_attn.k_proj"]["alphadecay_updates"] == 8


def test_wrapping_stable_spam():
    """With base StableSPAM the optimizer is a StableSPAM (AdaClip/AdaGN/MoRet and its counters) whose groups carry
    AlphaDecay's decays; between refreshes it equals a StableSPAM built by hand from the same groups."""
    model_a, model_b = _model(), _model()
    opt_a = AlphaDecay()(model_a, lr=1e-2, weight_decay=0.1, min_eigs=MIN_EIGS, interval=1000, base=StableSPAM)
    assert isinstance(opt_a, StableSPAM)
    name_to_b = dict(model_b.named_parameters())
    id_to_name = {id(p): n for n, p in model_a.named_parameters()}
    groups_b = [
        {"params": [name_to_b[id_to_name[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
        for g in opt_a.param_groups
    ]
    opt_b = StableSPAM(groups_b, lr=1e-2)
    for step in range(3):
        _random_grads(model_a, step)
        _random_grads(model_b, step)
        opt_a.step()
        opt_b.step()
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, atol=0, rtol=0, msg=n)
    stats = opt_a.pop_stats()
    assert "stable_spam/clipped_entries" in stats and "alphadecay/alpha_median" in stats
    assert "alphadecay/alpha/q_proj" in stats


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"interval": 0}, "interval"),
        ({"wd_min_ratio": 2.0, "wd_max_ratio": 1.0}, "wd_min_ratio"),
        ({"xmin_pos": 1.0}, "xmin_pos"),
        ({"min_eigs": 1}, "min_eigs"),
        ({"other_params": "all"}, "other_params"),
        ({"base": "lion"}, "base"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kw = {"lr": 1e-3, "weight_decay": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        AlphaDecay()(_model(), **kw)


def test_matrix_without_finite_alpha_keeps_its_decay(caplog):
    """A zero matrix has a zero median eigenvalue, hence no alpha: its decay stays, the others are refreshed."""
    model = _model()
    opt = AlphaDecay()(model, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS)
    groups = _groups_by_name(opt)
    target = groups["model.layers.1.mlp.up_proj"]
    before = target["weight_decay"]
    with torch.no_grad():
        target["params"][0].zero_()
        model.model.layers[0].mlp.gate_proj.weight.mul_(3.0).pow_(3)  # changes the spread of the others
    opt.refresh_decays()
    assert target["weight_decay"] == before
    assert "no finite alpha" in caplog.text
    others = [g for n, g in groups.items() if n != "model.layers.1.mlp.up_proj"]
    weights = [g["params"][0] for g in others]
    expected = linear_decay_map(esd_alphas(weights), 0.1, 0.6666, 5.0)
    assert [g["weight_decay"] for g in others] == pytest.approx(expected)


def test_refresh_on_non_finite_weights_keeps_the_previous_decays(caplog):
    """A refresh inside `step()` on a matrix holding NaN / inf (LAPACK raised there before): that matrix keeps its
    decay (with a warning), the others are mapped from their own alphas, and the step runs."""
    model = _model()
    opt = AlphaDecay()(model, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS, interval=1)
    groups = _groups_by_name(opt)
    target = groups["model.layers.1.mlp.up_proj"]
    before = target["weight_decay"]
    with torch.no_grad():
        target["params"][0][0, 0] = float("nan")
        groups["model.layers.0.mlp.down_proj"]["params"][0][1, 2] = float("inf")
        model.model.layers[0].mlp.gate_proj.weight.mul_(3.0).pow_(3)  # changes the spread of the others
    others = [g for n, g in groups.items() if n not in ("model.layers.1.mlp.up_proj", "model.layers.0.mlp.down_proj")]
    expected = linear_decay_map(esd_alphas([g["params"][0] for g in others]), 0.1, 0.6666, 5.0)
    _random_grads(model, 0)
    opt.step()
    assert target["weight_decay"] == before
    assert "no finite alpha for 2 matrices" in caplog.text
    assert [g["weight_decay"] for g in others] == pytest.approx(expected)


def _nan_grads(model, step):
    _random_grads(model, step)
    next(model.parameters()).grad[0, 0] = float("nan")


@pytest.mark.parametrize("overlap", [False, True])
def test_steps_skipped_by_stable_spam_are_not_counted(overlap):
    """Interval 3 on Stable-SPAM with a non-finite gradient at the third step (skipped): the refresh counter does not
    advance, so the run equals one without that step (weights, decays, counters), with the refresh synchronous or
    overlapped; with nonfinite="raise" the failed step is not counted either."""
    kw = {"lr": 2e-2, "weight_decay": 0.1, "min_eigs": MIN_EIGS, "interval": 3, "base": "stable_spam"}
    model_a, model_b = _model(), _model()
    opt_a = AlphaDecay()(model_a, **kw, overlap_refresh=overlap)
    opt_b = AlphaDecay()(model_b, **kw, overlap_refresh=False)
    for step in range(1, 8):
        (_nan_grads if step == 3 else _random_grads)(model_a, step)
        opt_a.step()
        if step != 3:
            _random_grads(model_b, step)
            opt_b.step()
    assert opt_a.param_groups[0]["skipped_steps"] == 1
    assert _groups_by_name(opt_a)["model.layers.0.self_attn.k_proj"]["alphadecay_updates"] == 6
    assert opt_a.alphadecay_table() == opt_b.alphadecay_table()
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(pa, pb), n

    model = _model()
    opt = AlphaDecay()(model, **kw, nonfinite="raise")
    _nan_grads(model, 1)
    with pytest.raises(FloatingPointError):
        opt.step()
    assert all(g["alphadecay_updates"] == 0 for g in _groups_by_name(opt).values())


@pytest.mark.parametrize("base", ["adamw", "stable_spam"])
def test_failing_step_on_a_sparse_gradient_changes_nothing(base):
    """The merged AdamW path applied the per-matrix decays before AdamW raised on a sparse gradient (18 weights
    changed by a failed step): now the step raises first, and neither weights nor counters move."""
    model = _model()
    opt = AlphaDecay()(model, lr=1e-2, weight_decay=0.1, min_eigs=MIN_EIGS, interval=3, base=base)
    _random_grads(model, 0)
    model.model.embed_tokens.weight.grad = model.model.embed_tokens.weight.grad.to_sparse()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(g["alphadecay_updates"] == 0 for g in _groups_by_name(opt).values())


_INTERPRETER_CHECK = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import pytest
import torch
from test_alphadecay import MIN_EIGS, _groups_by_name, _model, _nan_grads, _random_grads
from hf_plugins import AlphaDecay

def run(fused):
    model = _model()
    kw = {"lr": 2e-2, "weight_decay": 0.1, "min_eigs": MIN_EIGS, "interval": 3, "base": "stable_spam"}
    opt = AlphaDecay()(model, **kw, fused=fused)
    for step in range(1, 8):
        (_nan_grads if step == 3 else _random_grads)(model, step)
        opt.step()
    return model, opt

(ma, oa), (mb, ob) = run(False), run(True)
assert len(ob._layouts) == 1  # every group (one per analysed matrix) in one fused bucket
ta, tb = oa.alphadecay_table(), ob.alphadecay_table()
assert len({v["weight_decay"] for v in tb.values()}) > 3  # per-matrix decays really differ
for name in ta:
    assert tb[name]["weight_decay"] == pytest.approx(ta[name]["weight_decay"], rel=1e-4), name
ob.pop_stats()  # resolves the last step's device flag
for opt in (oa, ob):
    assert opt.param_groups[0]["skipped_steps"] == 1 and opt.param_groups[0]["T"] == 6
    assert all(g["alphadecay_updates"] == 6 for g in _groups_by_name(opt).values())
for (n, pa), pb in zip(ma.named_parameters(), mb.parameters()):
    torch.testing.assert_close(pb, pa, atol=1e-5, rtol=1e-4, msg=n)
print("OK")
"""


@pytest.mark.slow
def test_fused_stable_spam_base_folds_the_decays_and_skips_uncounted_in_triton_interpreter():
    """AlphaDecay on Stable-SPAM's fused path (Triton's CPU interpreter): every analysed matrix's group runs in one
    bucket with its own decay inside the update kernel, equal to the foreach path; a NaN step that the fused path
    detects on the device (its counters corrected one step later) is not counted by AlphaDecay either."""
    pytest.importorskip("triton")
    from _triton_interpreter import run_in_interpreter

    assert "OK" in run_in_interpreter(_INTERPRETER_CHECK)
