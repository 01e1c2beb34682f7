"""Dynamic sparse training for NeuroTrails: ERK densities, random masks, prune and regrow (RigL-style).

Sparsity is simulated with dense bool masks, as in the paper's code: weights are multiplied by their masks after
every optimizer step, gradients stay dense (growth needs them), and every `update_frequency` steps a share of
each layer's active weights is pruned and the same number of inactive positions is regrown.

Saved with every NeuroTrails checkpoint next to modeling_neurotrails.py, so it imports only torch. Under FSDP2 the
weights are sharded `DTensor`s and the masks whole buffers; the three accessors below (`_whole`, `_local`,
`_piece_like`) give the same views as `hf_plugins.distributed`'s `full_tensor`, `local_tensor` and `shard_like`, which
this file cannot import.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Sequence

import torch


__all__ = [
    "apply_masks",
    "erk_densities",
    "prune_rate_at",
    "random_mask",
    "topology_generator",
    "update_layer_topology",
    "zero_optimizer_state",
]


def _is_dtensor(t) -> bool:
    module = sys.modules.get("torch.distributed.tensor")  # a DTensor exists only once its module is loaded
    return module is not None and isinstance(t, module.DTensor)


def _whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded DTensor: every rank must call it)."""
    return t.full_tensor() if _is_dtensor(t) else t


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, the tensor itself otherwise."""
    return t.to_local() if _is_dtensor(t) else t


def _piece_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `whole` (identical on every rank) laid out as the DTensor `like`; no communication."""
    if not _is_dtensor(like):
        return whole
    from torch.distributed.tensor import distribute_tensor  # loaded: `like` is a DTensor

    whole = whole.to(device=_local(like).device)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None).to_local()


def erk_densities(shapes: dict[str, Sequence[int]], density: float) -> dict[str, float]:
    """Per-layer densities of the Erdős–Rényi–Kernel distribution (power 1), as `--sparse_init Multi_Output` of the
    official `sparselearning/core.py`.

    density_l = eps * sum(shape_l) / prod(shape_l), with eps solved so that sum_l density_l * n_l equals
    `density * sum_l n_l`; a layer whose density would exceed 1 is made dense (largest raw density first) and eps
    is solved again over the remaining layers.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"`density` must be in (0, 1], got {density}.")
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / numel[name] for name, shape in shapes.items()}
    budget = density * sum(numel.values())
    dense: set[str] = set()
    while True:
        sparse = [name for name in shapes if name not in dense]
        if not sparse:
            break
        remaining = budget - sum(numel[name] for name in dense)
        eps = remaining / sum(raw[name] * numel[name] for name in sparse)
        worst = max(sparse, key=lambda name: raw[name])
        if eps * raw[worst] <= 1.0:
            break
        dense.add(worst)
    return {name: 1.0 if name in dense else min(1.0, eps * raw[name]) for name in shapes}


def random_mask(shape: Sequence[int], num_active: int, device=None, generator: torch.Generator | None = None):
    """A bool mask with exactly `num_active` True entries at uniformly random positions."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool, device=device)
    order = torch.randperm(numel, generator=generator, device=mask.device if generator is None else generator.device)
    mask[order[:num_active].to(mask.device)] = True
    return mask.view(*shape)


def prune_rate_at(step: int, total_steps: int, prune_rate: float, prune_rate_min: float) -> float:
    """Cosine decay of the prune rate, the closed form of the official `CosineAnnealingLR(T_max=total_steps,
    eta_min=prune_rate_min)` after `step` optimizer steps (closed form, so a resumed run gets the same value)."""
    if total_steps <= 0:
        return prune_rate
    t = min(max(step, 0), total_steps)
    return prune_rate_min + (prune_rate - prune_rate_min) * (1.0 + math.cos(math.pi * t / total_steps)) / 2.0


def topology_generator(seed: int, step: int, device) -> torch.Generator:
    """A generator seeded by (seed, step): every rank and every resumed run draws the same topology."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return gen


# id(mask) -> (weak reference to the mask, its version / storage / the weight's local shape, the mask's piece): the
# pieces a step's `apply_masks` multiplies by under FSDP2, rebuilt only when a topology update changed the mask.
_PIECES: dict[int, tuple] = {}


def _mask_piece(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`_piece_like(mask, weight)`, cached while the mask is unchanged (no DTensor built in a steady step)."""
    if not _is_dtensor(weight):
        return mask
    key = (mask._version, mask.data_ptr(), tuple(_local(weight).shape))
    ident = id(mask)
    hit = _PIECES.get(ident)
    if hit is None or hit[0]() is not mask or hit[1] != key:
        ref = weakref.ref(mask, lambda _: _PIECES.pop(ident, None))
        hit = _PIECES[ident] = (ref, key, _piece_like(mask, weight))
    return hit[2]


@torch.no_grad()
def apply_masks(weights: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """w <- w * mask for every sparse weight, in one foreach call. Under FSDP2 a weight is a sharded `DTensor` and
    its mask a whole (replicated) buffer: each rank multiplies its local shard by its piece of the mask (kept from
    one step to the next until the mask changes)."""
    if weights:
        torch._foreach_mul_([_local(w) for w in weights], [_mask_piece(m, w) for w, m in zip(weights, masks)])


def _prune_keys_soft_magnitude(flat_w, temperature: float, generator) -> torch.Tensor:
    # Sampling the kept weights without replacement with probability ~ |w|^T is the same as keeping the top-k of
    # T*log|w| + Gumbel noise (Gumbel-top-k); torch.multinomial would refuse more than 2**24 categories (a
    # 32000 x 768 embedding). Zero weights get a finite key, so an active weight still ranks above inactive ones.
    uniform = torch.rand(flat_w.shape, generator=generator, device=flat_w.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return temperature * torch.log(flat_w.abs().float().clamp_(min=1e-30)) + gumbel


def _pruned(keys: torch.Tensor, flat_m: torch.Tensor, n_prune: int) -> torch.Tensor:
    # The kept set is the top n_keep keys among the active positions; selecting its complement, the n_prune lowest,
    # is the same set and much cheaper for the small prune counts late in training.
    return keys.masked_fill_(~flat_m, float("inf")).topk(n_prune, largest=False, sorted=False).indices


@torch.no_grad()
def update_layer_topology(
    weight: torch.Tensor,
    mask: torch.Tensor,
    num_active: int,
    rate: float,
    *,
    criterion: str = "soft_magnitude",
    temperature: float = 3.0,
    growth: str = "gradient",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prune and regrow one layer in place; return the flat bool tensor of newly activated positions.

    Keeps ceil(num_active * (1 - rate)) of the active weights (soft magnitude or magnitude), then activates
    `num_active - kept` positions among the others (those just pruned included) with the largest |grad|
    (RigL) or at random (SET), restoring the layer's initial count exactly. `mask` is updated and `weight` is
    multiplied by it; a weight pruned and regrown in the same update keeps its value.

    Under FSDP2 (`weight` a sharded `DTensor`, `mask` a whole buffer) the weight and its gradient are gathered
    (collectives: every rank calls this for the same layers in the same order), so every rank draws the same new
    mask from the same whole tensors and the same generator state; each then masks its own shard.
    """
    flat_m = mask.view(-1)
    n_keep = math.ceil(num_active * (1.0 - rate))
    n_grow = num_active - n_keep
    if n_grow <= 0:
        return torch.zeros_like(flat_m)
    flat_w = _whole(weight.detach()).reshape(-1)
    if criterion == "soft_magnitude":
        keys = _prune_keys_soft_magnitude(flat_w, temperature, generator)
    elif criterion == "magnitude":
        keys = flat_w.abs().float()
    else:
        raise ValueError(f"unknown prune criterion {criterion!r}; use 'soft_magnitude' or 'magnitude'")
    keep = flat_m.clone()
    keep[_pruned(keys, flat_m, num_active - n_keep)] = False

    grad = weight.grad
    if growth == "gradient" and grad is not None:
        scores = _whole(grad.detach()).reshape(-1).abs().float()
    elif growth in ("gradient", "random"):  # no gradient (unused weight): fall back to random growth
        scores = torch.rand(flat_w.shape, generator=generator, device=flat_w.device, dtype=torch.float32)
    else:
        raise ValueError(f"unknown growth mode {growth!r}; use 'gradient' or 'random'")
    scores.masked_fill_(keep, float("-inf"))
    grow_idx = scores.topk(n_grow, sorted=False).indices
    new_mask = keep
    new_mask[grow_idx] = True

    newly_active = new_mask & ~flat_m
    flat_m.copy_(new_mask)
    apply_masks([weight.detach()], [mask])
    return newly_active


@torch.no_grad()
def zero_optimizer_state(optimizer, param: torch.Tensor, positions: torch.Tensor) -> None:
    """Zero the optimizer moments of `param` at the flat bool `positions` (Adam's exp_avg / exp_avg_sq /
    max_exp_avg_sq, SGD's momentum_buffer: every state tensor shaped like the parameter). Reaches the inner
    optimizer when accelerate wrapped it. `positions` covers the whole parameter; a sharded (FSDP2) state tensor
    is zeroed at this rank's piece of it."""
    if optimizer is None:
        return
    state = getattr(optimizer, "optimizer", optimizer).state.get(param)
    if not state:
        return
    whole = positions.view(param.shape)
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            _local(value).masked_fill_(_piece_like(whole, value), 0)
