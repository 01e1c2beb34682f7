"""`LiftConfig`: the PEFT config of LIFT (arXiv 2506.00772)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from peft.config import PeftConfig
from peft.utils import PeftType

from .._config_checks import check_bool, check_choice, check_int, check_real, check_sizes
from .selection import SELECTION_METHODS


__all__ = ["LiftConfig"]


@dataclass
class LiftConfig(PeftConfig):
    """
    Configuration for LIFT (arXiv 2506.00772, ICML 2025): train only the "principal weights" of each matrix, the
    top-k entries by magnitude of its rank-q approximation, re-selected every `update_interval` updates.

    > Parameters that control the budget and the selection

    Args:
        r (`int`, *optional*, defaults to `128`):
            LoRA-equivalent budget: a matrix of shape (m, n) trains k = min(r * (m + n), m * n) entries, as many as
            LoRA of rank r (paper Tables 1-2 use r = 128; official code `k = min((m+n)*lora_rank, m*n)`).
        density (`float`, *optional*):
            Alternative budget: k = round(density * m * n) per matrix. When set, `r` is ignored.
        lra_rank (`int` or `"full"`, *optional*):
            Rank q of the low-rank approximation. Default (`None`): q = r, which the paper finds best (App. G.8,
            Fig. 16); with `density`, q = the LoRA-equivalent rank of the density, round(k / (m + n)). `"full"`
            selects by the magnitude of W itself (the paper's "weight magnitude" baseline, Table 17).
        selection_method (`str`, *optional*, defaults to `"eigh"`):
            How the rank-q approximation is computed: `"eigh"` (top-q eigenvectors of the smaller Gram matrix,
            equal to the truncated SVD up to round-off), `"svd"` (exact truncated SVD, the official route),
            `"randomized"` (randomized subspace iteration; cheap but inexact on flat spectra).
        oversample (`int`, *optional*, defaults to `16`), niter (`int`, *optional*, defaults to `4`):
            Extra columns and power iterations of `"randomized"` (ours; the official `--niter` path crashes).
        selection_seed (`int`, *optional*, defaults to `0`):
            Seed of `"randomized"`'s test matrix, and of the random values when `init_weights=False`.

    > Parameters that control re-selection

    Args:
        update_interval (`int` or `None`, *optional*, defaults to `400`):
            Optimizer updates between mask re-selections (official MATH-10K configs: 400; commonsense: 2000), at the
            official code's timing: after update T - 1, 2T - 1, ... `None` keeps the first mask (the paper's
            fixed-mask variant, App. A). With the stock `Trainer`, add `LiftRefreshCallback()`; custom loops call
            `model.maybe_refresh(updates_done, optimizer)` after every update.
        on_leave (`str`, *optional*, defaults to `"keep"`):
            What happens to the learned change of an entry that leaves the mask at a refresh. `"keep"`: it stays in
            a frozen residual saved with the adapter (the official optimizer edits W in place, so a leaving entry keeps
            its change there; the model's function never changes at a refresh). `"reset"`: it is dropped (the adapter stays exactly k
            entries, but each refresh changes the function).

    > Speed and memory

        cache_effective_weight (`bool`, *optional*, defaults to `False`):
            Keep every adapted layer's effective weight W0 + scatter(A, δ) + residual between optimizer steps, in
            one buffer in the compute dtype (tuners/_sparse_delta_cache.py): one more copy of the adapted weights
            (0.67 GiB for a 0.5B model in bf16) for no W_eff rebuild in each forward and backward, 1.2-1.55x faster
            steps on a 0.5B model (docs/lift.md, "Performance"). Off by default so that peak memory stays at or below
            LoRA's at every batch size (with it, a B=1 x T=256 step on that model peaks at 1.32x LoRA's).

    > Parameters that control which modules are adapted

    Args:
        target_modules (`list[str]` or `str`, *optional*):
            Module names or a regex. Default: all seven projections of the blocks for llama, qwen2, mistral and
            hf_plugins' own models (paper: all linear projections; not `lm_head`, not embeddings).
        exclude_modules (`list[str]` or `str`, *optional*):
            Module names or a regex to leave out.
        modules_to_save (`list[str]`, *optional*):
            Extra modules trained densely and saved with the adapter.
        init_weights (`bool`, *optional*, defaults to `True`):
            Start from a zero delta (the model is unchanged at creation). `False` draws small random values at the
            selected entries; for tests only.
        residual_sizes (`dict[str, int]`, *optional*):
            Bookkeeping written by the tuner whenever the adapter is saved: the number of residual entries per
            module, so that loaders that check shapes before loading (transformers' `load_adapter`) allocate matching
            buffers.

    Example:

        >>> from peft import get_peft_model
        >>> from hf_plugins import LiftConfig
        >>> model = get_peft_model(base_model, LiftConfig(r=16, update_interval=100, task_type="CAUSAL_LM"))
    """

    r: int = field(default=128, metadata={"help": "LoRA-equivalent budget: k = r * (m + n) entries per matrix."})
    density: float | None = field(
        default=None, metadata={"help": "Alternative budget: k = round(density * m * n) per matrix; overrides r."}
    )
    lra_rank: int | str | None = field(
        default=None,
        metadata={"help": "Rank q of the low-rank approximation; None = r (paper Fig. 16); 'full' = plain magnitude."},
    )
    selection_method: str = field(
        default="eigh", metadata={"help": "How the rank-q approximation is computed: 'eigh', 'svd' or 'randomized'."}
    )
    oversample: int = field(default=16, metadata={"help": "Extra columns of the 'randomized' selection."})
    niter: int = field(default=4, metadata={"help": "Power iterations of the 'randomized' selection."})
    selection_seed: int = field(default=0, metadata={"help": "Seed of the 'randomized' selection."})
    update_interval: int | None = field(
        default=400, metadata={"help": "Updates between mask re-selections; None keeps the first mask."}
    )
    on_leave: str = field(
        default="keep",
        metadata={"help": "Entries that leave the mask: 'keep' their change in a frozen residual, or 'reset' it."},
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names or regex to adapt; default: q,k,v,o,gate,up,down projections."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or regex to leave out."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules trained densely and saved with the adapter."}
    )
    trainable_token_indices: list[int] | dict[str, list[int]] | None = field(
        default=None,
        metadata={"help": "Read (not used) by TRL's SFTTrainer when it adds chat-template tokens; leave None."},
    )
    cache_effective_weight: bool = field(
        default=False, metadata={"help": "Keep W_eff between steps (+1 copy of the adapted weights, faster steps)."}
    )
    init_weights: bool = field(default=True, metadata={"help": "Zero delta at creation; False is for tests only."})
    residual_sizes: dict[str, int] | None = field(
        default=None,
        metadata={"help": "Written by the tuner at every save (residual entries per module); do not set by hand."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType["LIFT"]
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        check_int("r", self.r, minimum=1)
        check_real("density", self.density, 0.0, 1.0, low_open=True, optional=True)
        if self.lra_rank != "full":
            try:
                check_int("lra_rank", self.lra_rank, minimum=1, optional=True)
            except ValueError:
                raise ValueError(
                    f"`lra_rank` must be a positive integer, 'full' or None; got {self.lra_rank!r}."
                ) from None
        check_choice("selection_method", self.selection_method, SELECTION_METHODS)
        check_int("oversample", self.oversample, minimum=0)
        check_int("niter", self.niter, minimum=0)
        check_int("selection_seed", self.selection_seed, minimum=0)
        check_int("update_interval", self.update_interval, minimum=1, optional=True)
        check_choice("on_leave", self.on_leave, ("keep", "reset"))
        check_bool("cache_effective_weight", self.cache_effective_weight)
        check_bool("init_weights", self.init_weights)
        check_sizes("residual_sizes", self.residual_sizes)
        if self.on_leave == "reset" and self.update_interval is not None:
            warnings.warn(
                "on_leave='reset' drops the learned change of entries that leave the mask, so every refresh changes "
                "the model's outputs; the paper's runs kept them (on_leave='keep').",
                UserWarning,
                stacklevel=3,
            )

    def budget(self, out_features: int, in_features: int) -> tuple[int, int | None]:
        """`(k, q)` for a weight of shape (out_features, in_features); q None means plain magnitude."""
        m, n = out_features, in_features
        if self.density is not None:
            k = max(1, min(m * n, round(self.density * m * n)))
            default_q = max(1, round(k / (m + n)))
        else:
            k = min(self.r * (m + n), m * n)
            default_q = self.r
        if self.lra_rank == "full":
            return k, None
        q = default_q if self.lra_rank is None else self.lra_rank
        return k, (None if q >= min(m, n) else q)
