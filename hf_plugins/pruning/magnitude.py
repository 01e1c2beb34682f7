"""Magnitude pruning: zero the smallest |W|.

The baseline of the Wanda paper (Sun et al. 2023, arXiv 2306.11695, Table 2) prunes per matrix: one threshold
over all entries of a weight matrix (`lib/prune.py::prune_magnitude` of github.com/locuslab/wanda sorts the
flattened matrix). That is our default; `per_row=True` switches to Wanda's per-output-row comparison group.
"""

from __future__ import annotations

import torch

from .masks import count_to_prune, lowest_k_mask, n_m_mask, row_mask


__all__ = ["magnitude_mask", "prune_magnitude_"]


def magnitude_mask(
    weight: torch.Tensor, sparsity: float = 0.5, n_m: tuple[int, int] | None = None, per_row: bool = False
) -> torch.Tensor:
    """Bool mask (True = prune) of the smallest-|W| entries.

    Unstructured: exactly `floor(numel * sparsity)` entries per matrix (`per_row=False`) or
    `floor(n_cols * sparsity)` per row. With `n_m=(n, m)`: the `n` smallest of every `m` consecutive inputs.
    """
    scores = weight.detach().abs().float()
    if n_m is not None:
        return n_m_mask(scores, *n_m)
    if per_row:
        return row_mask(scores, sparsity)
    return lowest_k_mask(scores, count_to_prune(scores.numel(), sparsity))


@torch.no_grad()
def prune_magnitude_(
    linear: torch.nn.Linear, sparsity: float = 0.5, n_m: tuple[int, int] | None = None, per_row: bool = False
) -> torch.Tensor:
    """Zero the smallest-|W| entries of `linear.weight` in place; returns the mask."""
    mask = magnitude_mask(linear.weight, sparsity, n_m, per_row)
    linear.weight.masked_fill_(mask, 0)
    return mask
