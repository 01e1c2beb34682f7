"""The SEFT tuner layer: LIFT's sparse-delta layer plus the re-pruned set R and the evolution state.

W_eff = W0 ⊙ (1 - 1_R) + scatter(A, δ), where W0 is the pruned base, A the k active delta positions
(`seft_indices`, int32) with values δ (`seft_values`, fp32), and R (`seft_pruned_indices`, int32, variable length)
the base positions removed by re-pruning during fine-tuning. The forward goes through the shared
`sparse_delta_linear` (hf_plugins/tuners/_sparse_delta_autograd.py) with R \\ A as its zero set and δ as its delta (a delta
grown on a re-pruned position gets a zero base through `base_keep`); on CUDA the effective weight is one copy and
one Triton launch. Several active adapters take the general route: R as a first delta of value -W0[R] (rounded to
the compute dtype), so W0[R] cancels exactly before the deltas are added. Nothing dense is stored.

Structural support S = (supp(W0) \\ R) ∪ A. Its size equals the target Z (`seft_target_nnz`) after every cycle,
which is what the merged model's non-zero count is.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ...distributed import all_reduce_mean_, full_tensor, is_distributed
from .._sparse_delta import ResizableBufferDict, SparseDeltaLayer
from .._sparse_delta_autograd import sparse_delta_linear
from .._sparse_delta_ops import add_sparse_, check_indices, compute_dtype, gather_flat, isin_sorted, tensor_stamp


__all__ = ["Linear", "SeftLayer"]


class SeftLayer(SparseDeltaLayer):
    sparse_prefix = "seft_"
    adapter_layer_names = ("seft_values",)
    other_param_names = (
        "seft_indices",
        "seft_residual_indices",
        "seft_residual_values",
        "seft_ready",
        "seft_pruned_indices",
        "seft_target_nnz",
        "seft_cycles",
        "seft_grow_candidates",
        "seft_grow_scores",
        "seft_shape",
    )
    variable_containers = (*SparseDeltaLayer.variable_containers, "pruned_indices", "grow_candidates", "grow_scores")
    required_containers = (
        *SparseDeltaLayer.required_containers,
        "pruned_indices",
        "target_nnz",
        "cycles",
        "grow_candidates",
        "grow_scores",
    )

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        # Persistent, so a checkpoint holds everything a resumed run needs (save -> load -> resume is exact):
        self.seft_pruned_indices = ResizableBufferDict()  # R, int32, variable length
        self.seft_target_nnz = ResizableBufferDict(structural=False)  # Z, 0-d int64
        # completed cycles, 0-d int64 (the first one drops everything)
        self.seft_cycles = ResizableBufferDict(structural=False)
        # grow window: candidate positions (int32) and their summed gradients (fp32); empty between windows
        self.seft_grow_candidates = ResizableBufferDict(structural=False)
        self.seft_grow_scores = ResizableBufferDict(structural=False)
        # Transient state of the current step, set by SeftModel.seft_prepare_step (never saved):
        self._seft_step: dict | None = None
        self._seft_sens: dict | None = None
        self._seft_merged_base: dict[str, torch.Tensor] = {}
        self._seft_nnz_cache: tuple | None = None  # ((data_ptr, version) of W0, nnz(W0))
        self._seft_plan_cache: dict[str, tuple] = {}  # adapter -> (key, forward plan), see `_seft_plan`

    # -- state --------------------------------------------------------------------------------------------------
    def update_layer(
        self,
        adapter_name: str,
        k: int,
        indices: torch.Tensor,
        target_nnz: int,
        pruned_size: int = 0,
        grow_size: int = 0,
        must_load: bool = False,
    ) -> None:
        """Add adapter `adapter_name` with k zero deltas at `indices`. `pruned_size` / `grow_size` (from the config's
        recorded sizes) create R and the grow window with a saved adapter's lengths, as placeholders that the load
        overwrites; with them, or `must_load` (inference mode), the adapter refuses to run until a saved one loads."""
        self.add_sparse_adapter(adapter_name, k, indices, must_load=must_load or bool(pruned_size or grow_size))
        dev = self.seft_indices[adapter_name].device
        self.seft_pruned_indices[adapter_name] = torch.zeros(pruned_size, dtype=torch.int32, device=dev)
        self.seft_target_nnz[adapter_name] = torch.tensor(int(target_nnz), dtype=torch.int64, device=dev)
        self.seft_cycles[adapter_name] = torch.tensor(0, dtype=torch.int64, device=dev)
        self.seft_grow_candidates[adapter_name] = torch.zeros(grow_size, dtype=torch.int32, device=dev)
        self.seft_grow_scores[adapter_name] = torch.zeros(grow_size, dtype=torch.float32, device=dev)
        self.set_adapter(self.active_adapters)
        self._invalidate_sparse_cache()

    def whole_base_weight(self) -> torch.Tensor:
        """The (detached) base weight W0 as a whole matrix: gathered with `full_tensor` when FSDP2 shards it (a
        collective: every rank calls it for the same layers), the weight itself otherwise (and inside forward /
        backward, where FSDP2 has already gathered it)."""
        return full_tensor(self.get_base_layer().weight.detach())

    def support_mask(self, adapter_name: str) -> torch.Tensor:
        """Dense bool S = (supp(W0) \\ R) ∪ A (transient, one byte per entry)."""
        w = self.whole_base_weight()
        sup = (w != 0).view(-1).clone()
        sup.index_fill_(0, self.seft_pruned_indices[adapter_name].long(), False)
        sup.index_fill_(0, self.seft_indices[adapter_name].long(), True)
        return sup.view_as(w)

    def support_size(self, adapter_name: str) -> int:
        return int(self.support_mask(adapter_name).sum())

    # -- forward / merge ----------------------------------------------------------------------------------------
    def _seft_deltas(self, adapter_name: str, dtype: torch.dtype):
        w = self.get_base_layer().weight
        R = self.seft_pruned_indices[adapter_name]
        out = []
        if R.numel():  # first: W0[R] -> exactly 0 (one rounding of 0); then δ is added on top
            out.append((R, -gather_flat(w.detach(), R).to(dtype).float()))
        out.append((self.seft_indices[adapter_name], self.seft_values[adapter_name]))
        return out

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        cached = self._try_cached_forward(x)  # W_eff kept between steps (_sparse_delta_cache.py): the training path
        if cached is not None:
            return cached
        self._check_unsharded()
        active = self._active_sparse_adapters()
        if self.disable_adapters or self.merged or not active:
            return self.sparse_forward(x, *args, **kwargs)
        for name in active:
            self.is_ready(name)  # raises for an adapter built to receive a saved one that never loaded
        base = self.get_base_layer()
        if len(active) == 1:  # the training case
            name = active[0]
            # transient W_eff: R zeroed and δ added in one launch (no -W0[R] gather per call)
            zero, keep = self._seft_plan(name)
            return sparse_delta_linear(
                x,
                base.weight,
                base.bias,
                [self.seft_indices[name]],
                [self.seft_values[name]],
                self.sparse_grad_hook,
                zero_indices=zero,
                base_keep=keep,
            )
        # the dtype sparse_delta_linear builds W_eff in, so -W0[R] cancels W0[R] exactly
        dtype = compute_dtype(x, base.weight)
        indices, values = [], []
        pruned = [a for a in active if self.seft_pruned_indices[a].numel()]
        if len(pruned) > 1:
            raise ValueError(
                f"{len(pruned)} active SEFT adapters ({pruned}) have re-pruned base positions; activate one SEFT "
                "adapter at a time (model.set_adapter(name))."
            )
        for name in active:
            for idx, val in self._seft_deltas(name, dtype):
                indices.append(idx)
                values.append(val)
        return sparse_delta_linear(x, base.weight, base.bias, indices, values, self.sparse_grad_hook)

    def _seft_plan(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(Z, keep) for `sparse_delta_linear`: Z = R \\ A (zeroed), keep = 0 on the deltas grown at a re-pruned
        position (W_eff = δ there), None when A ∩ R is empty. Cached until A or R changes (their storage or
        version), so a training step computes nothing here; recomputing costs two host synchronisations."""
        R, A = self.seft_pruned_indices[name], self.seft_indices[name]
        key = (tensor_stamp(R), tensor_stamp(A))
        hit = self._seft_plan_cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        if R.numel() == 0:
            plan = (None, None)
        else:
            in_r = isin_sorted(A.long(), torch.sort(R.long())[0])
            if bool(in_r.any()):
                plan = (R[~isin_sorted(R.long(), torch.sort(A.long())[0])], (~in_r).to(torch.uint8))
            else:
                plan = (R, None)
        self._seft_plan_cache[name] = (key, plan)
        return plan

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """Dense fp32 ΔW with W0 + ΔW = W_eff: scatter(A, δ) - W0 ⊙ 1_R."""
        w = self.get_base_layer().weight
        out = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        R = self.seft_pruned_indices[adapter_name].long()
        out.view(-1)[R] = -w.detach().view(-1)[R].float()
        out.view(-1).index_add_(
            0, self.seft_indices[adapter_name].long(), self.seft_values[adapter_name].detach().float()
        )
        return out

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """W <- W ⊙ (1 - 1_R) + scatter(A, δ), with the same single rounding as the forward (bit-identical)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        self._invalidate_sparse_cache()
        for name in adapter_names:
            if name not in self.seft_values:
                continue
            target = weight.data.clone() if safe_merge else weight.data
            R = self.seft_pruned_indices[name]
            self._seft_merged_base[name] = gather_flat(target, R).clone()
            target.view(-1).index_fill_(0, R.long(), 0)
            add_sparse_(target, self.seft_indices[name], self.seft_values[name])
            if safe_merge:
                if not torch.isfinite(target).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                weight.data.copy_(target)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract δ and restore W0 at R (exact in fp32; one extra rounding per delta entry in bf16/fp16)."""
        if not self.merged:
            return super().unmerge()  # warns "Already unmerged"
        weight = self.get_base_layer().weight
        self._invalidate_sparse_cache()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.seft_values:
                continue
            add_sparse_(weight.data, self.seft_indices[name], self.seft_values[name], alpha=-1.0)
            R = self.seft_pruned_indices[name].long()
            weight.data.view(-1)[R] = self._seft_merged_base.pop(name).to(weight.dtype)

    # -- the gradient hook (accumulation window and the cycle's last step) ----------------------------------------
    def _seft_grad_hook(self, dense: torch.Tensor) -> None:
        """Sees this layer's dense fp32 dL/dW_eff in backward (this rank's, under DDP / FSDP2); keeps only O(k)
        numbers (never the dense tensor).

        Choosing positions needs the gradient of the global batch on every rank. The steps that choose from the whole
        matrix (the window's first step picks the grow candidates; the cycle step's re-prune candidates) average the
        dense gradient over ranks here (`all_reduce_mean_`, in place: the values' gradients gathered from it are
        then already averaged, which DDP / FSDP2 averaging again leaves unchanged). The other window steps only add
        the gradient at the k candidates: those k numbers of every layer are averaged in one all-reduce at the end
        of backward (`_flush_grow_scores`) instead of one dense all-reduce per layer."""
        st = self._seft_step
        if st is None:
            return
        name = st["adapter"]
        flat = dense.view(-1)
        cand = self.seft_grow_candidates[name]
        select = st["grow"] and (st["fresh"] or cand.numel() == 0)
        if select or st["sensitivity"]:
            all_reduce_mean_(flat)
        if st["grow"]:
            if select:
                self._select_grow_candidates(name, flat, st)
                st["fresh"] = False
            elif st["sensitivity"] or not is_distributed():
                self.seft_grow_scores[name] += gather_flat(flat, cand)
            else:
                _defer_grow_scores(self, name, gather_flat(flat, cand))
        if st["sensitivity"]:
            self._accumulate_sensitivity(name, flat)

    @torch.no_grad()
    def _allowed_growth(self, name: str, st: dict) -> torch.Tensor | None:
        """Dense bool of positions where growth may happen (None: everywhere except A)."""
        if st["resurrection"] and not st["n_m"]:
            return None
        w = self.whole_base_weight()
        allowed = (w != 0).view(-1).clone()  # never grow at pruned positions
        allowed.index_fill_(0, self.seft_pruned_indices[name].long(), False)
        return allowed

    @torch.no_grad()
    def _select_grow_candidates(self, name: str, flat_grad: torch.Tensor, st: dict) -> None:
        A = self.seft_indices[name].long()
        k = A.numel()
        score = flat_grad.abs()
        score.index_fill_(0, A, -1.0)  # not `score[A] = -1`: index_put_ synchronises with the GPU
        allowed = self._allowed_growth(name, st)
        if allowed is not None:
            score.masked_fill_(~allowed, -1.0)
        c = min(k, score.numel() - k)
        if c <= 0:
            cand = torch.zeros(0, dtype=torch.long, device=score.device)
        else:
            top = torch.topk(score, c, sorted=False)
            # Without a growth mask every one of the numel - k >= c positions outside A scores >= 0, so the top c
            # are all valid: no filter (a boolean filter synchronises with the GPU inside backward).
            cand = top.indices if allowed is None else top.indices[top.values >= 0]
        del score
        self.seft_grow_candidates[name] = cand.to(torch.int32)
        self.seft_grow_scores[name] = gather_flat(flat_grad, cand).clone()

    @torch.no_grad()
    def _accumulate_sensitivity(self, name: str, flat_grad: torch.Tensor) -> None:
        """On the cycle's last step: the gradient at R (restore candidates) and at the 2k lowest-|W0·g| positions of
        supp(W0) \\ R (re-prune candidates; 2k leaves enough after excluding the new A). `valid` marks the
        candidates inside supp(W0) \\ R (when fewer than 2k exist, topk also returns excluded positions): kept as a
        mask, since filtering would synchronise with the GPU inside backward. `w0` / `r_w0` = W0 at the candidates / at R."""
        R = self.seft_pruned_indices[name].long()
        if self._seft_sens is None:
            w0 = self.whole_base_weight().view(-1)
            k = self.seft_indices[name].numel()
            sens = (w0.float() * flat_grad).abs_()
            sens.masked_fill_(w0 == 0, float("inf"))
            sens.index_fill_(0, R, float("inf"))
            c = min(2 * k, sens.numel())
            bottom = torch.topk(sens, c, largest=False, sorted=False)
            cand = bottom.indices
            del sens
            self._seft_sens = {
                "cand": cand,
                "valid": torch.isfinite(bottom.values),
                "w0": w0.index_select(0, cand).float(),
                "cand_grad": flat_grad.index_select(0, cand),
                "r_grad": flat_grad.index_select(0, R),
                "r_w0": w0.index_select(0, R).float(),
            }
        else:
            self._seft_sens["cand_grad"] += flat_grad.index_select(0, self._seft_sens["cand"])
            self._seft_sens["r_grad"] += flat_grad.index_select(0, R)

    def seft_base_nnz(self) -> int:
        """nnz(W0) of the (frozen) base weight, cached until the weight changes (merge / unmerge / load)."""
        w = self.whole_base_weight()
        key = (w.data_ptr(), w._version)
        if self._seft_nnz_cache is None or self._seft_nnz_cache[0] != key:
            self._seft_nnz_cache = (key, int((w != 0).sum()))
        return self._seft_nnz_cache[1]

    def _invalidate_sparse_cache(self) -> None:
        """Drop caches derived from A, R, δ or W0 (called whenever a cycle, a load or a merge changes them): the
        forward plan and the model's effective-weight cache."""
        self._seft_plan_cache.clear()
        super()._invalidate_sparse_cache()

    def _cache_parts(self, adapter_name: str):
        """W_eff = W0 ⊙ (1 - 1_R) + scatter(A, δ) for the effective-weight cache (SEFT keeps no residual)."""
        return (
            self.seft_indices[adapter_name],
            self.seft_values[adapter_name],
            self.seft_pruned_indices[adapter_name],
            [],
        )

    # -- checks ---------------------------------------------------------------------------------------------------
    def _check_adapter_tensors(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        """The shared checks, plus R and the grow window: unique in-range positions, one score per candidate."""
        super()._check_adapter_tensors(tensors, where)
        for attr in ("pruned_indices", "grow_candidates"):
            if attr in tensors:
                check_indices(tensors[attr], self.weight_numel, where, unique=True)
        if "grow_candidates" in tensors and "grow_scores" in tensors:
            if tensors["grow_candidates"].shape != tensors["grow_scores"].shape:
                raise ValueError(
                    f"The SEFT adapter for `{where}` holds {tensors['grow_candidates'].numel()} grow candidates but "
                    f"{tensors['grow_scores'].numel()} scores; the file is damaged. Re-save it from the trained model."
                )


_PENDING_SCORES: list[tuple[SeftLayer, str, torch.Tensor]] = []


def _defer_grow_scores(layer: SeftLayer, name: str, local: torch.Tensor) -> None:
    """Queue this rank's gradient at `layer`'s grow candidates; the first call of a backward pass schedules
    `_flush_grow_scores` to run when it ends."""
    if not _PENDING_SCORES:
        torch.autograd.Variable._execution_engine.queue_callback(_flush_grow_scores)
    _PENDING_SCORES.append((layer, name, local))


def _flush_grow_scores() -> None:
    """End of backward: every queued layer's candidate gradients averaged over ranks in one all-reduce, then added to
    its grow scores (the same sums, entry by entry, as averaging each dense gradient first)."""
    pending = list(_PENDING_SCORES)
    _PENDING_SCORES.clear()
    if not pending:
        return
    flat = all_reduce_mean_(torch.cat([g for _, _, g in pending]))
    for (layer, name, _), part in zip(pending, flat.split([g.numel() for _, _, g in pending])):
        layer.seft_grow_scores[name] += part


class Linear(nn.Module, SeftLayer):
    """SEFT on a `torch.nn.Linear`."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, k: int, indices: torch.Tensor, target_nnz: int, **sizes
    ):
        super().__init__()
        SeftLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, k, indices, target_nnz, **sizes)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return SeftLayer.forward(self, x, *args, **kwargs)

    def __repr__(self) -> str:
        return "seft." + super().__repr__()
