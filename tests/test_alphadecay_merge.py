"""AlphaDecay's merged step (decoupled decays in one `_foreach_mul_`, base update on merged groups) against an fp64
AdamW written out by hand with one decay per parameter, across an LR schedule, a refresh, a parameter without
gradient and a save / load / resume; and against the per-group base step."""

import io
import math

import pytest
import torch

from hf_plugins import AlphaDecay
from hf_plugins.testing import tiny_model


MIN_EIGS = 8
BETAS, EPS, LR, WD = (0.9, 0.95), 1e-8, 2e-2, 0.1
STEPS, SAVE_AT, INTERVAL = 8, 4, 3  # refreshes at updates 3 and 6: one before and one after the resume


def _model():
    m = tiny_model("llama", seed=0).double()
    m.train()
    return m


def _schedule(step):
    """Linear warm-up over 2 steps, then cosine to 0.1: every update has its own lr."""
    return min(1.0, (step + 1) / 2) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / STEPS)))


def _grads(model, step):
    g = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(model.parameters()):
        p.grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5).to(p.dtype)
        if step == 2 and i == 5:  # no gradient at this update: torch skips the parameter (no decay, no moments)
            p.grad = None


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _make(model, **kw):
    opt = AlphaDecay()(model, lr=LR, weight_decay=WD, betas=BETAS, eps=EPS, min_eigs=MIN_EIGS, interval=INTERVAL, **kw)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _schedule)


class _ReferenceAdamW:
    """fp64 AdamW, one decay per parameter: p <- p (1 - lr wd); m, v; p <- p - lr m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, params):
        self.p = [p.detach().clone() for p in params]
        self.m = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.t = [0] * len(self.p)

    def step(self, grads, lr, decays):
        (b1, b2) = BETAS
        for k, (g, wd) in enumerate(zip(grads, decays)):
            if g is None:
                continue
            self.t[k] += 1
            t = self.t[k]
            self.p[k].mul_(1 - lr * wd)
            self.m[k].mul_(b1).add_(g, alpha=1 - b1)
            self.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat, v_hat = self.m[k] / (1 - b1**t), self.v[k] / (1 - b2**t)
            self.p[k].sub_(lr * m_hat / (v_hat.sqrt() + EPS))


def _decays(model, opt):
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    return [by_id[id(p)] for p in model.parameters()]


@pytest.mark.parametrize("impl", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_merged_step_equals_fp64_per_parameter_adamw(impl):
    model = _model()
    opt, sched = _make(model, **impl)
    ref = _ReferenceAdamW(model.parameters())
    n_groups = len(opt.param_groups)
    assert len(opt._merged_groups()) == 2  # decayed (embeddings, first/last linear) and decay 0 (the rest)
    refreshed = []
    for step in range(1, STEPS + 1):
        if step == SAVE_AT + 1:  # resume into a fresh model / optimizer / scheduler from saved state
            saved_opt, saved_sched = _save_load(opt), _save_load(sched)
            fresh = _model()
            fresh.load_state_dict(model.state_dict())
            model = fresh
            opt, sched = _make(model, **impl)
            opt.load_state_dict(saved_opt)
            sched.load_state_dict(saved_sched)
        _grads(model, step)
        lr = opt.param_groups[0]["lr"]
        before = _decays(model, opt)
        opt.step()
        sched.step()
        decays = _decays(model, opt)  # a refresh inside step() sets the decays this update used
        refreshed.append(decays != before)
        ref.step([p.grad for p in model.parameters()], lr, decays)
        assert len(opt.param_groups) == n_groups and "alphadecay_module" in opt.param_groups[0]
    assert refreshed == [s % INTERVAL == 0 for s in range(1, STEPS + 1)]
    assert len(set(_decays(model, opt))) > 3  # per-matrix decays really differ
    for (name, p), q in zip(model.named_parameters(), ref.p):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10, msg=name)


def test_merged_step_equals_per_group_base_step():
    """fp32, fused-free AdamW: merged and per-group (`merge_groups=False`) runs agree to fp32 rounding, state dicts
    have the same keys and groups (the merged step leaves `param_groups` and the state layout as they were)."""
    runs = []
    for merge in (True, False):
        model = tiny_model("llama", seed=0)
        opt, sched = _make(model, merge_groups=merge)
        for step in range(1, STEPS + 1):
            _grads(model, step)
            opt.step()
            sched.step()
        runs.append((model, opt))
    (ma, oa), (mb, ob) = runs
    for (name, pa), pb in zip(ma.named_parameters(), mb.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert [sorted(g) for g in sa["param_groups"]] == [sorted(g) for g in sb["param_groups"]]
    assert [g["params"] for g in sa["param_groups"]] == [g["params"] for g in sb["param_groups"]]
    wd_a, wd_b = ([g["weight_decay"] for g in s["param_groups"]] for s in (sa, sb))
    assert wd_a == pytest.approx(wd_b, rel=1e-4)
    assert sa["state"].keys() == sb["state"].keys()


def test_per_group_fallbacks():
    """Coupled Adam (L2 added to the gradient) and a GradScaler's `found_inf` run the base step per group."""
    opt = AlphaDecay()(tiny_model("llama", seed=0), lr=LR, weight_decay=WD, min_eigs=MIN_EIGS, base="adam")
    assert opt._merged_groups() is None
    opt = AlphaDecay()(tiny_model("llama", seed=0), lr=LR, weight_decay=WD, min_eigs=MIN_EIGS)
    assert opt._can_merge()
    opt.found_inf = torch.zeros(())
    assert not opt._can_merge()
    opt = AlphaDecay()(
        tiny_model("llama", seed=0),
        lr=LR,
        weight_decay=WD,
        min_eigs=MIN_EIGS,
        base="adam",
        decoupled_weight_decay=True,
    )
    assert len(opt._merged_groups()) == 2
