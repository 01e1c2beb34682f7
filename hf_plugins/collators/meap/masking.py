"""Vectorised selection of MEAP mask positions: exactly `k[g]` random eligible positions in each group `g`.

A group is a row of the batch, a packed segment, or an answer span. Every position draws one random 32-bit key;
a group's chosen positions are its `k[g]` eligible positions with the smallest keys, i.e. a uniformly random
`k[g]`-subset of its eligible positions (spec meap.md, "Performance notes").

Instead of sorting the keys or running one quickselect per group, the keys are binned by their top bits into
`nb` buckets: one `bincount` over (group, bucket) gives every group's histogram, a cumulative sum gives each
group's *edge* bucket (the one holding its `k[g]`-th smallest key). Every eligible position below the edge is
chosen; only the positions inside edge buckets (about one per group, since `nb` is about the group length) are
ranked, by one small sort on (group, key). O(n) work and a fixed number of array operations
per batch: no Python loop over tokens or groups. The collator runs in the dataloader on the CPU, where NumPy's
per-call overhead is several times lower than PyTorch's; the arrays share memory with the batch's tensors.

Every k-subset is equally likely up to ties among 32-bit keys of one edge bucket (probability ~ m**2 / 2**33 for
m positions in it, about 1e-9 at the default bucket count), which are broken by position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


_KEY_BITS = 32
_MAX_BUCKET_BITS = 12  # at most 4096 buckets per group (groups of up to 16M positions)


class Selection(NamedTuple):
    mask: np.ndarray  # bool, shape of `eligible`: the chosen positions
    counts: np.ndarray  # (G,) eligible positions per group
    k: np.ndarray  # (G,) positions chosen per group (exactly `mask`'s count in each group)


def group_ids_from_starts(starts: np.ndarray) -> np.ndarray:
    """`starts` (1-D bool, True where a group begins; index 0 always counts as one) -> group id of each position."""
    group = np.cumsum(starts, dtype=np.intp)
    if starts.size and starts[0]:
        group -= 1
    return group


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` independent uniform 32-bit keys (the bit generator's raw 64-bit output, split in halves)."""
    return rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """floor(x + u), u ~ U[0, 1), for x >= 0: an integer with expectation exactly `x` (spec: k_i = floor(ratio *
    n_i + u_i))."""
    return (x + rng.random(np.shape(x))).astype(np.intp)  # truncation is floor for x >= 0


def _bucket_bits(n: int, num_groups: int) -> int:
    # About sqrt(average group length) buckets: the (groups x buckets) histogram stays far smaller than the batch,
    # and edge buckets hold about sqrt(length) positions per group, which one small sort ranks.
    average = max(n // max(num_groups, 1), 1)
    return max(1, min(_MAX_BUCKET_BITS, (average.bit_length() + 1) // 2))


def select_in_groups(
    eligible: np.ndarray,
    k: np.ndarray | Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    group: np.ndarray | None = None,
    num_groups: int | None = None,
) -> Selection:
    """Choose exactly `min(k[g], #eligible in g)` eligible positions uniformly at random in every group `g`.

    Args:
        eligible (`np.ndarray` of bool): positions that may be chosen; 2-D `(R, L)` when `group` is None (each
            row is a group), else 1-D.
        k (`np.ndarray` of shape `(G,)`, or a callable): positions to choose per group (>= 0), or a function of
            the per-group eligible counts returning them (called once, after the histogram).
        rng (`np.random.Generator`): the only source of randomness: one key per position, then whatever
            `k(counts)` draws.
        group (`np.ndarray` of shape `(n,)`, *optional*): non-decreasing group id (`0 .. G-1`) of each position
            of a 1-D `eligible` (groups are contiguous runs).
        num_groups (`int`, *optional*): `G`; default `group[-1] + 1` (or the number of rows).
    """
    if group is None:
        num_groups, width = eligible.shape
        group_col = np.arange(num_groups, dtype=np.intp)[:, None]  # broadcasts over the row
    else:
        if num_groups is None:
            num_groups = int(group[-1]) + 1 if group.size else 0
        width, group_col = 0, group
    keys = random_keys(rng, eligible.size).reshape(eligible.shape)
    bits = _bucket_bits(eligible.size, num_groups)
    nb, stride = 1 << bits, (1 << bits) + 1  # buckets 0 .. nb-1 per group, then an overflow bucket
    first_bin = group_col * stride
    bins = (keys >> (_KEY_BITS - bits)) + first_bin  # global bin of each position: group * stride + bucket
    np.copyto(bins, first_bin + nb, where=~eligible)  # ineligible positions go to their group's overflow bucket
    hist = np.bincount(bins.ravel(), minlength=num_groups * stride).reshape(num_groups, stride)[:, :nb]
    cum = hist.cumsum(1)
    counts = cum[:, -1]
    k = np.minimum(k(counts) if callable(k) else k, counts)
    edge = (cum < k[:, None]).sum(1)  # the bucket holding each group's k-th smallest key
    rows = np.arange(num_groups)
    need = k - (cum[rows, edge] - hist[rows, edge])  # positions still to take from the edge bucket
    edge += rows * stride
    edge[k == 0] = -1  # k == 0: no bin is below or at the edge
    edge_of = edge[group_col]
    mask = bins < edge_of
    at_edge = np.flatnonzero(bins == edge_of)
    if at_edge.size:
        group_at = at_edge // width if group is None else group[at_edge]
        mask.ravel()[at_edge[_smallest_at_edge(group_at, keys.ravel()[at_edge], need[group_at])]] = True
    return Selection(mask, counts, k)


def _smallest_at_edge(group, keys, need) -> np.ndarray:
    """Positions inside edge buckets (`group` non-decreasing): True for the `need` smallest keys of each group.
    Equal 32-bit keys (probability ~ m**2 / 2**33 for m positions in one edge bucket) are ordered by position."""
    order = np.argsort((group.astype(np.int64) << _KEY_BITS) | keys, kind="stable")  # by group, then key
    rank = np.arange(group.size) - np.searchsorted(group, group)  # groups stay in place: rank inside the block
    take = np.zeros(group.size, dtype=bool)
    take[order] = rank < need
    return take
