"""Tests of the machinery shared by the LIFT and SEFT tuners (hf_plugins/tuners/_sparse_delta*.py).

Every result is compared with a reference computed another way: a dense weight built with `scatter_add` and
`F.linear` under autograd, an explicit Python loop for the optimizer remap, a saved-tensor census for memory.
"""

import os

import pytest
import torch
from _triton_interpreter import run_in_interpreter
from torch import nn

from hf_plugins.tuners._sparse_delta import SparseDeltaLayer
from hf_plugins.tuners._sparse_delta_autograd import sparse_delta_linear
from hf_plugins.tuners._sparse_delta_ops import (
    add_sparse_,
    carry_map,
    check_indices,
    dense_delta,
    remap_optimizer_state_,
)


def _unique_indices(numel, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=g)[:k].to(torch.int32)


def _dense_reference(x, w, b, idx_list, val_list):
    w_eff = w
    for idx, val in zip(idx_list, val_list):
        w_eff = w_eff.reshape(-1).scatter_add(0, idx.long(), val.to(w.dtype)).reshape(w.shape)
    return nn.functional.linear(x, w_eff, b)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_forward_and_gradients_equal_a_dense_scatter_reference(dtype, atol):
    """Outputs, grad_x, grad_bias and each values tensor's grad equal autograd through a dense scatter-built
    weight; the hook sees the full dense dL/dW."""
    torch.manual_seed(0)
    m, n = 7, 5
    w = torch.randn(m, n, dtype=dtype)
    b = torch.randn(m, dtype=dtype, requires_grad=True)
    idx1, idx2 = _unique_indices(m * n, 6, 1), _unique_indices(m * n, 4, 2)
    v1 = torch.randn(6, dtype=dtype, requires_grad=True)
    v2 = torch.randn(4, dtype=dtype, requires_grad=True)
    x = torch.randn(3, 2, n, dtype=dtype, requires_grad=True)
    seen = []
    y = sparse_delta_linear(x, w, b, [idx1, idx2], [v1, v2], grad_hook=seen.append)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, b, v1, v2), gy)

    w_ref = w.clone().requires_grad_(True)
    y_ref = _dense_reference(x, w_ref, b, [idx1, idx2], [v1, v2])
    grads_ref = torch.autograd.grad(y_ref, (x, b, v1, v2, w_ref), gy)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=atol)
    for got, ref in zip(grads, grads_ref[:4]):
        torch.testing.assert_close(got, ref, atol=atol, rtol=atol)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0].to(dtype), grads_ref[4], atol=atol, rtol=atol)


@pytest.mark.parametrize("autocast", [False, True])
def test_a_prebuilt_effective_weight_gives_the_same_outputs_and_gradients(autocast):
    """`effective_weight=` (the cache's lean function) against the transient path: same output, grad_x, grad_bias,
    values' gradient and hook gradient, in fp32 and under bf16 autocast; bad arguments raise."""
    torch.manual_seed(7)
    m, n = 9, 6
    w = torch.randn(m, n)
    b = torch.randn(m, requires_grad=True)
    idx = _unique_indices(m * n, 7, 8)
    v = torch.randn(7, requires_grad=True)
    x = torch.randn(4, 3, n, requires_grad=True)
    dtype = torch.bfloat16 if autocast else torch.float32
    w_eff = add_sparse_(w.to(dtype, copy=True), idx, v.detach())
    outs = []
    for prebuilt in (None, w_eff):
        seen = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = sparse_delta_linear(x, w, b, [idx], [v], grad_hook=seen.append, effective_weight=prebuilt)
        grads = torch.autograd.grad(y.float().sum(), (x, b, v))
        outs.append((y, *grads, seen[0]))
    for got, want in zip(*outs):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="one delta"):
        sparse_delta_linear(x, w, b, [idx, idx], [v, v], effective_weight=w_eff)
    with pytest.raises(ValueError, match="compute dtype"):
        sparse_delta_linear(x, w, b, [idx], [v], effective_weight=w_eff.double())


def test_values_grad_is_the_dense_gradient_gathered_at_the_indices():
    """grad(values) == (dL/dW)[indices] for a frozen weight, computed by an explicit loop over entries."""
    torch.manual_seed(1)
    m, n, k = 6, 4, 5
    w = torch.randn(m, n, dtype=torch.float64)
    idx = _unique_indices(m * n, k, 3)
    v = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    x = torch.randn(9, n, dtype=torch.float64)
    gy = torch.randn(9, m, dtype=torch.float64)
    (gv,) = torch.autograd.grad(sparse_delta_linear(x, w, None, [idx], [v]), v, gy)
    for j in range(k):
        r, c = divmod(int(idx[j]), n)
        assert abs(float(gv[j]) - float((gy[:, r] * x[:, c]).sum())) < 1e-12


def test_bf16_forward_matches_a_single_rounding_merged_weight_bit_for_bit():
    """In bf16 the effective weight is W0 + v rounded once per entry, exactly what `add_sparse_` (merge) builds."""
    torch.manual_seed(2)
    w = torch.randn(16, 8, dtype=torch.bfloat16)
    idx = _unique_indices(128, 20, 4)
    v = torch.randn(20) * 1e-2
    x = torch.randn(5, 8, dtype=torch.bfloat16)
    merged = add_sparse_(w.clone(), idx, v)
    ref_entries = (w.view(-1)[idx.long()].float() + v).to(torch.bfloat16)
    assert torch.equal(merged.view(-1)[idx.long()], ref_entries)
    assert torch.equal(sparse_delta_linear(x, w, None, [idx], [v]), nn.functional.linear(x, merged))


def test_autocast_computes_in_the_autocast_dtype():
    torch.manual_seed(3)
    w = torch.randn(6, 4)
    idx = _unique_indices(24, 5, 5)
    v = torch.randn(5, requires_grad=True)
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sparse_delta_linear(x, w, None, [idx], [v])
        y_ref = nn.functional.linear(x, add_sparse_(w.clone(), idx, v.detach()))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    y.float().sum().backward()
    assert v.grad.dtype == torch.float32


def _saved_bytes_beyond(fn, known):
    """Bytes saved for backward by `fn()` in tensors that share no storage with `known` tensors."""
    known_ptrs = {t.untyped_storage().data_ptr() for t in known}
    extra = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in known_ptrs:
            extra.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(extra)


def test_nothing_dense_is_saved_for_backward():
    """The autograd footprint is x and references only; the naive `F.linear(x, W + scatter)` saves a dense weight."""
    torch.manual_seed(4)
    m, n = 64, 32
    w, x = torch.randn(m, n), torch.randn(4, n, requires_grad=True)
    idx, v = _unique_indices(m * n, 50, 6), torch.zeros(50, requires_grad=True)
    ours = _saved_bytes_beyond(lambda: sparse_delta_linear(x, w, None, [idx], [v]), [x, w, idx, v])
    naive = _saved_bytes_beyond(lambda: _dense_reference(x, w, None, [idx], [v]), [x, w, idx, v])
    assert ours == 0
    assert naive >= m * n * 4


def test_carry_map_and_optimizer_remap_match_an_explicit_loop():
    """After an index change, Adam moments of entries that stay move with them, new entries start at 0, the
    step counter is untouched (reference: a dict-based loop)."""
    torch.manual_seed(5)
    old = torch.tensor([9, 2, 7, 4, 11], dtype=torch.int32)
    new = torch.tensor([4, 3, 9, 12, 2], dtype=torch.int32)
    src, kept = carry_map(old, new)
    pos = {int(p): i for i, p in enumerate(old)}
    for j, p in enumerate(new.tolist()):
        assert bool(kept[j]) == (p in pos)
        if p in pos:
            assert int(src[j]) == pos[p]

    param = nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.randn(5)
    opt.step()
    state = opt.state[param]
    before = {k: v.clone() for k, v in state.items()}
    exp_avg_ref = torch.tensor([before["exp_avg"][pos[p]] if p in pos else 0.0 for p in new.tolist()])
    exp_avg_sq_ref = torch.tensor([before["exp_avg_sq"][pos[p]] if p in pos else 0.0 for p in new.tolist()])
    ptr = state["exp_avg"].data_ptr()

    class Wrapped:  # accelerate's AcceleratedOptimizer keeps the torch optimizer in `.optimizer`
        optimizer = opt

    remap_optimizer_state_(Wrapped(), param, src, kept)
    assert torch.equal(state["exp_avg"], exp_avg_ref)
    assert torch.equal(state["exp_avg_sq"], exp_avg_sq_ref)
    assert torch.equal(state["step"], before["step"])
    assert state["exp_avg"].data_ptr() == ptr  # in place: the optimizer keeps its references


def test_check_indices_names_the_module():
    with pytest.raises(ValueError, match="layers.0.q_proj.*different shapes"):
        check_indices(torch.tensor([3, 12], dtype=torch.int32), 12, "layers.0.q_proj")


class ToyLayer(SparseDeltaLayer):
    sparse_prefix = "toy_"
    adapter_layer_names = ("toy_values",)
    other_param_names = ("toy_indices", "toy_residual_indices", "toy_residual_values", "toy_ready", "toy_shape")


class ToyLinear(nn.Module, ToyLayer):
    def __init__(self, base_layer, k):
        super().__init__()
        ToyLayer.__init__(self, base_layer)
        self._active_adapter = "default"
        self.add_sparse_adapter("default", k)

    def forward(self, x, *args, **kwargs):
        return self.sparse_forward(x, *args, **kwargs)


def _toy(seed=0, k=6, dtype=torch.float32):
    torch.manual_seed(seed)
    layer = ToyLinear(nn.Linear(5, 4, dtype=dtype), k)
    layer.set_sparse_state_("default", _unique_indices(20, k, seed), torch.randn(k))
    layer.set_sparse_state_(
        "default",
        layer.toy_indices["default"],
        layer.toy_values["default"].detach(),
        residual_indices=torch.tensor([int(i) for i in range(20) if i not in layer.toy_indices["default"]][:3]),
        residual_values=torch.randn(3),
    )
    return layer


def test_layer_merge_unmerge_and_delta_weight():
    """merged == unmerged outputs, unmerge restores W0 exactly in fp32, get_delta_weight == dense reference."""
    layer = _toy()
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(3, 5)
    y = layer(x)
    s = layer.sparse_state("default")
    ref = dense_delta((4, 5), s["indices"], s["values"]) + dense_delta(
        (4, 5), s["residual_indices"], s["residual_values"]
    )
    torch.testing.assert_close(layer.get_delta_weight("default"), ref, atol=0, rtol=0)
    torch.testing.assert_close(y, nn.functional.linear(x, w0 + ref, layer.base_layer.bias), atol=1e-6, rtol=1e-6)
    layer.merge()
    assert torch.equal(layer(x), y)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-7, rtol=0)


def test_layer_load_resizes_the_residual_and_rejects_foreign_indices():
    src = _toy(seed=0)
    dst = ToyLinear(nn.Linear(5, 4), 6)
    dst.base_layer.load_state_dict(src.base_layer.state_dict())
    assert dst.toy_residual_indices["default"].numel() == 0
    dst.load_state_dict(src.state_dict())
    x = torch.randn(2, 5)
    assert torch.equal(dst(x), src(x))
    assert dst.is_ready("default")

    big = src.state_dict()
    big["toy_indices.default"] = big["toy_indices.default"].clone()
    big["toy_indices.default"][0] = 20
    with pytest.raises(ValueError, match="indexes entry 20"):
        ToyLinear(nn.Linear(5, 4), 6).load_state_dict(big)
    with pytest.raises(ValueError, match="expects 5"):
        ToyLinear(nn.Linear(5, 4), 5).load_state_dict(src.state_dict())


_TRITON_CHECK = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from hf_plugins.tuners import _sparse_delta_ops as S
from hf_plugins.tuners import _sparse_delta_triton as K
from hf_plugins.tuners._sparse_delta_autograd import sparse_delta_linear

g = torch.Generator().manual_seed(0)
cases = 0
for wdtype in (torch.float32, torch.bfloat16, torch.float16):
    for idx_dtype in (torch.int32, torch.int64):
        for vdtype in (torch.float32, torch.bfloat16):
            for alpha in (1.0, -1.0):
                w = (torch.randn(37, 53, generator=g) * 3).to(wdtype)
                idx = torch.randperm(w.numel(), generator=g)[:700].to(idx_dtype)
                # values at every scale, so that the single rounding to bf16/fp16 really decides the result
                vals = (torch.randn(700, generator=g) * torch.logspace(-6, 1, 700)).to(vdtype)
                assert K.usable(w, idx, vals)
                fast = S.add_sparse_(w.clone(), idx, vals, alpha)
                usable, K.usable = K.usable, lambda *a: False
                try:
                    ref = S.add_sparse_(w.clone(), idx, vals, alpha)
                finally:
                    K.usable = usable
                assert torch.equal(fast, ref), (wdtype, idx_dtype, vdtype, alpha, (fast != ref).sum())
                cases += 1
# the autograd function end to end: forward and value gradients through the kernel equal the ATen path
x = torch.randn(4, 53, generator=g).to(torch.bfloat16)
w = torch.randn(37, 53, generator=g).to(torch.bfloat16)
idx = torch.randperm(w.numel(), generator=g)[:300].to(torch.int32)
outs = []
for use in (True, False):
    usable, K.usable = K.usable, (usable if use else (lambda *a: False))
    v = torch.zeros(300, requires_grad=True)
    with torch.no_grad():
        v.copy_(torch.randn(300, generator=torch.Generator().manual_seed(1)) * 0.01)
    y = sparse_delta_linear(x, w, None, [idx], [v])
    y.float().square().sum().backward()
    outs.append((y, v.grad))
    K.usable = usable
assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
print("OK", cases)
"""


def test_triton_add_sparse_equals_the_aten_path_bit_for_bit():
    """The one-launch Triton form of `add_sparse_` (used on CUDA) runs in Triton's CPU interpreter and must give the
    ATen path's weights bit for bit: fp32/bf16/fp16 weights, int32/int64 indices, fp32/bf16 values, alpha +-1; and
    the autograd function's output and value gradients through it must equal the ATen path's."""
    pytest.importorskip("triton")
    assert "OK 24" in run_in_interpreter(_TRITON_CHECK)


_ZERO_ADD_CHECK = r"""
import torch
from hf_plugins.tuners import _sparse_delta_ops as S
from hf_plugins.tuners import _sparse_delta_triton as K
from hf_plugins.tuners._sparse_delta_autograd import sparse_delta_linear

g = torch.Generator().manual_seed(0)
cases = 0
for wdtype in (torch.float32, torch.bfloat16):
    for with_keep in (False, True):
        for nz in (0, 1, 2500):  # the zero set spans several programs of the kernel
            w = (torch.randn(61, 97, generator=g) * 3).to(wdtype)
            perm = torch.randperm(w.numel(), generator=g)
            idx, zero = perm[:900].to(torch.int32), perm[900 : 900 + nz].to(torch.int32)
            vals = (torch.randn(900, generator=g) * torch.logspace(-6, 1, 900)).float()
            keep = (torch.rand(900, generator=g) > 0.3).to(torch.uint8) if with_keep else None
            fast = S.zero_add_(w.clone(), zero, idx, vals, keep)
            usable, K.usable = K.usable, lambda *a: False
            try:
                ref = S.zero_add_(w.clone(), zero, idx, vals, keep)
            finally:
                K.usable = usable
            # and a third way: dense arithmetic in fp32, one rounding
            dense = w.float().view(-1).clone()
            dense[zero.long()] = 0
            base = dense[idx.long()] * (keep.float() if keep is not None else 1.0)
            dense[idx.long()] = base + vals
            assert torch.equal(fast, ref), (wdtype, with_keep, nz)
            assert torch.equal(fast.view(-1), dense.to(wdtype)), (wdtype, with_keep, nz)
            cases += 1
print("OK", cases)
"""


def test_triton_zero_add_equals_the_aten_path_and_a_dense_reference():
    """SEFT's one-launch effective-weight kernel (zero the re-pruned set R \\ A, add δ over a base masked by
    `keep`) in Triton's CPU interpreter: bit for bit the ATen path and a dense fp32 computation with one rounding."""
    pytest.importorskip("triton")
    assert "OK 12" in run_in_interpreter(_ZERO_ADD_CHECK)


def test_triton_path_is_not_used_off_cuda_or_for_fp64():
    from hf_plugins.tuners import _sparse_delta_triton as K

    w, idx, v = torch.zeros(4, 4), torch.tensor([1, 2], dtype=torch.int32), torch.ones(2)
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        assert not K.usable(w, idx, v)  # CPU tensors take the ATen path
    assert not K.usable(w.double(), idx, v)
    assert not K.usable(w.t(), idx, v)  # non-contiguous


def test_triton_path_accepts_parameters_in_the_interpreter():
    """A LIFT/SEFT values tensor is an `nn.Parameter`: the kernel must take it (an exact-type check once sent every
    trainable delta down the five-launch ATen path on the GPU)."""
    pytest.importorskip("triton")
    code = (
        "import torch\n"
        "from hf_plugins.tuners import _sparse_delta_triton as K\n"
        "w = torch.zeros(4, 4, dtype=torch.bfloat16)\n"
        "idx = torch.tensor([1, 5], dtype=torch.int32)\n"
        "v = torch.nn.Parameter(torch.ones(2))\n"
        "assert K.usable(w, idx, v) and K.usable(torch.nn.Parameter(w, requires_grad=False), idx, v)\n"
        "print('OK')\n"
    )
    assert "OK" in run_in_interpreter(code, timeout=120)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_add_sparse_on_cuda_equals_the_aten_path(dtype, monkeypatch):
    """On the GPU, with the compiled kernel (hardware conversions, not the interpreter's)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from hf_plugins.tuners import _sparse_delta_triton as K

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(896, 4864, generator=g) * 3).to(dtype).cuda()
    idx = torch.randperm(w.numel(), generator=g)[:50_000].to(torch.int32).cuda()
    vals = (torch.randn(50_000, generator=g) * torch.logspace(-6, 1, 50_000)).cuda()
    assert K.usable(w, idx, vals)
    for alpha in (1.0, -1.0):
        fast = add_sparse_(w.clone(), idx, vals, alpha)
        with monkeypatch.context() as m:
            m.setattr(K, "usable", lambda *a: False)
            ref = add_sparse_(w.clone(), idx, vals, alpha)
        assert torch.equal(fast, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_zero_add_on_cuda_equals_a_dense_reference(dtype):
    """SEFT's zero-and-add kernel compiled for the GPU: W[Z] = 0, W[A] = round(keep * W[A] + δ), against dense fp32
    arithmetic with one rounding."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from hf_plugins.tuners import _sparse_delta_ops as S

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(896, 4864, generator=g) * 3).to(dtype)
    perm = torch.randperm(w.numel(), generator=g)
    idx, zero = perm[:50_000].to(torch.int32), perm[50_000:150_000].to(torch.int32)
    vals = torch.randn(50_000, generator=g) * torch.logspace(-6, 1, 50_000)
    keep = (torch.rand(50_000, generator=g) > 0.2).to(torch.uint8)
    dense = w.float().view(-1).clone()
    dense[zero.long()] = 0
    dense[idx.long()] = dense[idx.long()] * keep.float() + vals
    got = S.zero_add_(w.cuda(), zero.cuda(), idx.cuda(), vals.cuda(), keep.cuda()).cpu()
    assert torch.equal(got.view(-1), dense.to(dtype))
