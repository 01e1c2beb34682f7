"""One SEFT cycle on one layer: drop the weakest deltas, grow new ones, re-balance the support to exactly Z.

Order and choices (docs/seft.md, "Algorithm as implemented"; the official code was not available):

1. Drop the n smallest |δ| of A (their position reverts to W0, or to 0 if it is pruned).
2. Grow n positions outside A: the largest |accumulated gradient| among the window's candidates (or random).
   n = round(p * k), reduced if fewer candidates exist; new deltas start at 0 with zero Adam moments, surviving
   deltas keep value and moments (the shared `set_sparse_state_` carries them).
3. Re-balance (unstructured, growth at pruned positions on): |S| = |(supp(W0) \\ R) ∪ A| must equal Z.
   |S| > Z: add the |S| - Z lowest-sensitivity positions of S \\ A to R (sensitivity |W0 · g| with the gradient of
   the cycle's last step, or |W0| with reprune_criterion="magnitude").
   |S| < Z (dropped resurrected deltas): remove the highest-sensitivity positions of R \\ A from R (restore W0).
   Both are always feasible (see docs/seft.md), so |S| = Z holds after every cycle.
"""

from __future__ import annotations

import math

import torch

from hf_plugins.distributed import full_tensor

from .layer import SeftLayer


__all__ = ["drop_fraction_at", "evolve_layer_"]


def drop_fraction_at(base: float, schedule: str, step: int, total: int | None) -> float:
    """p(t): `base` decayed over training (SpIEL: linear p(1 - t/T) by default)."""
    if schedule == "constant" or not total:
        return base
    frac = min(max(step / total, 0.0), 1.0)
    if schedule == "linear":
        return base * (1.0 - frac)
    return base * 0.5 * (1.0 + math.cos(math.pi * frac))


def _random_growth(layer: SeftLayer, name: str, n: int, allowed: torch.Tensor | None, generator) -> torch.Tensor:
    score = torch.rand(layer.weight_numel, generator=generator, device="cpu").to(layer.seft_indices[name].device)
    score.index_fill_(0, layer.seft_indices[name].long(), -1.0)
    if allowed is not None:
        score.masked_fill_(~allowed, -1.0)
    top = torch.topk(score, min(n, score.numel()), sorted=True)
    return top.indices[top.values >= 0]


@torch.no_grad()
def evolve_layer_(
    layer: SeftLayer,
    name: str,
    drop_fraction: float,
    *,
    optimizer=None,
    grow_criterion: str = "gradient",
    reprune_criterion: str = "sensitivity",
    resurrection: bool = True,
    n_m: bool = False,
    generator: torch.Generator | None = None,
) -> dict:
    """Run one drop / grow / re-balance cycle on adapter `name` of `layer`; returns counts for logging.

    Under FSDP2 the cycle works on whole tensors (values and W0 gathered with `full_tensor`; the grow scores come
    from the rank-averaged gradient), identical on every rank; `set_sparse_state_` writes back each rank's shard of
    the values and of the Adam moments. Collective then: every rank runs it for the same layers in the same order."""
    values = full_tensor(layer.seft_values[name].detach())
    A = layer.seft_indices[name].long()
    k = A.numel()
    st = {"resurrection": resurrection, "n_m": n_m}
    n_drop = min(k, round(drop_fraction * k))

    # -- grow candidates, best first
    if grow_criterion == "random":
        grown = _random_growth(layer, name, n_drop, layer._allowed_growth(name, st), generator)
    else:
        cand = layer.seft_grow_candidates[name].long()
        scores = layer.seft_grow_scores[name].abs()
        order = torch.argsort(scores, descending=True, stable=True)
        grown = cand[order[:n_drop]]
    n = int(grown.numel())

    # -- drop the n smallest |δ|, keep the rest (value and optimizer moments carried by position)
    by_size = torch.argsort(values.detach().abs(), stable=True)
    keep = torch.ones(k, dtype=torch.bool, device=A.device)
    keep[by_size[:n]] = False
    new_idx = torch.cat([A[keep], grown.to(A.device)])
    new_val = torch.cat([values.detach()[keep], torch.zeros(n, dtype=values.dtype, device=values.device)])
    new_idx, perm = torch.sort(new_idx)
    layer.set_sparse_state_(name, new_idx.to(torch.int32), new_val[perm], optimizer=optimizer)

    # -- re-balance the support to exactly Z
    pruned, restored = 0, 0
    if resurrection and not n_m:
        pruned, restored = _rebalance_(layer, name, reprune_criterion)
    layer.seft_cycles[name] += 1
    layer.seft_grow_candidates[name] = layer.seft_grow_candidates[name][:0]
    layer.seft_grow_scores[name] = layer.seft_grow_scores[name][:0]
    layer._seft_sens = None
    layer._invalidate_sparse_cache()
    return {"dropped": n, "grown": n, "repruned": pruned, "restored": restored}


def _rebalance_(layer: SeftLayer, name: str, criterion: str) -> tuple[int, int]:
    w0 = layer.whole_base_weight().view(-1)
    A = layer.seft_indices[name].long()
    R = layer.seft_pruned_indices[name].long()
    sup = layer.support_mask(name).view(-1)
    excess = int(sup.sum()) - int(layer.seft_target_nnz[name])
    sens = layer._seft_sens if criterion == "sensitivity" else None
    if excess > 0:
        in_a = torch.zeros_like(sup)
        in_a.index_fill_(0, A, True)
        eligible = sup & ~in_a  # S \ A: base positions still carrying W0
        chosen = None
        if sens is not None:
            cand = sens["cand"]
            ok = eligible[cand] & sens["valid"]
            if int(ok.sum()) >= excess:
                score = (w0[cand[ok]].float() * sens["cand_grad"][ok]).abs()
                chosen = cand[ok][torch.argsort(score, stable=True)[:excess]]
        if chosen is None:  # magnitude criterion, or no gradient seen this cycle
            score = w0.float().abs().masked_fill(~eligible, float("inf"))
            chosen = torch.topk(score, excess, largest=False).indices
        layer.seft_pruned_indices[name] = torch.sort(torch.cat([R, chosen]))[0].to(torch.int32)
        return excess, 0
    if excess < 0:
        need = -excess
        not_in_a = ~torch.isin(R, A)
        cand = R[not_in_a]
        if sens is not None and sens["r_grad"].numel() == R.numel():
            score = (w0[cand].float() * sens["r_grad"][not_in_a]).abs()
        else:
            score = w0[cand].float().abs()
        restore = cand[torch.argsort(score, descending=True, stable=True)[:need]]
        layer.seft_pruned_indices[name] = R[~torch.isin(R, restore)].to(torch.int32)
        return 0, need
    return 0, 0
