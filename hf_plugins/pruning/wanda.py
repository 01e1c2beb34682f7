"""Wanda: prune by |W_ij| * ||X_j||_2 within each output row, no weight update.

Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models" (arXiv 2306.11695,
ICLR 2024), Eq. (1) and Section 3: the score of weight W_ij is |W_ij| times the l2 norm of input feature j over
all calibration tokens; the comparison group is each output row (Section 3, "per output"). For N:M the same
score is compared inside every group of M consecutive input columns of a row.

The reference code (github.com/locuslab/wanda, `lib/layerwrapper.py`) keeps a running mean of squared norms;
we keep the plain sum of squares over all tokens, which differs by a positive constant per matrix and so gives
the same ranking. Its `--use_variant` (per-row adaptive threshold) is not implemented.
"""

from __future__ import annotations

import torch

from .masks import n_m_mask, row_mask


__all__ = ["WandaStats", "prune_wanda_", "wanda_mask", "wanda_scores"]


class WandaStats:
    """Accumulates sum_t x_tj^2 for every input feature j of one linear layer (feed it the layer's inputs)."""

    def __init__(self, in_features: int, device=None):
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.sq_norm += (x * x).sum(dim=0)
        self.tokens += x.shape[0]


def wanda_scores(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| * sqrt(sum_t x_tj^2) (paper Eq. 1)."""
    return weight.detach().abs().float() * torch.sqrt(sq_norm.float()).unsqueeze(0)


def wanda_mask(
    weight: torch.Tensor, sq_norm: torch.Tensor, sparsity: float = 0.5, n_m: tuple[int, int] | None = None
) -> torch.Tensor:
    """Bool mask (True = prune): the lowest `floor(n_in * sparsity)` scores of every row, or N:M groups."""
    scores = wanda_scores(weight, sq_norm)
    if n_m is not None:
        return n_m_mask(scores, *n_m)
    return row_mask(scores, sparsity)


@torch.no_grad()
def prune_wanda_(
    linear: torch.nn.Linear, stats: WandaStats, sparsity: float = 0.5, n_m: tuple[int, int] | None = None
) -> torch.Tensor:
    """Zero the Wanda-pruned entries of `linear.weight` in place; returns the mask."""
    if stats.tokens == 0:
        raise ValueError("Wanda needs calibration inputs: the layer saw no tokens (was the hook registered?)")
    mask = wanda_mask(linear.weight, stats.sq_norm.to(linear.weight.device), sparsity, n_m)
    linear.weight.masked_fill_(mask, 0)
    return mask
