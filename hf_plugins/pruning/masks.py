"""Mask helpers shared by the pruners: exact-count selection, N:M groups, and sparsity measurement."""

from __future__ import annotations

import torch


__all__ = ["check_n_m", "count_to_prune", "lowest_k_mask", "n_m_mask", "parse_n_m", "row_mask", "sparsity_of"]


def count_to_prune(n: int, sparsity: float) -> int:
    """floor(n * sparsity), robust to float error (a measured ratio zeros / n gives back exactly `zeros`)."""
    return int(n * sparsity + 1e-6)


def parse_n_m(n_m: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """Parse "2:4" (or `(2, 4)`) into `(n, m)`: `n` zeros in every group of `m` consecutive input columns.

    This is the count the Wanda and SparseGPT reference code prunes (`prune_n` of every `prune_m`); for the
    2:4 and 4:8 patterns of the papers it coincides with NVIDIA's "n non-zeros of m" reading.
    """
    if n_m is None:
        return None
    if isinstance(n_m, str):
        parts = n_m.replace("/", ":").split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"`n_m` must look like '2:4' (N zeros in every M columns), got {n_m!r}")
        n, m = (int(p) for p in parts)
    elif (
        isinstance(n_m, (tuple, list))
        and len(n_m) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in n_m)
    ):
        n, m = n_m
    else:
        raise ValueError(f"`n_m` must look like '2:4' or (2, 4) (N zeros in every M columns), got {n_m!r}")
    if not 0 < n < m:
        raise ValueError(f"`n_m` needs 0 < N < M, got {n}:{m}")
    return n, m


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (True = prune) of exactly the `k` smallest entries of `scores` (ties broken by position)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.argsort(scores.reshape(-1), stable=True)[:k]
        mask[idx] = True
    return mask.view_as(scores)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest `floor(n_cols * sparsity)` scores of every row (Wanda's comparison group)."""
    k = count_to_prune(scores.shape[1], sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        mask.scatter_(1, idx, True)
    return mask


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the `n` lowest scores in every group of `m` consecutive columns of every row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pruning with M={m} needs the input dimension to be divisible by M, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.argsort(groups, dim=2, stable=True)[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def check_n_m(weight: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of `m` consecutive input columns of every row holds at least `n` zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(dim=2)
    return bool((zeros >= n).all())


def sparsity_of(weight: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return float((weight == 0).sum()) / weight.numel()
