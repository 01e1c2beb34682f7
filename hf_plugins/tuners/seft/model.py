"""`SeftModel`: the PEFT tuner that injects SEFT layers and runs the evolution cycle."""

from __future__ import annotations

import warnings
import zlib

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

from hf_plugins.pruning.masks import check_n_m, parse_n_m

from .._sparse_delta_tuner import SparseDeltaTuner
from .batched import batched_ok, evolve_batched_
from .config import SeftConfig
from .evolution import drop_fraction_at, evolve_layer_
from .layer import Linear, SeftLayer


__all__ = ["SeftModel"]


def _budget(config: SeftConfig, out_features: int, in_features: int) -> int:
    if config.r is not None:
        return config.r * (out_features + in_features)
    return max(1, round(config.density * out_features * in_features))


def _initial_positions(weight: torch.Tensor, k: int, seed: int, key: str) -> torch.Tensor:
    """k distinct random positions inside supp(W0), seeded by (seed, module name): |S| = nnz(W0) from the start."""
    support = torch.nonzero(weight.detach().view(-1) != 0).view(-1).cpu()
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    pick = support[torch.randperm(support.numel(), generator=g)[:k]]
    return torch.sort(pick)[0].to(device=weight.device, dtype=torch.int32)


class SeftModel(SparseDeltaTuner, BaseTuner):
    """
    SEFT tuner (arXiv 2505.24037). Created by `get_peft_model(pruned_model, SeftConfig(...))`.

    Training with the stock `Trainer` / `SFTTrainer`: add `SeftCallback()` (the CLI does). Custom loops:

        >>> for step in range(T):
        ...     model.seft_prepare_step(step, T)          # arms the gradient hooks on window steps
        ...     model(**batch).loss.backward()
        ...     optimizer.step()
        ...     model.seft_after_optimizer_step(optimizer, step, T)   # runs the cycle on cycle steps
        ...     optimizer.zero_grad()
    """

    prefix: str = "seft_"
    #: Run the cycle on all layers at once (`batched.py`); False: the per-layer reference loop (same result).
    seft_batched_cycle: bool = True
    tuner_layer_cls = SeftLayer
    recorded_sizes = (("pruned_sizes", "seft_pruned_indices"), ("grow_sizes", "seft_grow_candidates"))

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, torch.nn.Linear):
            raise TypeError(
                f"SEFT supports torch.nn.Linear targets only; `{current_key}` is a {type(base).__name__}. Remove it "
                "from `target_modules` or add it to `exclude_modules`."
            )
        k, target_nnz = self._validate_target(config, base, current_key)
        if target_nnz == base.weight.numel() and not config.inference_mode:
            self._note_target(
                current_key,
                "have no zero: SEFT keeps each matrix's sparsity and these are dense, so nothing is kept and nothing "
                "is resurrected (plain sparse fine-tuning). Prune the base first (hf_plugins.pruning.prune_model, "
                "`hf-plugins prune`), or set `target_sparsity` to prune during training.",
            )
        indices = _initial_positions(base.weight, k, config.init_seed, current_key)
        sizes = {
            "pruned_size": self.recorded_size(config, "pruned_sizes", current_key),
            "grow_size": self.recorded_size(config, "grow_sizes", current_key),
        }
        sizes["must_load"] = config.inference_mode
        if isinstance(target, SeftLayer):
            target.update_layer(adapter_name, k, indices, target_nnz, **sizes)
            target.sparse_name = current_key
            self._attach_weight_cache(target, adapter_name, config)
            return
        new = Linear(target, adapter_name, k, indices, target_nnz, **sizes)
        new.sparse_name = current_key
        self._attach_weight_cache(new, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)

    @staticmethod
    def _validate_target(config: SeftConfig, base: torch.nn.Linear, key: str) -> tuple[int, int]:
        w = base.weight.detach()
        numel = w.numel()
        nnz = int((w != 0).sum())
        k = _budget(config, base.out_features, base.in_features)
        if config.n_m is not None:
            n, m = parse_n_m(config.n_m)
            if base.in_features % m:
                raise ValueError(
                    f"`n_m`={config.n_m} needs in_features divisible by {m}, but `{key}` has in_features="
                    f"{base.in_features}; exclude it with `exclude_modules` or use unstructured mode."
                )
            if not check_n_m(w, n, m):
                raise ValueError(
                    f"`{key}` does not follow the {config.n_m} pattern (N zeros in every M inputs); prune the base "
                    f"first, e.g. `hf-plugins prune --n-m {config.n_m}` or hf_plugins.pruning.prune_model(..., n_m=...)."
                )
            target_nnz = nnz
        elif config.target_sparsity is None:
            target_nnz = nnz
        else:
            target_nnz = numel - int(numel * config.target_sparsity)
            if target_nnz > nnz:
                raise ValueError(
                    f"`target_sparsity`={config.target_sparsity} is unreachable for `{key}`: its base is only "
                    f"{1 - nnz / numel:.4f} sparse and SEFT can keep or raise sparsity, never lower it. Leave "
                    "target_sparsity unset (keep the base's) or choose a value >= the base's sparsity."
                )
        if target_nnz < nnz:  # extra pruning, done by the re-balancing of the first cycle
            reason = None
            if config.update_interval is None:
                reason = "update_interval=None runs no cycle"
            elif config.total_steps is not None and config.total_steps <= config.update_interval:
                reason = (
                    f"total_steps={config.total_steps} <= update_interval={config.update_interval} leaves no room for "
                    "a cycle (none runs on the last step)"
                )
            elif not config.resurrection:
                reason = "resurrection=False never re-balances the support"
            if reason is not None:
                raise ValueError(
                    f"`target_sparsity`={config.target_sparsity} needs extra pruning of `{key}` (its base is "
                    f"{1 - nnz / numel:.4f} sparse), which SEFT does at its first drop/grow/re-prune cycle, but "
                    f"{reason}. Set update_interval (and train for more steps than it), keep resurrection on, or "
                    "prune the base to the target first (hf_plugins.pruning.prune_model) and leave target_sparsity unset."
                )
        if k > min(nnz, target_nnz):
            raise ValueError(
                f"The SEFT budget k={k} of `{key}` exceeds its {min(nnz, target_nnz)} allowed non-zeros "
                f"({base.out_features}x{base.in_features} weight): the target sparsity is unreachable with this "
                "budget. Lower `density` / `r`, or the target sparsity."
            )
        return k, target_nnz

    # -- evolution --------------------------------------------------------------------------------------------
    def _seft_layers(self):
        return [m for m in self.model.modules() if isinstance(m, SeftLayer)]

    def _evolving_adapter(self) -> tuple[str, SeftConfig] | None:
        names = [a for a in self.active_adapters if isinstance(self.peft_config.get(a), SeftConfig)]
        if not names:
            return None
        if len(names) > 1:
            raise ValueError(f"SEFT evolves one adapter at a time; active SEFT adapters: {names}")
        cfg = self.peft_config[names[0]]
        return (names[0], cfg) if cfg.update_interval is not None and not cfg.inference_mode else None

    @staticmethod
    def _total(cfg: SeftConfig, total_steps: int | None, required: bool = True) -> int | None:
        """T, the run's number of optimizer steps: the argument, else `cfg.total_steps`; required by the schedule."""
        total = total_steps if total_steps and total_steps > 0 else cfg.total_steps
        if total is None and required:
            raise ValueError(
                "SEFT needs the run's number of optimizer steps to schedule its cycles: no cycle may run on the last "
                "step (it would replace trained deltas by new ones at exactly 0, below the pruned base's non-zero "
                "count) and the drop fraction decays over the run. Pass it as `total_steps` to seft_prepare_step / "
                "seft_after_optimizer_step, or set SeftConfig(total_steps=...); under the Trainer, SeftCallback "
                "passes max_steps."
            )
        return total

    def seft_is_cycle_step(self, step: int, total_steps: int | None = None) -> bool:
        """True if the 0-based optimizer step `step` ends with a cycle: (step + 1) % ΔT == 0, never the last step
        (new deltas get at least one update, so none is left at exactly 0 in the merged model). `total_steps` (or
        `SeftConfig.total_steps`) is required while an adapter evolves."""
        sel = self._evolving_adapter()
        if sel is None:
            return False
        cfg = sel[1]
        total = self._total(cfg, total_steps)
        return (step + 1) % cfg.update_interval == 0 and step + 1 < total

    def seft_prepare_step(self, step: int, total_steps: int | None = None) -> None:
        """Arm (or disarm) the layers' gradient hooks for the 0-based optimizer step `step`."""
        sel = self._evolving_adapter()
        layers = self._seft_layers()
        state = None
        if sel is not None:
            name, cfg = sel
            dt = cfg.update_interval
            acc = 1 if cfg.grow_criterion == "instant_gradient" else cfg.accumulation_steps
            cycle_step = step - step % dt + dt - 1
            cycle_ahead = cycle_step + 1 < self._total(cfg, total_steps)
            grow = cfg.grow_criterion != "random" and step % dt >= dt - acc and cycle_ahead
            sensitivity = (
                self.seft_is_cycle_step(step, total_steps)
                and cfg.n_m is None
                and cfg.resurrection
                and cfg.reprune_criterion == "sensitivity"
            )
            if grow or sensitivity:
                state = {
                    "adapter": name,
                    "grow": grow,
                    "fresh": step % dt == dt - acc,
                    "sensitivity": sensitivity,
                    "resurrection": cfg.resurrection,
                    "n_m": cfg.n_m is not None,
                }
        for layer in layers:
            layer._seft_sens = None
            if state is None or name not in layer.seft_values:
                layer._seft_step, layer.sparse_grad_hook = None, None
            else:
                layer._seft_step = dict(state)
                layer.sparse_grad_hook = layer._seft_grad_hook

    def seft_disarm(self) -> None:
        """Remove every gradient hook (e.g. after training)."""
        for layer in self._seft_layers():
            layer._seft_step, layer._seft_sens, layer.sparse_grad_hook = None, None, None

    @torch.no_grad()
    def seft_evolve(self, optimizer=None, step: int = 0, total_steps: int | None = None) -> dict:
        """Run one drop / grow / re-prune cycle on every SEFT layer of the active adapter (call after
        `optimizer.step()` of step `step`, before `zero_grad`). Returns summed counts."""
        sel = self._evolving_adapter()
        totals = {"dropped": 0, "grown": 0, "repruned": 0, "restored": 0, "layers": 0}
        if sel is None:
            return totals
        name, cfg = sel
        total = self._total(cfg, total_steps, required=False)
        all_layers = self._seft_layers()
        layers = [layer for layer in all_layers if name in layer.seft_values]
        if not layers:
            return totals
        cycles = torch.stack([layer.seft_cycles[name] for layer in layers]).tolist()  # one synchronisation
        p_later = drop_fraction_at(cfg.drop_fraction, cfg.drop_schedule, step + 1, total)
        fractions = [1.0 if c == 0 and cfg.full_first_reselection else p_later for c in cycles]
        if self.seft_batched_cycle and batched_ok(layers, name, cfg.grow_criterion):
            out = evolve_batched_(
                layers,
                name,
                fractions,
                optimizer=optimizer,
                reprune_criterion=cfg.reprune_criterion,
                resurrection=cfg.resurrection,
                n_m=cfg.n_m is not None,
            )
            totals.update(out, layers=len(layers))
            for layer in layers:
                layer._seft_step, layer.sparse_grad_hook = None, None
            _prepare_forward_plans(layers, name)
            return totals
        fraction_of = {id(layer): p for layer, p in zip(layers, fractions)}
        for i, layer in enumerate(all_layers):  # per layer: DTensors (FSDP2), random growth
            if name not in layer.seft_values:
                continue
            p = fraction_of[id(layer)]
            gen = torch.Generator().manual_seed(cfg.init_seed * 1_000_003 + step * 7919 + i)
            out = evolve_layer_(
                layer,
                name,
                p,
                optimizer=optimizer,
                grow_criterion=cfg.grow_criterion,
                reprune_criterion=cfg.reprune_criterion,
                resurrection=cfg.resurrection,
                n_m=cfg.n_m is not None,
                generator=gen,
            )
            for key, v in out.items():
                totals[key] += v
            totals["layers"] += 1
            layer._seft_step, layer.sparse_grad_hook = None, None
        _prepare_forward_plans(layers, name)
        return totals

    def seft_after_optimizer_step(self, optimizer, step: int, total_steps: int | None = None) -> dict | None:
        """`seft_evolve` if `step` is a cycle step, else nothing (the callback's body, for custom loops)."""
        if self.seft_is_cycle_step(step, total_steps):
            return self.seft_evolve(optimizer, step, total_steps)
        return None

    def seft_sparsity(self, adapter_name: str | None = None) -> dict[str, dict]:
        """Per adapted matrix: target non-zeros Z, structural support |S|, and |R|."""
        name = adapter_name or self.active_adapters[0]
        out = {}
        for key, module in self.model.named_modules():
            if isinstance(module, SeftLayer) and name in module.seft_values:
                out[key] = {
                    "target_nnz": int(module.seft_target_nnz[name]),
                    "support": module.support_size(name),
                    "repruned": int(module.seft_pruned_indices[name].numel()),
                    "numel": module.weight_numel,
                }
        return out

    # -- the sparsity contract at merge time --------------------------------------------------------------------
    def _warn_above_target(self, adapter_names: list[str] | None, why: str) -> None:
        """Warn once per adapter whose matrices hold more non-zeros than their target (the first cycle, which prunes
        to `target_sparsity`, has not run)."""
        names = adapter_names or [a for a in self.active_adapters if isinstance(self.peft_config.get(a), SeftConfig)]
        for name in names:
            layers = [
                (k, m) for k, m in self.model.named_modules() if isinstance(m, SeftLayer) and name in m.seft_values
            ]
            off = [
                (key, m.support_size(name), int(m.seft_target_nnz[name]), m.weight_numel)
                for key, m in layers
                if not m.merged
            ]
            off = [row for row in off if row[1] > row[2]]
            if not off:
                continue
            key, support, target, numel = off[0]
            warnings.warn(
                f"SEFT adapter `{name}`: {len(off)} of {len(layers)} matrices have more non-zeros than "
                f"`target_sparsity` allows {why} (e.g. `{key}`: sparsity {1 - support / numel:.4f}, target "
                f"{1 - target / numel:.4f}). The extra pruning happens at the first drop/grow/re-prune cycle, after "
                f"update_interval={self.peft_config[name].update_interval} optimizer steps: train for more steps "
                "than update_interval before merging.",
                UserWarning,
                stacklevel=3,
            )

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._warn_above_target(adapter_names, "at merge")
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge:
            self._warn_above_target(adapter_names, "at merge")
        return super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )

    def seft_check_run_length(self, total_steps: int) -> None:
        """Warn before training when `total_steps` leaves no room for the first cycle while some matrix is still
        above its target (called by `SeftCallback.on_train_begin`)."""
        sel = self._evolving_adapter()
        if sel is not None and total_steps and total_steps <= sel[1].update_interval:
            self._warn_above_target([sel[0]], f"and a run of {total_steps} steps runs no cycle")


def _prepare_forward_plans(layers: list, name: str) -> None:
    """After a cycle changed A and R: each layer's forward plan (`SeftLayer._seft_plan`, two host synchronisations)
    computed now, inside the cycle, rather than in the next training forward, for the layers the effective-weight
    cache does not serve (FSDP2, or the cache switched off): the steps between cycles then synchronise nothing."""
    for layer in layers:
        cache = layer._sparse_cache
        if cache is None or cache.sharded or not cache.enabled.get(name, False):
            layer._seft_plan(name)
