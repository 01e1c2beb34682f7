"""AlphaDecay's fused Triton AdamW update (`_alphadecay_triton.py`: the per-tensor decay inside the AdamW kernel)
against the merged two-pass path (`_foreach_mul_` + torch AdamW) and an fp64 AdamW written out by hand, in Triton's
CPU interpreter (LR schedule, refreshes, per-tensor decays, a parameter without gradient, save / load / resume);
where it falls back; that its kernel compiles for sm_90 with vector loads; and (GPU) against torch on CUDA."""

import sys
from pathlib import Path

import pytest
import torch
from _triton_interpreter import run_in_interpreter

from hf_plugins import AlphaDecay
from hf_plugins.optim import _alphadecay_triton  # noqa: F401 (defined now: later tests set TRITON_INTERPRET=1)
from hf_plugins.testing import tiny_model


MIN_EIGS = 8

_INTERPRETER_CHECK = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import torch
from test_alphadecay_merge import STEPS, SAVE_AT, INTERVAL, _ReferenceAdamW, _decays, _grads, _make, _save_load
from hf_plugins.testing import tiny_model

def run(fused_update, ref=None):
    model = tiny_model("llama", seed=0)
    model.train()
    opt, sched = _make(model, fused_update=fused_update)
    if ref is not None:
        ref = _ReferenceAdamW([p.detach().double() for p in model.parameters()])
    saved = None
    for step in range(1, STEPS + 1):
        if step == SAVE_AT + 1:  # resume into a fresh model / optimizer / scheduler from saved state
            saved = _save_load(opt)
            saved_sched = _save_load(sched)
            fresh = tiny_model("llama", seed=1)
            fresh.load_state_dict(model.state_dict())
            model = fresh
            opt, sched = _make(model, fused_update=fused_update)
            opt.load_state_dict(saved)
            sched.load_state_dict(saved_sched)
        _grads(model, step)
        lr = opt.param_groups[0]["lr"]
        opt._alphadecay_fused_layout = None
        opt.step()
        assert (opt._alphadecay_fused_layout is not None) == fused_update, step  # the path really taken
        sched.step()
        if ref is not None:
            ref.step([None if p.grad is None else p.grad.double() for p in model.parameters()], lr, _decays(model, opt))
    return model, opt, saved, ref

(ma, oa, sa, ref), (mb, ob, sb, _) = run(True, ref=True), run(False)
assert len(set(_decays(ma, oa))) > 3  # per-matrix decays really differ
for (name, pa), pb, pr in zip(ma.named_parameters(), mb.parameters(), ref.p):
    torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)  # fused vs two-pass: fp32 rounding
    torch.testing.assert_close(pa.double(), pr, atol=1e-5, rtol=1e-4, msg=name)  # vs fp64 AdamW
# the state (saved mid-run and at the end) has torch's layout: same keys, step tensors (CPU, fp32), moments
for da, db in ((sa, sb), (oa.state_dict(), ob.state_dict())):
    assert da["state"].keys() == db["state"].keys()
    assert [sorted(g) for g in da["param_groups"]] == [sorted(g) for g in db["param_groups"]]
    for k, st in da["state"].items():
        assert list(st) == list(db["state"][k]) == ["step", "exp_avg", "exp_avg_sq"], list(st)
        assert st["step"].device.type == "cpu" and st["step"].dtype == db["state"][k]["step"].dtype
        assert torch.equal(st["step"], db["state"][k]["step"]), k
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(st[key], db["state"][k][key], atol=1e-7, rtol=1e-5)
# the parameter without a gradient at update 2 (index 5) was skipped: one update fewer
steps = [int(oa.state[p]["step"]) for p in ma.parameters()]
assert steps[5] == STEPS - 1 and all(s == STEPS for i, s in enumerate(steps) if i != 5), steps
print("OK")
"""


@pytest.mark.slow  # ~15 s on 2 shared CPU cores (the interpreter runs every program in Python)
def test_fused_update_equals_merged_path_in_triton_interpreter():
    """The fused kernel in Triton's CPU interpreter (a fresh process: `TRITON_INTERPRET` is read when kernels are
    defined) gives the merged two-pass path's parameters and state (fp32 rounding) and an fp64 AdamW's parameters,
    over 8 updates with an LR schedule, refreshes at updates 3 and 6, a parameter without gradient and a resume."""
    pytest.importorskip("triton")
    assert "OK" in run_in_interpreter(_INTERPRETER_CHECK)


def _grads_for(model, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(dtype)


@pytest.mark.parametrize(
    "kw, expect",
    [
        ({}, True),
        ({"foreach": False}, False),
        ({"fused": False}, False),
        ({"amsgrad": True}, False),
        ({"maximize": True}, False),
        ({"base": "adam", "decoupled_weight_decay": True}, True),
    ],
)
def test_fused_plan_applies_only_where_torch_adamw_semantics_hold(monkeypatch, kw, expect):
    """The plan (which parameters the kernel would update) exists for AdamW and decoupled Adam, not with
    `foreach=False` / `fused=False` set, amsgrad or maximize (under the interpreter flag so the CPU counts)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = tiny_model("llama", seed=0)
    opt = AlphaDecay()(model, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS, **kw)
    _grads_for(model)
    next(model.parameters()).grad = None
    plan = opt._fused_plan()
    assert (plan is not None) == expect
    if plan is not None:
        params, grads, rows, _, _ = plan
        assert len(params) == len(list(model.parameters())) - 1  # the one without gradient is left out
        assert all(g is p.grad for p, g in zip(params, grads))
        decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        assert rows[1::5] == [decays[id(p)] for p in params]


def test_fused_plan_falls_back(monkeypatch):
    """No plan on the CPU without the interpreter, for bf16 parameters, or a non-contiguous gradient; the step then
    takes the two-pass path (`fused_update=False` does so always)."""
    pytest.importorskip("triton")
    model = tiny_model("llama", seed=0)
    opt = AlphaDecay()(model, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS, fused_update=True)
    _grads_for(model)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert opt._fused_plan() is None
    opt.step()  # two-pass path on the CPU
    assert opt._alphadecay_fused_layout is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert opt._fused_plan() is not None
    p = next(model.parameters())
    p.grad = p.grad.t().contiguous().t() if p.dim() == 2 else p.grad
    assert opt._fused_plan() is None
    bf16 = tiny_model("llama", seed=0, dtype=torch.bfloat16)
    opt = AlphaDecay()(bf16, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS, fused_update=True)
    _grads_for(bf16, torch.bfloat16)
    assert opt._fused_plan() is None


@pytest.mark.slow
def test_fused_kernel_compiles_for_sm90_with_vector_loads():
    """The kernel compiles for sm_90 with triton's compiler on a machine without a GPU, with 128-bit loads and stores
    of p, g, m, v (aligned variant) and the scalar variant compiles too."""
    pytest.importorskip("triton")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hf_plugins.optim import _alphadecay_triton as K

    sig = {"p_table": "*i64", "g_table": "*i64", "m_table": "*i64", "v_table": "*i64"}
    sig.update({"block_tensor": "*i32", "block_start": "*i64", "numels": "*i64", "scalars": "*fp32"})
    for aligned in (True, False):
        consts = {"ALIGNED": aligned, "BLOCK_SIZE": K.BLOCK, "NS": K.NUM_SCALARS}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(8)}
        src = ASTSource(
            fn=K._adamw_decay_kernel,
            signature={**sig, **dict.fromkeys(consts, "constexpr")},
            constexprs=consts,
            attrs=attrs,
        )
        code = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": K.NUM_WARPS}).asm["ptx"]
        if aligned:
            assert code.count("ld.global.v4") >= 4 and code.count("st.global.v4") >= 3


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("impl", [{"fused": True}, {}])
def test_fused_update_equals_torch_on_cuda(impl):
    """On CUDA the fused update (one launch) equals the two-pass merged path (torch fused / foreach AdamW + the
    `_foreach_mul_` decay) over 8 updates with an LR schedule, refreshes, a parameter without gradient and a resume,
    with the same state layout (step on the device with `fused=True`, on the CPU otherwise)."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_alphadecay_merge import INTERVAL, LR, SAVE_AT, STEPS, _grads, _save_load, _schedule

    def make(model, fused_update):
        opt = AlphaDecay()(
            model, lr=LR, weight_decay=0.1, min_eigs=MIN_EIGS, interval=INTERVAL, fused_update=fused_update, **impl
        )
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, _schedule)

    runs = []
    for fused_update in (True, False):
        model = tiny_model("llama", seed=0).cuda()
        opt, sched = make(model, fused_update)
        for step in range(1, STEPS + 1):
            if step == SAVE_AT + 1:
                saved, saved_sched = _save_load(opt), _save_load(sched)
                fresh = tiny_model("llama", seed=1).cuda()
                fresh.load_state_dict(model.state_dict())
                model = fresh
                opt, sched = make(model, fused_update)
                opt.load_state_dict(saved)
                sched.load_state_dict(saved_sched)
            cpu = tiny_model("llama", seed=0)  # the merge test's gradient stream, made on the CPU and moved
            _grads(cpu, step)
            for p, q in zip(model.parameters(), cpu.parameters()):
                p.grad = None if q.grad is None else q.grad.cuda()
            opt._alphadecay_fused_layout = None
            opt.step()
            assert (opt._alphadecay_fused_layout is not None) == fused_update
            sched.step()
        runs.append((model, opt.state_dict()))
    (ma, sa), (mb, sb) = runs
    for (name, pa), pb in zip(ma.named_parameters(), mb.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    for k, st in sa["state"].items():
        other = sb["state"][k]
        assert list(st) == list(other)
        assert st["step"].device == other["step"].device and torch.equal(st["step"], other["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(st[key], other[key], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"base": "adam"}, {"merge_groups": False}])
def test_step_with_closure_equals_backward_then_step(kw):
    """`step(closure)` evaluates the closure once, before any update, and returns its loss: same parameters as
    `loss.backward(); step()` on the merged path, the per-group path (coupled Adam) and `merge_groups=False`."""
    ids = torch.arange(12).view(2, 6)
    out = []
    for use_closure in (True, False):
        model = tiny_model("llama", seed=0)
        opt = AlphaDecay()(model, lr=1e-2, weight_decay=0.1, min_eigs=MIN_EIGS, **kw)
        calls = []

        def closure(model=model, opt=opt, calls=calls):
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            calls.append(1)
            return loss

        for _ in range(2):
            if use_closure:
                loss = opt.step(closure)
            else:
                loss = closure()
                opt.step()
        out.append((model, loss, len(calls)))
    (ma, la, ca), (mb, lb, cb) = out
    assert ca == cb == 2 and torch.equal(la, lb)
    for (name, pa), pb in zip(ma.named_parameters(), mb.parameters()):
        torch.testing.assert_close(pa, pb, atol=0, rtol=0, msg=name)
