"""Stable-SPAM's fused Triton path (`_stable_spam_triton.py`) against its foreach path: in Triton's CPU interpreter
(default run and `-m slow`), compiled for sm_90 (`-m slow`) and on CUDA (`-m gpu`)."""

import pytest
import torch
from test_stable_spam import HP, gradient_stream, make_params

from hf_plugins import StableSPAM


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda
# fp32: the two paths order their reductions differently; over 60 steps with two resets that is a few ulps of the
# moments (measured on an H200: 1.4e-6 absolute, 7.5e-6 relative), far below any effect of the algorithm.
@pytest.mark.parametrize("dtype, steps, tol", [(torch.float32, 60, 2e-5), (torch.bfloat16, 1, 8e-3)])
def test_fused_triton_path_equals_foreach(dtype, steps, tol):
    """The fused kernels re-apply the clip and the AdaGN factor inside the AdamW update; they must give the foreach
    path's parameters (fp32: to rounding over 60 steps with two resets; bf16: within one ulp after a step) and the
    same clipped-entry counts."""
    pytest.importorskip("triton")
    stream = gradient_stream(steps)
    out = []
    for fused in (False, True):
        params = [p.detach().cuda().requires_grad_() for p in make_params(dtype)]
        opt = StableSPAM(params, **HP, fused=fused)
        counts = []
        for grads in stream:
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.to(device="cuda", dtype=dtype)
            opt.step()
            counts.append(opt.pop_stats().get("stable_spam/clipped_entries"))
        out.append((params, counts))
    (pa, ca), (pb, cb) = out
    assert ca == cb
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol)


_INTERPRETER_CHECK = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import pytest
import torch
from test_stable_spam import HP, gradient_stream, make_params
from hf_plugins import StableSPAM

def groups_of(params, fused_flags=(None, None, None)):
    # per-group hyperparameters: one bucket holds groups with different decays, ablations, reset intervals, betas
    return [
        {"params": [params[0]], "weight_decay": 0.3, "fused": fused_flags[0]},
        {"params": [params[1]], "adaclip": False, "reset_interval": 7, "lr": 2e-2, "fused": fused_flags[1]},
        {"params": [params[2]], "adagn": False, "gamma1": 0.85, "betas": (0.8, 0.99), "total_T": None,
         "fused": fused_flags[2]},
    ]

def run(dtype, stream, fused, per_group=None, **kw):
    params = make_params(dtype)
    opt = StableSPAM(groups_of(params, per_group) if per_group else groups_of(params), **{**HP, **kw}, fused=fused)
    stats = []
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.to(dtype)
        opt.step()
        stats.append(opt.pop_stats())
    return params, stats, opt

def same(a, b, atol, rtol):
    (pa, sa, oa), (pb, sb, ob) = a, b
    for x, y in zip(sa, sb):  # per-step reports: clipped-entry counts exact, the rest to rounding
        assert x.keys() == y.keys() and x.get("stable_spam/clipped_entries") == y.get("stable_spam/clipped_entries")
        assert all(x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-9) for k in x), (x, y)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(q.double(), p.double(), atol=atol, rtol=rtol)
        for k, v in oa.state[p].items():
            w = ob.state[q][k]
            assert v.dtype == w.dtype, k
            if k in ("step", "moment_step", "m_max"):  # integer counters and the max-EMA: bit-identical
                assert torch.equal(v, w), (k, v, w)
            else:
                torch.testing.assert_close(w.double(), v.double(), atol=atol, rtol=rtol)
    assert [g["T"] for g in oa.param_groups] == [g["T"] for g in ob.param_groups]

MODE = sys.argv[2]
stream = gradient_stream(25)
if MODE == "main":  # fp32, 25 steps (spikes, a zero and missing gradients, resets at 7/14/21 and 25), one bucket
    same(run(torch.float32, stream, False), run(torch.float32, stream, True), atol=1e-6, rtol=1e-5)
else:
    # a fused and a foreach group in one optimizer (one host synchronisation decides the step)
    foreach = run(torch.float32, stream[:10], False)
    same(foreach, run(torch.float32, stream[:10], None, per_group=(True, False, True)), atol=1e-6, rtol=1e-5)
    # bf16: one step within one bf16 ulp
    same(run(torch.bfloat16, stream[:1], False), run(torch.bfloat16, stream[:1], True), atol=8e-3, rtol=8e-3)

# A non-finite gradient on the fused path: nothing written, the counters follow at the next pop_stats/state_dict.
for nonfinite in ("skip",) if MODE == "main" else ("raise",):
    params, _, opt = run(torch.float32, stream[:3], True, nonfinite=nonfinite)
    before = [p.detach().clone() for p in params]
    state_before = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    grads = [g.clone() for g in stream[3]]
    grads[0].view(-1)[3] = float("nan")
    for p, g in zip(params, grads):
        p.grad = g
    if nonfinite == "raise":
        with pytest.raises(FloatingPointError, match="NaN or inf"):
            opt.step()
    else:
        opt.step()
        assert opt.pop_stats()["stable_spam/skipped_steps"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    for p, st in zip(params, state_before):
        assert all(torch.equal(st[k], v) for k, v in opt.state[p].items())
    assert [g["T"] for g in opt.state_dict()["param_groups"]] == [3, 3, 3]
print("OK")
"""


def test_fused_triton_path_equals_foreach_in_triton_interpreter():
    """The fused kernels run in Triton's CPU interpreter (`TRITON_INTERPRET=1`, a fresh process because the flag is
    read when the kernels are defined) and must give the foreach path's parameters, moments, statistics, counters and
    reports over 25 fp32 steps of three groups with their own hyperparameters in one bucket (spikes, a zero and
    missing gradients, resets; the GPU test runs 60); a NaN step must write nothing."""
    pytest.importorskip("triton")
    from _triton_interpreter import run_in_interpreter

    assert "OK" in run_in_interpreter(_INTERPRETER_CHECK, args=["main"])


@pytest.mark.slow
def test_fused_triton_path_mixed_bf16_and_raise_in_triton_interpreter():
    """As above: a fused and a foreach group in one optimizer, one bf16 step (within one ulp), and
    `nonfinite="raise"` on the fused path (raises before anything is written)."""
    pytest.importorskip("triton")
    from _triton_interpreter import run_in_interpreter

    assert "OK" in run_in_interpreter(_INTERPRETER_CHECK, args=["more"])


@pytest.mark.slow
def test_fused_kernels_compile_for_sm90_with_vector_loads():
    """Every kernel compiles for sm_90 with triton's compiler on a machine without a GPU (the per-tensor kernels with
    their fp64 math), and the aligned fp32 element-wise kernels use 128-bit loads and stores (the scalar-load variant
    is only for unaligned tensors)."""
    pytest.importorskip("triton")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hf_plugins.optim import _stable_spam_triton as K

    def ptx(fn, sig, consts, num_warps=K.NUM_WARPS, fp_fusion=True):
        ptrs = [i for i, v in enumerate(sig.values()) if v.startswith("*")]
        attrs = {(i,): [["tt.divisibility", 16]] for i in ptrs}
        src = ASTSource(fn=fn, signature={**sig, **dict.fromkeys(consts, "constexpr")}, constexprs=consts, attrs=attrs)
        options = {"num_warps": num_warps, "enable_fp_fusion": fp_fusion}
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]

    blocks = {"block_tensor": "*i32", "block_start": "*i64", "numels": "*i64"}
    elem = {"IS_BF16": False, "ALIGNED": True, "BLOCK_SIZE": K.BLOCK}
    upd = {"p_table": "*i64", "g_table": "*i64", "m_table": "*i64", "v_table": "*i64", **blocks}
    upd.update({"tensor_group": "*i32", "groups": "*fp64", "scal": "*fp32", "ok": "*i32"})
    code = ptx(K._update_kernel, upd, {**elem, "NGC": K.NG, "NSC": K.NS})
    assert code.count("ld.global.v4") >= 4 and code.count("st.global.v4") >= 3
    stats = {"g_table": "*i64", **blocks, "out_max": "*fp32", "out_sq": "*fp32"}
    assert "ld.global.v4" in ptx(K._stats_kernel, stats, elem)
    clip = {"g_table": "*i64", **blocks, "block_max": "*fp32", "block_sq": "*fp32", "scal": "*fp32"}
    clip.update({"out_sq": "*fp32", "out_cnt": "*fp32"})
    assert "ld.global.v4" in ptx(K._clip_kernel, clip, {**elem, "NSC": K.NS})
    seg = {"seg_first": "*i64", "seg_len": "*i64", "tensor_group": "*i32", "groups": "*fp64"}
    thr = {"block_max": "*fp32", **seg, "step": "*i64", "m_max": "*fp32", "scal": "*fp32", "new_m_max": "*fp64"}
    thr["finite"] = "*i32"
    per_tensor = {"NGC": K.NG, "NSC": K.NS, "SEG_SIZE": K.SEG}
    assert ".f64" in ptx(K._threshold_kernel, thr, per_tensor, num_warps=4, fp_fusion=False)
    scale = {"block_sq": "*fp32", "block_cnt": "*fp32", **seg, "finite": "*i32", "n_tensors": "i32"}
    scale.update({"step": "*i64", "moment_step": "*i64", "m_max": "*fp32", "m_norm": "*fp32", "v_norm": "*fp32"})
    scale.update({"new_m_max": "*fp64", "scal": "*fp32", "clip_acc": "*fp64", "scale_out": "*fp64", "ok_out": "*i32"})
    assert ".f64" in ptx(K._scale_kernel, scale, per_tensor, num_warps=4, fp_fusion=False)
