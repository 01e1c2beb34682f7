"""Vectorised selection of MEAP mask positions: exactly `k[g]` random eligible positions in each group `g`.

A group is a contiguous run of a flat token array (a row, a packed segment, or an answer span). Every position
draws one float64 key from U[0, 1); ineligible positions get +inf; a group's chosen positions are its `k[g]`
smallest keys, i.e. a uniformly random k-subset of its eligible positions. No Python loop over tokens
(spec meap.md, "Performance notes").

Groups with `k[g] > 0` get their k-th smallest key by one quickselect (`torch.kthvalue`) on their contiguous
slice when there are at most `_ROWS_FOR_LOOP` of them; otherwise they are laid out as rows of a
`(groups, longest)` matrix and one unsorted `topk(max k)` plus a sort of those few candidates finds every
threshold; when that layout would waste too much memory (a few long groups among many short ones) one full
sort by (group, key) is used. All give identical masks from the same keys (tests compare them with a loop).
"""

from __future__ import annotations

import torch


_INF = float("inf")
_ROWS_FOR_LOOP = 128  # quickselect per group beats the top-k grid up to ~128 groups of a 16K-token batch (CPU)


def group_ids_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """`starts` (1-D bool, True where a group begins; index 0 is always a start) -> group id of each position."""
    starts = starts.clone()
    starts[0] = True
    return torch.cumsum(starts, 0) - 1


def random_keys(eligible: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One U[0, 1) float64 key per position (+inf where not eligible); ties have probability ~ n**2 / 2**54."""
    keys = torch.rand(eligible.shape, generator=generator, dtype=torch.float64)
    return keys.masked_fill_(~eligible, _INF)


def select_smallest_per_row(keys: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool mask of `keys <= (k[r]-th smallest key of row r)`, `keys` of shape `(R, L)`, `k` of shape `(R,)`.

    With +inf keys for ineligible positions, AND the result with the eligibility mask: when `k[r]` reaches the
    row's eligible count the threshold is +inf. Rows with `k[r] == 0` select nothing."""
    k = k.clamp(min=0, max=keys.shape[1])
    if keys.shape[0] <= _ROWS_FOR_LOOP:  # few rows: one O(L) quickselect per row beats top-k + sort
        threshold = torch.full((keys.shape[0], 1), -_INF, dtype=keys.dtype)
        for r, kr in enumerate(k.tolist()):
            if kr > 0:
                threshold[r, 0] = torch.kthvalue(keys[r], kr).values
        return keys <= threshold
    k_max = int(k.max()) if k.numel() else 0
    if k_max == 0:
        return torch.zeros(keys.shape, dtype=torch.bool)
    candidates = torch.topk(keys, k_max, dim=1, largest=False, sorted=False).values
    candidates = torch.sort(candidates, dim=1).values
    threshold = candidates.gather(1, (k - 1).clamp(min=0).unsqueeze(1))
    threshold = threshold.masked_fill_((k == 0).unsqueeze(1), -_INF)
    return keys <= threshold


def select_in_groups(
    group: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Bool mask with exactly `min(k[g], #eligible in g)` eligible positions set in every group `g`.

    Args:
        group (`torch.LongTensor` of shape `(n,)`): non-decreasing group id of each position, `0 .. G-1`.
        eligible (`torch.BoolTensor` of shape `(n,)`): positions that may be chosen.
        k (`torch.LongTensor` of shape `(G,)`): positions to choose per group.
        generator (`torch.Generator`): the only source of randomness (one `rand(n)` draw).
    """
    n = group.numel()
    mask = torch.zeros(n, dtype=torch.bool)
    if n == 0:
        return mask
    keys = random_keys(eligible, generator)
    n_groups = k.numel()
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = group[1:] != group[:-1]
    group_start = torch.zeros(n_groups, dtype=torch.int64)
    group_start[group[first]] = torch.nonzero(first).flatten()
    group_len = torch.bincount(group, minlength=n_groups)
    active = torch.nonzero((k > 0) & (group_len > 0)).flatten()
    if active.numel() == 0:
        return mask
    if active.numel() <= _ROWS_FOR_LOOP:  # few groups: quickselect on each contiguous slice, no layout needed
        threshold = torch.full((n_groups,), -_INF, dtype=torch.float64)
        for g, lo, size, kg in zip(
            active.tolist(), group_start[active].tolist(), group_len[active].tolist(), k[active].tolist()
        ):
            threshold[g] = torch.kthvalue(keys[lo : lo + size], min(kg, size)).values
        return (keys <= threshold[group]) & eligible
    longest = int(group_len[active].max())
    if active.numel() * longest > 4 * n + 4096:
        return _select_by_sort(group, keys, k, group_start)
    row_of_group = torch.full((n_groups,), -1, dtype=torch.int64)
    row_of_group[active] = torch.arange(active.numel())
    row = row_of_group[group]
    keep = torch.nonzero(row >= 0).flatten()
    row, col = row[keep], keep - group_start[group[keep]]
    grid = torch.full((active.numel(), longest), _INF, dtype=torch.float64)
    grid[row, col] = keys[keep]
    mask[keep] = select_smallest_per_row(grid, k[active])[row, col] & eligible[keep]
    return mask


def _select_by_sort(group, keys, k, group_start) -> torch.Tensor:
    # Sort by key, then stably by group: each group becomes one block, its eligible keys first in increasing order.
    order = torch.sort(keys).indices
    order = order[torch.sort(group[order], stable=True).indices]
    group_sorted = group[order]
    rank = torch.arange(group.numel()) - group_start[group_sorted]
    chosen = (rank < k[group_sorted]) & torch.isfinite(keys[order])
    mask = torch.zeros(group.numel(), dtype=torch.bool)
    mask[order[chosen]] = True
    return mask


def stochastic_round(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """floor(x + u), u ~ U[0, 1): an integer with expectation exactly `x` (spec: k_i = floor(ratio * n_i + u_i))."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return torch.floor(x.to(torch.float64) + u).to(torch.int64)
