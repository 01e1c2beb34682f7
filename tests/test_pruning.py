"""One-shot pruning: Wanda, SparseGPT and magnitude against references computed another way."""

import json

import pytest
import torch

from hf_plugins.pruning import (
    SparseGPTStats,
    WandaStats,
    arithmetic_texts,
    calibration_windows,
    check_n_m,
    magnitude_mask,
    parse_n_m,
    prunable_linears,
    prune_model,
    sparsegpt_prune,
    sparsity_report,
    wanda_mask,
)
from hf_plugins.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def calib():
    return calibration_windows(tiny_tokenizer(), arithmetic_texts(100), nsamples=6, seqlen=48, seed=0)


def _synthetic_layer(rows=48, cols=64, tokens=1024, seed=0):
    """A weight and correlated inputs with uneven feature scales (outlier features, as in LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.exp(torch.randn(cols, generator=g))
    X = (torch.randn(tokens, cols, generator=g) @ mix) * scale
    return W, X


def test_wanda_mask_equals_a_direct_fp64_reference():
    """Score |W_ij| * ||X_j||_2 (Wanda Eq. 1); each row zeros its floor(n_in * s) lowest scores."""
    W, X = _synthetic_layer()
    stats = WandaStats(W.shape[1])
    for chunk in X.split(100):  # streamed in batches, as the hooks see it
        stats.add(chunk)
    mask = wanda_mask(W, stats.sq_norm, sparsity=0.5)
    Wd, Xd = W.double(), X.double()
    norms = [sum(float(Xd[t, j]) ** 2 for t in range(Xd.shape[0])) ** 0.5 for j in range(Xd.shape[1])]
    k = int(W.shape[1] * 0.5)
    for i in range(W.shape[0]):
        scores = [abs(float(Wd[i, j])) * norms[j] for j in range(W.shape[1])]
        threshold = sorted(scores)[k - 1]  # the largest pruned score of the row
        expected = torch.tensor([s <= threshold for s in scores])
        assert torch.equal(mask[i], expected), f"row {i}"


def test_wanda_n_m_prunes_the_lowest_scores_of_each_group():
    W, X = _synthetic_layer()
    stats = WandaStats(W.shape[1])
    stats.add(X)
    mask = wanda_mask(W, stats.sq_norm, n_m=(2, 4))
    scores = (W.abs() * X.pow(2).sum(0).sqrt()).reshape(W.shape[0], -1, 4)
    m = mask.reshape(W.shape[0], -1, 4)
    assert torch.equal(m.sum(-1), torch.full(m.shape[:2], 2))
    pruned_max = scores.masked_fill(~m, -1).amax(-1)
    kept_min = scores.masked_fill(m, float("inf")).amin(-1)
    assert (pruned_max <= kept_min).all()


def test_magnitude_is_per_matrix_by_default_and_per_row_on_request():
    W, _ = _synthetic_layer()
    mask = magnitude_mask(W, 0.3)
    assert int(mask.sum()) == int(W.numel() * 0.3)
    assert W.abs()[mask].max() <= W.abs()[~mask].min()
    rows = magnitude_mask(W, 0.25, per_row=True)
    assert torch.equal(rows.sum(1), torch.full((W.shape[0],), 16))
    assert not torch.equal(rows, magnitude_mask(W, 0.25))


def _reconstruction_error(W, W_hat, X):
    return float(torch.linalg.norm(X @ W.t() - X @ W_hat.t()))


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_sparsegpt_reconstructs_the_layer_better_than_magnitude_and_wanda(n_m):
    """SparseGPT paper Section 3: the OBS updates lower ||WX - W_hat X|| below mask-only pruning."""
    W, X = _synthetic_layer()
    h = SparseGPTStats(W.shape[1])
    for chunk in X.split(256):
        h.add(chunk)
    W_sgpt = sparsegpt_prune(W, h.hessian, 0.5, n_m, blocksize=32)
    wstats = WandaStats(W.shape[1])
    wstats.add(X)
    W_mag = W.masked_fill(magnitude_mask(W, 0.5, n_m), 0)
    W_wanda = W.masked_fill(wanda_mask(W, wstats.sq_norm, 0.5, n_m), 0)
    W_own_mask = W.masked_fill(W_sgpt == 0, 0)  # SparseGPT's mask without its weight updates
    err = {k: _reconstruction_error(W, v, X) for k, v in {"sgpt": W_sgpt, "mag": W_mag, "wanda": W_wanda}.items()}
    err["mask only"] = _reconstruction_error(W, W_own_mask, X)
    assert err["sgpt"] < 0.8 * err["mag"], err
    assert err["sgpt"] < err["wanda"], err
    assert err["sgpt"] < err["mask only"], err
    assert abs(float((W_sgpt == 0).float().mean()) - 0.5) < 1e-9
    if n_m:
        assert check_n_m(W_sgpt, *n_m)


def _sparsegpt_unblocked_reference(W, H, n, m, percdamp=0.01):
    """Algorithm 1 of the SparseGPT paper without the lazy block updates, in fp64: every column's error is
    propagated to all later columns at once."""
    W, H = W.double().clone(), H.double().clone()
    H += percdamp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i in range(W.shape[1]):
        if i % m == 0:
            sal = W[:, i : i + m] ** 2 / Hinv.diagonal()[i : i + m] ** 2
            for r in range(W.shape[0]):
                for j in sorted(range(m), key=lambda c: float(sal[r, c]))[:n]:
                    mask[r, i + j] = True
        err = torch.where(mask[:, i], W[:, i], torch.zeros_like(W[:, i])) / Hinv[i, i]
        W[:, i:] -= err[:, None] * Hinv[i, i:][None, :]
        W[mask[:, i], i] = 0
    return W


def test_sparsegpt_lazy_block_updates_equal_the_unblocked_algorithm():
    """With N:M the mask does not depend on the block size, so blocks of 8 columns with lazy updates must equal
    the column-by-column algorithm."""
    W, X = _synthetic_layer(rows=12, cols=32, tokens=256)
    h = SparseGPTStats(32)
    h.add(X)
    ours = sparsegpt_prune(W, h.hessian, n_m=(2, 4), blocksize=8)
    ref = _sparsegpt_unblocked_reference(W, h.hessian, 2, 4)
    assert torch.equal(ours == 0, ref == 0)
    torch.testing.assert_close(ours.double(), ref, atol=2e-4, rtol=1e-4)


def test_sparsegpt_hessian_is_the_running_mean_of_2xxT():
    _, X = _synthetic_layer(tokens=300)
    h = SparseGPTStats(X.shape[1])
    for chunk in X.split(70):
        h.add(chunk)
    torch.testing.assert_close(h.hessian, 2 * X.t() @ X / X.shape[0], rtol=1e-4, atol=1e-3)


def test_sequential_wanda_equals_a_full_model_rerun_reference(calib):
    """The driver replays captured block inputs; the reference re-runs the whole (partly pruned) model for every
    block, hooking that block's linears, and applies the Wanda rule directly."""
    model = tiny_model("llama")
    prune_model(model, "wanda", 0.5, calibration=calib, batch_size=3)
    ref = tiny_model("llama")
    for block in ref.model.layers:
        sq = {}
        handles = [
            lin.register_forward_hook(
                lambda mod, inp, out, name=name, sq=sq: sq.__setitem__(
                    name, sq.get(name, 0) + inp[0].reshape(-1, inp[0].shape[-1]).double().pow(2).sum(0)
                )
            )
            for name, lin in block.named_modules()
            if isinstance(lin, torch.nn.Linear)
        ]
        with torch.no_grad():
            ref(input_ids=calib, use_cache=False)
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, lin in block.named_modules():
                if isinstance(lin, torch.nn.Linear):
                    scores = lin.weight.double().abs() * sq[name].sqrt()
                    k = lin.in_features // 2
                    thr = scores.sort(dim=1).values[:, k - 1 : k]
                    lin.weight.masked_fill_(scores <= thr, 0)
    for (name, a), b in zip(prunable_linears(model).items(), prunable_linears(ref).values()):
        assert torch.equal(a.weight == 0, b.weight == 0), name
        torch.testing.assert_close(a.weight, b.weight)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
@pytest.mark.parametrize("n_m", ["2:4", "4:8"])
def test_n_m_patterns_are_exact_on_a_model(method, n_m, calib):
    model = tiny_model("qwen2")  # biases on q/k/v: the hooks must see inputs, not outputs
    report = prune_model(model, method, n_m=n_m, calibration=calib, batch_size=6)
    n, m = parse_n_m(n_m)
    for name, lin in prunable_linears(model).items():
        w = lin.weight
        zeros = (w.reshape(w.shape[0], -1, m) == 0).sum(-1)
        assert torch.equal(zeros, torch.full_like(zeros, n)), name
    assert all(row["n_m_ok"] for row in report.matrices)
    assert report.overall == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_unstructured_sparsity_is_reached_in_every_matrix(method, calib):
    model = tiny_model("llama")
    before = {n: lin.weight.clone() for n, lin in prunable_linears(model).items()}
    report = prune_model(model, method, 0.6, calibration=calib, batch_size=6)
    for row in report.matrices:
        assert row["sparsity"] == pytest.approx(0.6, abs=1.0 / row["shape"][1]), row
    measured = sparsity_report(model)
    assert [r["zeros"] for r in measured.matrices] == [r["zeros"] for r in report.matrices]
    for name, lin in prunable_linears(model).items():
        kept = lin.weight != 0
        if method == "sparsegpt":  # OBS updates change the surviving weights
            assert not torch.equal(lin.weight[kept], before[name][kept])
        else:
            assert torch.equal(lin.weight[kept], before[name][kept])
    assert model.lm_head.weight.eq(0).sum() == 0  # embeddings and lm_head are left alone


def test_bad_arguments_raise_clear_errors(calib):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="in_features divisible by M"):
        prune_model(model, "wanda", n_m="3:5", calibration=calib)
    with pytest.raises(ValueError, match="`sparsity` must be a number in"):
        prune_model(model, "wanda", 1.2, calibration=calib)
    with pytest.raises(ValueError, match="needs `calibration`"):
        prune_model(model, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match="`method` must be one of"):
        prune_model(model, "obs", 0.5)
    with pytest.raises(ValueError, match="0 < N < M"):
        parse_n_m("4:4")
    with pytest.raises(ValueError, match="look like"):
        parse_n_m("2-4")
    with pytest.raises(ValueError, match="fewer than seqlen"):
        calibration_windows(tiny_tokenizer(), ["one two"], nsamples=1, seqlen=64)
    assert prunable_linears(model)["model.layers.0.mlp.down_proj"].weight.eq(0).sum() == 0  # nothing touched


def test_calibration_windows_are_seeded_slices_of_the_text():
    tok = tiny_tokenizer()
    texts = arithmetic_texts(30)
    a = calibration_windows(tok, texts, nsamples=4, seqlen=32, seed=0)
    b = calibration_windows(tok, texts, nsamples=4, seqlen=32, seed=0)
    c = calibration_windows(tok, texts, nsamples=4, seqlen=32, seed=1)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)
    joined = [t for text in texts for t in (*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id)]
    row = a[0].tolist()
    assert any(joined[s : s + 32] == row for s in range(len(joined) - 31))


def test_cli_prune_saves_a_reloadable_pruned_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_plugins.cli.main import main

    out = tmp_path / "pruned"
    argv = ["prune", "--model", "tiny", "--method", "sparsegpt", "--sparsity", "0.5", "--nsamples", "4"]
    assert main([*argv, "--seqlen", "32", "--device", "cpu", "--output_dir", str(out)]) == 0
    info = json.loads((out / "sparsity_report.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    measured = sparsity_report(model)
    assert [r["zeros"] for r in measured.matrices] == [r["zeros"] for r in info["matrices"]]
    assert info["overall_sparsity"] == pytest.approx(0.5)
    assert info["calib_text"] == "arithmetic"
