"""The optimizer side of AlphaDecay: a mixin placed in front of the base optimizer class (`alphadecay.py` builds
`AlphaDecay<Base>`) whose `step()` counts updates, refreshes the analysed groups' decays every `interval` updates
(in time for that update, as the official code) and then runs the base update.

- Refresh: synchronous, or overlapped with the previous step's forward/backward (`_alphadecay_refresh.py`, same
  result). A matrix without a finite alpha (zero, rank-deficient or non-finite weights) keeps its previous decay.
- Counting: a step the base optimizer skips (Stable-SPAM on a non-finite gradient, also when it learns so one step
  later on the device) or that raises is not counted.
- Decoupled bases (AdamW; Adam with `decoupled_weight_decay=True`): the per-matrix decays p <- p (1 - lr wd) in one
  `torch._foreach_mul_` and the base update on the groups merged by their other hyperparameters (usually 2 instead of
  one per matrix), checked first for what would make the base update fail (sparse gradients), so a failing step
  changes nothing. With a Stable-SPAM base the decays need no pass of their own: each group's decay is a per-tensor
  scalar of its fused update kernel.
"""

from __future__ import annotations

import logging
import math
import operator
import statistics
from typing import Any

import torch

from hf_plugins.distributed import broadcast_object, full_tensor, local_tensor

from ._alphadecay_refresh import BackgroundRefresh, can_overlap
from .esd import esd_alphas
from .stable_spam import _is_number


logger = logging.getLogger(__name__)

__all__ = ["AlphaDecayMixin", "check_alphadecay_config", "linear_decay_map"]


def _is_count(x, minimum: int) -> bool:
    return _is_number(x) and math.isfinite(x) and int(x) == x and x >= minimum


def check_alphadecay_config(
    interval, wd_min_ratio, wd_max_ratio, xmin_pos, esd_streams, merge_groups, overlap_refresh
) -> None:
    """`ValueError` naming the first invalid AlphaDecay hyperparameter (checked by `AlphaDecay()` and again by the
    optimizer class, which can be built directly)."""
    if not _is_count(interval, 1):
        raise ValueError(f"`interval` must be a positive integer (updates between refreshes), got {interval!r}.")
    if not (_is_number(wd_min_ratio) and _is_number(wd_max_ratio) and 0 <= wd_min_ratio <= wd_max_ratio < math.inf):
        raise ValueError(
            "`wd_min_ratio` and `wd_max_ratio` must be finite numbers with 0 <= min <= max, got "
            f"{wd_min_ratio!r}, {wd_max_ratio!r}."
        )
    if not (_is_number(xmin_pos) and 1 < xmin_pos < math.inf):
        raise ValueError(
            f"`xmin_pos` must be a finite number > 1 (xmin = the int(N / xmin_pos)-th eigenvalue), got {xmin_pos!r}."
        )
    if not _is_count(esd_streams, 1):
        raise ValueError(f"`esd_streams` must be a positive integer, got {esd_streams!r}.")
    if not isinstance(merge_groups, bool):
        raise ValueError(f"`merge_groups` must be True or False, got {merge_groups!r}.")
    if overlap_refresh not in (None, True, False):
        raise ValueError(f"`overlap_refresh` must be True, False or None, got {overlap_refresh!r}.")


def linear_decay_map(alphas: list[float], weight_decay: float, s1: float, s2: float) -> list[float | None]:
    """`weight_decay * (s1 + (s2 - s1) * (alpha - alpha_min) / (alpha_max - alpha_min))` for each alpha (the
    official `tb_linear_map`, `np.interp(alpha, [min, max], [s1 * wd, s2 * wd])`), min and max over the finite
    alphas. If all finite alphas are equal every matrix gets `weight_decay`; a non-finite alpha maps to None
    (the caller keeps that matrix's previous decay)."""
    finite = [a for a in alphas if math.isfinite(a)]
    if not finite:
        return [None] * len(alphas)
    lo, hi = min(finite), max(finite)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return [float(weight_decay) if math.isfinite(a) else None for a in alphas]
    return [
        float(weight_decay * (s1 + (s2 - s1) * (a - lo) / (hi - lo))) if math.isfinite(a) else None for a in alphas
    ]


class AlphaDecayMixin:
    """Added in front of a base optimizer class by `alphadecay_optimizer_class`; the class attributes
    `_alphadecay_decoupled` (the base decays as torch's AdamW) and `_alphadecay_rejects_sparse` come from there."""

    _alphadecay_decoupled = False
    _alphadecay_rejects_sparse = False

    def __init__(
        self,
        params,
        *,
        alphadecay_interval: int,
        alphadecay_wd_min_ratio: float,
        alphadecay_wd_max_ratio: float,
        alphadecay_xmin_pos: float = 2.0,
        alphadecay_esd_streams: int = 1,
        alphadecay_merge_groups: bool = True,
        alphadecay_overlap_refresh: bool | None = None,
        **base_kwargs,
    ):
        check_alphadecay_config(
            alphadecay_interval,
            alphadecay_wd_min_ratio,
            alphadecay_wd_max_ratio,
            alphadecay_xmin_pos,
            alphadecay_esd_streams,
            alphadecay_merge_groups,
            alphadecay_overlap_refresh,
        )
        super().__init__(params, **base_kwargs)
        self.alphadecay_config = {
            "interval": int(alphadecay_interval),
            "s1": float(alphadecay_wd_min_ratio),
            "s2": float(alphadecay_wd_max_ratio),
            "xmin_pos": float(alphadecay_xmin_pos),
            "esd_streams": int(alphadecay_esd_streams),
            "merge_groups": bool(alphadecay_merge_groups),
            "overlap_refresh": alphadecay_overlap_refresh,
        }
        self._alphadecay_warned = False
        self._alphadecay_layouts: dict[tuple, tuple] = {}
        self._alphadecay_pending: BackgroundRefresh | None = None
        self.refresh_decays()  # the first schedule comes from the initial weights, as in the official code

    def _analysed_groups(self) -> list[dict]:
        return [g for g in self.param_groups if "alphadecay_module" in g]

    def add_param_group(self, param_group: dict) -> None:
        """The base's `add_param_group` (the constructor's groups come through here too), after checking the group's
        `lr` and `weight_decay` (torch's AdamW checks only its constructor arguments, and accepts an infinite lr):
        a bad value raises `ValueError` naming the field and the group, and the group is not added."""
        for field in ("lr", "weight_decay"):
            value = param_group.get(field, self.defaults.get(field, 0.0))
            if isinstance(value, torch.Tensor):  # a tensor lr (torch's capturable / compiled paths) is the base's
                continue
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{type(self).__name__} param group {len(self.param_groups)}: `{field}` must be a finite number "
                    f">= 0, got {value!r}."
                )
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ refresh

    def _analysed_weights(self, groups: list[dict]) -> list[torch.Tensor]:
        # The ESD needs whole matrices: under FSDP2 each rank holds a shard, so gather it (`full_tensor`, a no-op for
        # plain tensors); every rank then uses rank 0's alphas (`_set_decays`), so all ranks hold identical decays.
        return [full_tensor(g["params"][0].detach()) for g in groups]

    @torch.no_grad()
    def refresh_decays(self) -> None:
        """Recompute every analysed matrix's alpha now and set its group's `weight_decay` from the linear map."""
        self._discard_background_refresh()
        groups = self._analysed_groups()
        if groups:
            cfg = self.alphadecay_config
            alphas = esd_alphas(self._analysed_weights(groups), cfg["xmin_pos"], num_streams=cfg["esd_streams"])
            self._set_decays(groups, alphas)

    def _set_decays(self, groups: list[dict], alphas: list[float]) -> None:
        alphas = broadcast_object(alphas)
        cfg = self.alphadecay_config
        decays = linear_decay_map(alphas, groups[0]["alphadecay_base_wd"], cfg["s1"], cfg["s2"])
        bad = []
        for g, a, d in zip(groups, alphas, decays):
            if d is None:
                bad.append(g["alphadecay_module"])
                continue
            g["alphadecay_alpha"] = float(a)
            g["weight_decay"] = float(d)
        if bad and not self._alphadecay_warned:
            self._alphadecay_warned = True
            logger.warning(
                "AlphaDecay: no finite alpha for %d matrices (e.g. %s: a zero, rank-deficient or non-finite matrix); "
                "they keep their previous weight decay.",
                len(bad),
                bad[0],
            )

    def _use_overlap(self, weights: list[torch.Tensor]) -> bool:
        flag = self.alphadecay_config["overlap_refresh"]
        if flag is None:  # default: on for CUDA weights
            return can_overlap(weights) and weights[0].device.type == "cuda"
        return bool(flag) and can_overlap(weights)

    def _discard_background_refresh(self) -> None:
        pending, self._alphadecay_pending = self._alphadecay_pending, None
        if pending is not None:
            try:
                pending.result()  # finish it: its side stream still reads the weights
            except Exception:  # noqa: BLE001 - its result is not used
                pass

    def _refresh_at(self, count: int, groups: list[dict]) -> None:
        """The refresh due at update `count`: from the background refresh started for it, else computed now."""
        pending = self._alphadecay_pending
        if pending is not None and pending.target == count:
            self._alphadecay_pending = None
            self._set_decays(groups, pending.result())
        else:
            self.refresh_decays()

    def _start_background_refresh(self, groups: list[dict]) -> None:
        nxt = groups[0]["alphadecay_updates"] + 1
        if nxt % self.alphadecay_config["interval"] != 0 or self._alphadecay_pending is not None:
            return
        if not self._use_overlap([g["params"][0] for g in groups]):  # decided on the (local) parameters: FSDP2
            return  # gathers the whole matrices only for a refresh that runs
        weights = self._analysed_weights(groups)
        cfg = self.alphadecay_config
        self._alphadecay_pending = BackgroundRefresh(weights, cfg["xmin_pos"], cfg["esd_streams"], target=nxt)

    def load_state_dict(self, state_dict: dict) -> None:
        self._discard_background_refresh()  # the weights may be replaced along with the state
        super().load_state_dict(state_dict)

    # ------------------------------------------------------------------ step

    def _on_skipped_step(self) -> None:
        """The base optimizer skipped a counted step (Stable-SPAM: non-finite gradient): it does not count."""
        parent = getattr(super(), "_on_skipped_step", None)
        if parent is not None:
            parent()
        for g in self._analysed_groups():
            g["alphadecay_updates"] -= 1

    def _check_dense_gradients(self) -> None:
        for index, g in enumerate(self.param_groups):
            for p in g["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__}: param group {index} has a sparse gradient, which the base optimizer "
                        "does not support; no parameter was changed."
                    )

    def step(self, closure=None):
        resolve = getattr(self, "_resolve_pending", None)  # Stable-SPAM: a skip detected on the device last step
        if resolve is not None:
            resolve()
        groups = self._analysed_groups()
        if not groups:
            return super().step(closure)
        if self._alphadecay_rejects_sparse:
            self._check_dense_gradients()
        count = groups[0]["alphadecay_updates"] + 1
        for g in groups:
            g["alphadecay_updates"] = count
        try:
            # Refresh inside the update whose number is a multiple of `interval` (official: before the step when
            # (update_step + 1) % every == 0), so the new decays apply to that update already.
            if count % self.alphadecay_config["interval"] == 0:
                self._refresh_at(count, groups)
            elif self._alphadecay_pending is not None:
                self._discard_background_refresh()  # started for an update that was not counted after all
            loss = self._base_step(closure, groups)
        except BaseException:
            for g in groups:  # a failed step is not counted
                g["alphadecay_updates"] = count - 1
            raise
        self._start_background_refresh(groups)
        return loss

    def _base_step(self, closure, groups: list[dict]):
        if not (self._alphadecay_decoupled and self._can_merge()):
            return super().step(closure)
        loss = None
        if closure is not None:  # evaluated first, as the base step does, so the decays see its gradients
            with torch.enable_grad():
                loss = closure()
        merged = self._merged_groups()
        if merged is None:
            super().step()  # per group (the closure was evaluated above)
            return loss
        self._apply_matrix_decays(groups)
        own = self.param_groups
        self.param_groups = merged
        try:
            super().step()
        finally:
            self.param_groups = own
        return loss

    def _can_merge(self) -> bool:
        # A GradScaler that hands fused optimizers `found_inf` may skip the update; the decay must be skipped with
        # it, which only the base step knows: run it per group then.
        return (
            self.alphadecay_config["merge_groups"]
            and getattr(self, "grad_scale", None) is None
            and getattr(self, "found_inf", None) is None
        )

    def _merged_groups(self) -> list[dict] | None:
        """The groups the base update runs on: analysed groups at decay 0 (their decay is applied by
        `_apply_matrix_decays`), merged with every group whose other hyperparameters (lr, betas, eps, fused, ...)
        are equal. None (run per group) when a group has tensor lr / decay, coupled decay or unhashable values."""
        buckets: dict[tuple, dict] = {}
        for g in self.param_groups:
            layout = tuple(g)
            entry = self._alphadecay_layouts.get(layout)
            if entry is None:
                names = sorted(
                    k for k in layout if k not in ("params", "weight_decay") and not k.startswith("alphadecay_")
                )
                entry = self._alphadecay_layouts[layout] = (tuple(names), operator.itemgetter(*names))
            names, get = entry
            lr, wd = g["lr"], g["weight_decay"]
            if isinstance(lr, torch.Tensor) or isinstance(wd, torch.Tensor):
                return None
            if not g.get("decoupled_weight_decay", isinstance(self, torch.optim.AdamW)):
                return None
            key = (names, get(g), 0.0 if "alphadecay_module" in g else wd)
            try:
                bucket = buckets.get(key)
            except TypeError:  # an unhashable hyperparameter value
                return None
            if bucket is None:
                bucket = {k: v for k, v in g.items() if not k.startswith("alphadecay_")}
                bucket["params"], bucket["weight_decay"] = [], key[2]
                buckets[key] = bucket
            bucket["params"].extend(g["params"])
        return list(buckets.values())

    @torch.no_grad()
    def _apply_matrix_decays(self, groups: list[dict]) -> None:
        """p <- p * (1 - lr * wd) for every analysed matrix with a gradient, with its group's current lr and decay:
        torch's AdamW step does exactly this before the moment update (which does not read p), and skips
        parameters without a gradient."""
        params, factors = [], []
        for g in groups:
            factor = 1.0 - g["lr"] * g["weight_decay"]
            if factor == 1.0:
                continue
            for p in g["params"]:
                if p.grad is not None:
                    params.append(local_tensor(p))  # FSDP2: this rank's shard (the decay is element-wise)
                    factors.append(factor)
        if params:
            torch._foreach_mul_(params, factors)

    # ------------------------------------------------------------------ reporting

    def alphadecay_table(self) -> dict[str, dict[str, float]]:
        """`{module name: {"alpha": ..., "weight_decay": ...}}` for the analysed matrices."""
        return {
            g["alphadecay_module"]: {"alpha": g["alphadecay_alpha"], "weight_decay": g["weight_decay"]}
            for g in self._analysed_groups()
        }

    def pop_stats(self) -> dict[str, float]:
        """The base optimizer's stats (if any) plus `alphadecay/alpha_{min,median,max}`,
        `alphadecay/wd_{min,max}` and the mean alpha per module type (`alphadecay/alpha/q_proj`, ...)."""
        parent = getattr(super(), "pop_stats", None)
        out: dict[str, Any] = dict(parent()) if parent is not None else {}
        groups = self._analysed_groups()
        alphas = [g["alphadecay_alpha"] for g in groups if math.isfinite(g["alphadecay_alpha"])]
        if alphas:
            out["alphadecay/alpha_min"] = min(alphas)
            out["alphadecay/alpha_median"] = statistics.median(alphas)
            out["alphadecay/alpha_max"] = max(alphas)
            decays = [g["weight_decay"] for g in groups]
            out["alphadecay/wd_min"], out["alphadecay/wd_max"] = min(decays), max(decays)
            by_type: dict[str, list[float]] = {}
            for g in groups:
                if math.isfinite(g["alphadecay_alpha"]):
                    by_type.setdefault(g["alphadecay_module"].rsplit(".", 1)[-1], []).append(g["alphadecay_alpha"])
            for kind, values in sorted(by_type.items()):
                out[f"alphadecay/alpha/{kind}"] = sum(values) / len(values)
        return out
