"""LIFT's selection of principal weights: top-k entries by magnitude of a rank-q approximation (paper Alg. 1).

Three ways to get the rank-q approximation W' of a matrix W (m x n), all in fp32 and batched over matrices of
one shape:

- "eigh" (default): top-q eigenvectors of the smaller Gram matrix, W' = W V_q V_q^T (from W^T W when m >= n)
  or U_q U_q^T W (from W W^T). Equal to the truncated SVD up to round-off; tests check it against
  "svd" and report the overlap of the masks.
- "svd": the exact truncated SVD from `torch.linalg.svd` (the official code's route, `torch.svd` every refresh).
- "randomized": randomized subspace iteration with a seeded generator (`oversample`, `niter`). Cheap but only
  accurate when the spectrum decays past q; on matrices with flat spectra the mask can differ a lot (see
  docs/lift.md for measured overlaps). The official 'rand' path passes `niter=args.niter` to `svd_lowrank`, an
  argument its training script never defines, so there is nothing to match there.

The selection always takes the LARGEST magnitudes (`largest=True` explicitly), as the paper describes: the official
configs pass `mask_type=lift_sparse`, from which the official optimizer derives `largest = "largest" in mask_type`,
i.e. False (its first release used `..._largest_sparse`).
"""

from __future__ import annotations

import torch


__all__ = ["SELECTION_METHODS", "low_rank_approximation", "select_principal_indices"]

SELECTION_METHODS = ("eigh", "svd", "randomized")


def _eigh_lra(w: torch.Tensor, q: int) -> torch.Tensor:
    m, n = w.shape[-2:]
    if m >= n:
        _, vecs = torch.linalg.eigh(w.mT @ w)  # ascending eigenvalues
        v = vecs[..., -q:]
        return (w @ v) @ v.mT
    _, vecs = torch.linalg.eigh(w @ w.mT)
    u = vecs[..., -q:]
    return u @ (u.mT @ w)


def _svd_lra(w: torch.Tensor, q: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return (u[..., :q] * s[..., None, :q]) @ vh[..., :q, :]


def _randomized_lra(w: torch.Tensor, q: int, oversample: int, niter: int, seed: int) -> torch.Tensor:
    m, n = w.shape[-2:]
    width = min(q + oversample, m, n)
    gen = torch.Generator(device=w.device).manual_seed(seed)
    omega = torch.randn(*w.shape[:-2], n, width, device=w.device, dtype=w.dtype, generator=gen)
    basis, _ = torch.linalg.qr(w @ omega)
    for _ in range(niter):
        basis, _ = torch.linalg.qr(w.mT @ basis)
        basis, _ = torch.linalg.qr(w @ basis)
    ub, s, vh = torch.linalg.svd(basis.mT @ w, full_matrices=False)
    return ((basis @ ub[..., :q]) * s[..., None, :q]) @ vh[..., :q, :]


def low_rank_approximation(
    w: torch.Tensor,
    q: int | None,
    method: str = "eigh",
    oversample: int = 16,
    niter: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """Best rank-q approximation of `w` (`(..., m, n)`, computed in fp32 or fp64); `q=None` or q >= min(m, n)
    returns `w` itself (plain magnitude selection)."""
    if method not in SELECTION_METHODS:
        raise ValueError(f"`selection_method` must be one of {SELECTION_METHODS}, got {method!r}")
    w = w if w.dtype in (torch.float32, torch.float64) else w.float()
    if q is None or q >= min(w.shape[-2:]):
        return w
    if method == "eigh":
        return _eigh_lra(w, q)
    if method == "svd":
        return _svd_lra(w, q)
    return _randomized_lra(w, q, oversample, niter, seed)


def select_principal_indices(
    w: torch.Tensor,
    k: int,
    q: int | None,
    method: str = "eigh",
    oversample: int = 16,
    niter: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """Flat positions (int32, sorted ascending, `(..., k)`) of the k largest entries of |rank-q approx of w|."""
    approx = low_rank_approximation(w, q, method, oversample, niter, seed)
    scores = approx.abs().flatten(-2)
    del approx
    idx = torch.topk(scores, k, dim=-1, largest=True, sorted=False).indices
    return torch.sort(idx, dim=-1).values.to(torch.int32)
