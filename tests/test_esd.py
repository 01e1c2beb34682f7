"""Batched ESD analysis: Hill alpha on synthetic power laws, batched Gram eigenvalues against per-matrix eigvalsh and
svdvals, and the `hf-plugins esd` command."""

import csv
import json
import math

import pytest
import torch

from hf_plugins import esd_alphas, gram_eigenvalues, hill_alpha, model_esd
from hf_plugins.testing import tiny_model


@pytest.mark.parametrize("a", [2.0, 3.0, 4.0])
def test_hill_alpha_recovers_a_pareto_exponent(a):
    """2048 eigenvalues drawn from p(lambda) ~ lambda^-a (lambda >= 1) by inverse CDF: the median-xmin Hill
    estimate is within 0.15 of a (one seed gives 1.99 / 2.99 / 3.95)."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2048, generator=g, dtype=torch.float64)
    eigs = torch.sort((1.0 - u) ** (-1.0 / (a - 1.0))).values
    assert float(hill_alpha(eigs)) == pytest.approx(a, abs=0.15)


def test_hill_alpha_hand_example():
    """N=4, xmin_pos=2: i=2, tail [e, e^3], alpha = 1 + 2 / (ln(e/e) + ln(e^3/e)) = 1 + 2/2 = 2."""
    eigs = torch.tensor([0.1, 0.5, math.e, math.e**3])
    assert float(hill_alpha(eigs)) == pytest.approx(2.0)
    assert math.isnan(float(hill_alpha(torch.tensor([0.0, 0.0, 0.0, 1.0]))))  # xmin = 0: undefined
    with pytest.raises(ValueError, match="xmin_pos"):
        hill_alpha(eigs, xmin_pos=1.0)


def _matrices():
    g = torch.Generator().manual_seed(0)
    shapes = [(48, 32), (48, 32), (32, 80), (48, 32), (32, 80), (64, 64), (20, 100)]
    return [torch.randn(s, generator=g) / math.sqrt(s[1]) for s in shapes]


@pytest.mark.parametrize("max_batch_bytes", [2**31, 1])  # one batch per shape, and one matrix per call
def test_batched_eigenvalues_equal_per_matrix_eigvalsh_and_svdvals(max_batch_bytes):
    ws = _matrices()
    ours = gram_eigenvalues(ws, max_batch_bytes=max_batch_bytes)
    for w, e in zip(ws, ours):
        w64 = w.double()
        gram = w64.T @ w64 if w.shape[0] >= w.shape[1] else w64 @ w64.T
        assert e.dtype == torch.float32 and e.shape == (min(w.shape),)
        torch.testing.assert_close(e.double(), torch.linalg.eigvalsh(gram), atol=1e-5, rtol=1e-4)
        sv2 = torch.linalg.svdvals(w64).flip(0) ** 2
        torch.testing.assert_close(e.double(), sv2, atol=1e-5, rtol=1e-4)


def test_alpha_from_gram_matches_alpha_from_svdvals():
    """The Gram route squares the condition number, but only the upper half of the spectrum enters alpha."""
    ws = _matrices()
    ours = esd_alphas(ws)
    for w, a in zip(ws, ours):
        ref = float(hill_alpha(torch.linalg.svdvals(w.double()).flip(0) ** 2))
        assert a == pytest.approx(ref, abs=1e-3)


def test_model_esd_rows_and_cli(tmp_path):
    model = tiny_model("llama")
    rows = model_esd(model, min_eigs=8)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert [r["name"] for r in rows] == linears
    assert rows[0]["layer"] == 0 and rows[0]["module_type"] == "q_proj"
    assert not rows[0]["alphadecay"] and not rows[-1]["alphadecay"] and rows[1]["alphadecay"]
    w = model.get_submodule(rows[3]["name"]).weight
    assert rows[3]["alpha"] == pytest.approx(esd_alphas([w])[0])

    pytest.importorskip("matplotlib")
    from hf_plugins.cli.main import main

    assert main(["esd", "tiny", "--min_eigs", "8", "--output_dir", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "esd.json").read_text())
    assert [r["name"] for r in table] == linears
    with open(tmp_path / "esd.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert float(csv_rows[3]["alpha"]) == pytest.approx(rows[3]["alpha"], rel=1e-6)
    assert (tmp_path / "esd.png").stat().st_size > 0


@pytest.mark.parametrize("max_batch_bytes", [2**31, 1])
def test_cpu_threads_backend_equals_per_matrix_eigvalsh(max_batch_bytes):
    """The `cpu_threads` backend (Grams on the weights' device, LAPACK per matrix in a thread pool) against fp64
    per-matrix eigvalsh, and the same alphas as the `cuda` (device-native batched) backend."""
    ws = _matrices()
    ours = gram_eigenvalues(ws, max_batch_bytes=max_batch_bytes, backend="cpu_threads", cpu_threads=2)
    for w, e in zip(ws, ours):
        w64 = w.double()
        gram = w64.T @ w64 if w.shape[0] >= w.shape[1] else w64 @ w64.T
        assert e.dtype == torch.float32 and e.shape == (min(w.shape),) and e.device == w.device
        torch.testing.assert_close(e.double(), torch.linalg.eigvalsh(gram), atol=1e-5, rtol=1e-4)
    a_threads = esd_alphas(ws, backend="cpu_threads", cpu_threads=2)
    a_device = esd_alphas(ws, backend="cuda")
    assert a_threads == pytest.approx(a_device, abs=1e-4)
    assert torch.get_num_threads() >= 1  # the pool's single-threaded setting was restored


def test_backend_resolution_and_bad_backend():
    from hf_plugins.optim.esd import resolve_backend

    assert resolve_backend("auto", cpu_threads=16, device_type="cuda") == "hybrid"
    assert resolve_backend("auto", cpu_threads=16, device_type="cpu") == "cpu_threads"
    assert resolve_backend("auto", cpu_threads=2, device_type="cuda") == "cuda"
    assert resolve_backend("hybrid", cpu_threads=16, device_type="cpu") == "cpu_threads"
    assert resolve_backend("cuda") == "cuda"
    with pytest.raises(ValueError, match="`backend`"):
        esd_alphas(_matrices(), backend="magma")


@pytest.mark.parametrize("device_workers", [1, 2])
def test_hybrid_queue_decomposes_every_matrix_once_in_order(device_workers):
    """The hybrid backend's shared queue (LAPACK threads + `device_workers` threads on the device copies; here all on
    CPU): every matrix of every chunk comes back in its place, equal to a per-matrix fp64 eigvalsh."""
    from hf_plugins.optim._esd_eigvalsh import eigvalsh_host_pool as _eigvalsh_host_pool

    g = torch.Generator().manual_seed(0)
    chunks = []
    for b, k in ((5, 24), (3, 40), (1, 8)):
        w = torch.randn(b, 2 * k, k, generator=g)
        gram = w.mT @ w
        chunks.append((gram.clone(), None, gram))
    out = _eigvalsh_host_pool(chunks, cpu_threads=2, use_device=True, device_workers=device_workers)
    for (host, _, _), eigs in zip(chunks, out):
        assert eigs.shape == host.shape[:2]
        torch.testing.assert_close(eigs.double(), torch.linalg.eigvalsh(host.double()), atol=1e-4, rtol=1e-4)


def test_queue_order_and_endgame_rule():
    """Largest Grams first; once both sides have timed a size, a LAPACK thread stops taking matrices that the device
    workers finish sooner (here: 3 left x 9 ms on 1 device = 27 ms < 60 ms on a core), the device takes them all."""
    from hf_plugins.optim._esd_eigvalsh import _Queue

    q = _Queue([128, 896, 128, 896, 896, 896, 896], device_workers=1)
    assert [q.sizes[k] for k in q.order] == [896] * 5 + [128] * 2
    assert q.take("cpu") == 1 and q.take("device") == 3  # nothing timed yet: both sides take
    q.timed("cpu", 1, 0.060)
    q.timed("device", 3, 0.009)
    assert q.take("cpu") == 4  # 128 not timed on the device yet: no prediction, the CPU takes it
    q.timed("device", 0, 0.002)
    assert q.take("cpu") is None  # left: 2 x 896 + 2 x 128 -> 22 ms on the device < 60 ms
    assert [q.take("device") for _ in range(5)] == [5, 6, 0, 2, None]
    q2 = _Queue([896] * 20, device_workers=1)
    q2.timed("cpu", 0, 0.060)
    q2.timed("device", 0, 0.009)
    assert q2.take("cpu") == 0  # 20 x 9 ms > 60 ms: the core is worth using


@pytest.mark.parametrize("backend", ["cuda", "cpu_threads"])
def test_non_finite_matrix_gives_nan_eigenvalues_and_alpha(backend):
    """A weight holding NaN or inf gets NaN eigenvalues and a NaN alpha (LAPACK raised on it before); the other
    matrices of the same batched chunk are unaffected."""
    ws = _matrices()
    ws[1] = ws[1].clone()
    ws[1][0, 0] = math.nan
    ws[4] = ws[4].clone()
    ws[4][2, 3] = math.inf
    eigs = gram_eigenvalues(ws, backend=backend, cpu_threads=2)
    alphas = esd_alphas(ws, backend=backend, cpu_threads=2)
    finite = [w for i, w in enumerate(ws) if i not in (1, 4)]
    ref = iter(esd_alphas(finite, backend=backend, cpu_threads=2))
    for i, (w, e, a) in enumerate(zip(ws, eigs, alphas)):
        if i in (1, 4):
            assert e.shape == (min(w.shape),) and e.isnan().all() and math.isnan(a)
        else:
            w64 = w.double()
            gram = w64.T @ w64 if w.shape[0] >= w.shape[1] else w64 @ w64.T
            torch.testing.assert_close(e.double(), torch.linalg.eigvalsh(gram), atol=1e-5, rtol=1e-4)
            assert a == next(ref)
