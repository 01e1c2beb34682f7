"""AlphaDecay's overlapped refresh (the spectra of the refresh due at update k computed on a worker thread, and on a
side CUDA stream, right after update k - 1) against the synchronous refresh inside update k: the same alphas,
decays and weights, across a save / load / resume."""

import io
import threading

import pytest
import torch

from hf_plugins import AlphaDecay
from hf_plugins.optim import _alphadecay_refresh
from hf_plugins.testing import tiny_model


MIN_EIGS = 8


def _grads(model, step, device="cpu"):
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * 0.5).to(device)


def _save_load(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _run(overlap, base, device="cpu", steps=7, resume_at=4):
    kw = {"lr": 2e-2, "weight_decay": 0.1, "min_eigs": MIN_EIGS, "interval": 2, "base": base}
    model = tiny_model("llama", seed=0).to(device)
    opt = AlphaDecay()(model, **kw, overlap_refresh=overlap)
    pending = []
    for step in range(1, steps + 1):
        if step == resume_at:  # a fresh model and optimizer from the saved state (a background refresh was pending)
            saved = _save_load(opt)
            fresh = tiny_model("llama", seed=1).to(device)
            fresh.load_state_dict(model.state_dict())
            model, opt = fresh, AlphaDecay()(fresh, **kw, overlap_refresh=overlap)
            opt.load_state_dict(saved)
        _grads(model, step, device)
        opt.step()
        pending.append(opt._alphadecay_pending is not None)
    return model, opt, pending


@pytest.mark.parametrize("base", ["adamw", "stable_spam"])
def test_overlapped_refresh_equals_synchronous(base, monkeypatch):
    threads = []
    original = _alphadecay_refresh.alphas_from_eigenvalues

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(_alphadecay_refresh, "alphas_from_eigenvalues", spy)
    model_a, opt_a, pending_a = _run(True, base)
    model_b, opt_b, pending_b = _run(False, base)
    # interval 2: after every odd update the refresh of the next one is under way on the worker thread
    assert pending_a == [True, False, True, False, True, False, True] and not any(pending_b)
    assert threads == ["alphadecay-esd"] * 4  # refreshes for updates 2, 4 (then dropped by the resume), 6, 8
    assert opt_a.alphadecay_table() == opt_b.alphadecay_table()
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(pa, pb), n


def test_overlap_refresh_argument():
    model = tiny_model("llama", seed=0)
    opt = AlphaDecay()(model, lr=1e-3, weight_decay=0.1, min_eigs=MIN_EIGS, interval=1)
    _grads(model, 0)
    opt.step()
    assert opt._alphadecay_pending is None  # default: overlapped only for CUDA weights
    with pytest.raises(ValueError, match="overlap_refresh"):
        AlphaDecay()(model, lr=1e-3, weight_decay=0.1, overlap_refresh="yes")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("base", ["adamw", "stable_spam"])
def test_overlapped_refresh_on_a_side_stream_equals_synchronous(base):
    """On CUDA (side stream + worker thread, the default there). The default ESD backend may hand a matrix to LAPACK
    in one run and to cuSOLVER in the other, so alphas agree to fp32 eigenvalue rounding, not bit for bit."""
    model_a, opt_a, pending_a = _run(None, base, "cuda")
    model_b, opt_b, _ = _run(False, base, "cuda")
    assert pending_a[0]
    ta, tb = opt_a.alphadecay_table(), opt_b.alphadecay_table()
    for name in ta:
        assert ta[name]["alpha"] == pytest.approx(tb[name]["alpha"], rel=1e-4), name
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4, msg=n)
