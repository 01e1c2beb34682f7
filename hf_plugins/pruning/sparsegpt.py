"""SparseGPT: second-order one-shot pruning with OBS weight updates, column block by column block.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (arXiv 2301.00774,
ICML 2023), Algorithm 1. Per linear layer, with the inputs X of the calibration tokens:

    H = (2/n) X Xᵀ + λ I,   λ = 0.01 * mean(diag H)             (percdamp 0.01, Section 3.4)
    Hinv = upper Cholesky factor of H⁻¹
    for each block of 128 columns (Section 3.3, "adaptive mask selection"):
        mask = the lowest `sparsity` fraction of W² / diag(Hinv)² over the whole block
               (N:M: the N lowest of every M columns, chosen when the loop reaches the group)
        for each column i: zero the masked weights, err = (w - q) / Hinv[i, i],
                           update the remaining columns of the block with err ⊗ Hinv[i, i:]
        lazily update all later columns with the block's accumulated errors

Input features that never fire (diag H == 0) get H_jj = 1 and a zeroed column, as in the reference code
(github.com/IST-DASLab/sparsegpt, `sparsegpt.py`). Scaling H by a constant changes neither the mask nor the
update, so we normalise by the number of tokens. Everything runs in fp32 on the weight's device.
"""

from __future__ import annotations

import torch

from .masks import count_to_prune


__all__ = ["SparseGPTStats", "prune_sparsegpt_", "sparsegpt_prune"]


class SparseGPTStats:
    """Accumulates the Hessian H = (2/n) sum_t x_t x_tᵀ of one linear layer's inputs (running mean in fp32)."""

    def __init__(self, in_features: int, device=None):
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        total = self.tokens + n
        self.hessian.mul_(self.tokens / total)
        self.hessian.addmm_(x.t(), x, alpha=2.0 / total)
        self.tokens = total


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.5,
    n_m: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Return the pruned-and-updated weight (fp32, same shape) for `weight` (out x in) and its input Hessian."""
    W = weight.detach().float().clone()
    rows, cols = W.shape
    if n_m is not None:
        prune_n, prune_m = n_m
        if cols % prune_m:
            raise ValueError(
                f"N:M pruning with M={prune_m} needs the input dimension to be divisible by M, got {cols}"
            )
        if blocksize % prune_m:
            raise ValueError(f"`blocksize` ({blocksize}) must be a multiple of M={prune_m}")
    H = hessian.detach().float().clone().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    del H, L

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if n_m is None:
            saliency = W1.pow(2) / d.pow(2).unsqueeze(0)
            k = count_to_prune(saliency.numel(), sparsity)
            mask1 = torch.zeros(saliency.numel(), dtype=torch.bool, device=W.device)
            if k > 0:
                mask1[torch.argsort(saliency.reshape(-1), stable=True)[:k]] = True
            mask1 = mask1.view(rows, count)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            if n_m is not None and i % prune_m == 0:
                sal = W1[:, i : i + prune_m].pow(2) / d[i : i + prune_m].pow(2).unsqueeze(0)
                idx = torch.argsort(sal, dim=1, stable=True)[:, :prune_n]
                mask1[:, i : i + prune_m].scatter_(1, idx, True)
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0)
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1.0)  # OBS update of the block's remaining columns
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


@torch.no_grad()
def prune_sparsegpt_(
    linear: torch.nn.Linear,
    stats: SparseGPTStats,
    sparsity: float = 0.5,
    n_m: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Prune `linear.weight` in place with SparseGPT (masks and OBS updates); returns the pruned mask."""
    if stats.tokens == 0:
        raise ValueError("SparseGPT needs calibration inputs: the layer saw no tokens (was the hook registered?)")
    new = sparsegpt_prune(linear.weight, stats.hessian, sparsity, n_m, blocksize, percdamp)
    linear.weight.copy_(new.to(linear.weight.dtype))
    return linear.weight == 0
