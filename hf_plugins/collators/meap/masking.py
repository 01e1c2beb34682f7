"""Vectorised selection of MEAP mask positions: exactly `k[g]` random eligible positions in each group `g`.

A group is a row of the batch, a packed segment, or an answer span (docs/meap.md, "Pre-training mode"). Instead
of sorting random keys or running one quickselect per group, every position draws a small random *bucket number*
(`bits` bits, about sqrt(group length) buckets): one `bincount` over (group, bucket) gives every group's
histogram, a cumulative sum gives each group's *edge* bucket (where its `k[g]`-th position falls). Every eligible
position in a lower bucket is chosen; inside the edge bucket (about sqrt(length) positions per group) a uniformly
random subset of the missing size is chosen with fresh 64-bit keys and one small sort on (group, key). O(n) work
and a fixed number of array operations per batch, on 8- or 16-bit arrays: no Python loop over tokens or groups.
The collator runs in the dataloader on the CPU, where NumPy's per-call overhead is several times lower than
PyTorch's; the arrays share memory with the batch's tensors.

Why the subset is uniform: bucket numbers are i.i.d., so the eligible positions of a group are exchangeable, and
the rule (all of the lower buckets, a uniform subset of the edge bucket) treats them symmetrically; every
k-subset is equally likely, up to equal 64-bit edge keys (probability ~ m**2 / 2**49 for m positions in an edge
bucket), which are ordered by position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


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


def group_lengths(start_index: np.ndarray, n: int) -> np.ndarray:
    """Increasing start positions of consecutive groups (the first one 0) of `n` positions -> the groups' lengths."""
    lengths = np.empty(start_index.size, dtype=np.intp)
    np.subtract(start_index[1:], start_index[:-1], out=lengths[:-1])
    lengths[-1] = n - start_index[-1]
    return lengths


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """floor(x + u), u ~ U[0, 1), for x >= 0: an integer with expectation exactly `x` (docs/meap.md: k_i =
    floor(ratio * n_i + u_i))."""
    return (x + rng.random(np.shape(x))).astype(np.intp)  # truncation is floor for x >= 0


def _bucket_bits(n: int, num_groups: int) -> int:
    # About sqrt(average group length) buckets: the (groups x buckets) histogram stays far smaller than the batch,
    # and edge buckets hold about sqrt(length) positions per group, which one small sort ranks.
    average = max(n // max(num_groups, 1), 1)
    return max(1, min(_MAX_BUCKET_BITS, (average.bit_length() + 1) // 2))


def _key_dtype(bits: int):
    return np.uint8 if bits < 8 else np.uint16  # the overflow bucket `1 << bits` must fit too


def bucket_keys(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """`n` independent uniform `bits`-bit bucket numbers (top bits of the bit generator's raw output, cut into
    bytes or 16-bit words), as the smallest unsigned type that also holds `1 << bits`."""
    dtype = np.dtype(_key_dtype(bits))
    keys = rng.bit_generator.random_raw(-(-n * dtype.itemsize // 8)).view(dtype)[:n]
    return np.right_shift(keys, 8 * dtype.itemsize - bits, out=keys)


def select_in_groups(
    eligible: np.ndarray,
    k: np.ndarray | Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    group: np.ndarray | None = None,
    num_groups: int | None = None,
    *,
    lengths: np.ndarray | None = None,
) -> Selection:
    """Choose exactly `min(k[g], #eligible in g)` eligible positions uniformly at random in every group `g`.

    Args:
        eligible (`np.ndarray` of bool): positions that may be chosen; 2-D `(R, L)` when neither `group` nor
            `lengths` is given (each row is a group), else 1-D.
        k (`np.ndarray` of shape `(G,)`, or a callable): positions to choose per group (>= 0), or a function of
            the per-group eligible counts returning them (called once, after the histogram).
        rng (`np.random.Generator`): the only source of randomness: one bucket number per position, then whatever
            `k(counts)` draws, then one 64-bit key per position of the edge buckets.
        group (`np.ndarray` of shape `(n,)`, *optional*): non-decreasing group id (`0 .. G-1`) of each position
            of a 1-D `eligible` (groups are contiguous runs).
        num_groups (`int`, *optional*): `G` with `group`; default `group[-1] + 1`.
        lengths (`np.ndarray` of shape `(G,)`, *optional*): instead of `group`, the lengths of the consecutive
            groups of a 1-D `eligible` (summing to its size; cheaper than per-position ids).
    """
    if group is None and lengths is None:
        num_groups = eligible.shape[0]
    elif lengths is not None:
        num_groups = lengths.size
    elif num_groups is None:
        num_groups = int(group[-1]) + 1 if group.size else 0
    bits = _bucket_bits(eligible.size, num_groups)
    nb, stride = 1 << bits, (1 << bits) + 1  # buckets 0 .. nb-1 per group, then an overflow bucket
    bin_dtype = np.promote_types(_key_dtype(bits), np.min_scalar_type(max(num_groups * stride - 1, 0)))
    first = np.arange(0, num_groups * stride, stride, dtype=bin_dtype)  # each group's first global bin

    def per_position(values):  # a per-group array spread over the positions (a column for rows)
        if group is None and lengths is None:
            return values[:, None]
        return np.repeat(values, lengths) if lengths is not None else values[group]

    keys = bucket_keys(rng, eligible.size, bits).reshape(eligible.shape)
    np.copyto(keys, nb, where=~eligible)  # ineligible positions go to their group's overflow bucket
    bins = np.add(keys, per_position(first), dtype=bin_dtype)  # global bin: group * stride + bucket
    hist = np.bincount(bins.ravel(), minlength=num_groups * stride).reshape(num_groups, stride)[:, :nb]
    cum = hist.cumsum(1)
    counts = cum[:, -1]
    k = np.minimum(k(counts) if callable(k) else k, counts)
    edge = (cum < k[:, None]).sum(1)  # the bucket holding each group's k-th smallest bucket number
    rows = np.arange(num_groups)
    need = k - (cum[rows, edge] - hist[rows, edge])  # positions still to take from the edge bucket
    edge_bin = per_position(first + edge.astype(bin_dtype))  # k == 0: edge 0 and need 0, nothing is taken
    mask = bins < edge_bin
    at_edge = np.flatnonzero(bins == edge_bin)
    if at_edge.size:
        group_at = bins.ravel()[at_edge] // stride
        mask.ravel()[at_edge[_random_subset_in_blocks(group_at, need[group_at], rng)]] = True
    return Selection(mask, counts, k)


def _random_subset_in_blocks(group: np.ndarray, need: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`group` non-decreasing: True for a uniformly random `need`-subset of each group's entries (the `need`
    smallest of fresh 64-bit keys; equal keys, probability ~ m**2 / 2**49 for m entries, are ordered by position)."""
    keys = rng.bit_generator.random_raw(group.size)
    if group[-1] < 1 << 16:  # one sort on (group, top 48 key bits)
        order = np.argsort((group.astype(np.uint64) << np.uint64(48)) | (keys >> np.uint64(16)), kind="stable")
    else:
        order = np.lexsort((keys, group))
    rank = np.arange(group.size) - np.searchsorted(group, group)  # groups stay in place: rank inside the block
    take = np.zeros(group.size, dtype=bool)
    take[order] = rank < need
    return take
