"""Configuration of SEFT (Sparsity Evolution Fine-Tuning of pruned LLMs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig
from peft.utils import PeftType

from ...pruning.masks import parse_n_m
from .._config_checks import check_bool, check_choice, check_int, check_real, check_sizes


DROP_SCHEDULES = ("linear", "cosine", "constant")
GROW_CRITERIA = ("gradient", "instant_gradient", "random")
REPRUNE_CRITERIA = ("sensitivity", "magnitude")


@dataclass
class SeftConfig(PeftConfig):
    """
    Configuration for SEFT (Xiao et al., arXiv 2505.24037): fine-tune an already pruned model with a sparse delta
    whose positions evolve (drop the weakest, grow where |grad| is largest, including at pruned positions), then
    re-prune by sensitivity |w * grad| so every matrix keeps exactly its target number of non-zeros.

    The official code and the paper body were not available; defaults marked "SpIEL" come from the closest
    verified code, the SpIEL PEFT fork (Ansell et al., arXiv 2401.16405; `src/peft/tuners/sft`), see docs/seft.md.

    > Budget

    Args:
        density (`float`, *optional*, defaults to `0.01`):
            Trainable deltas per matrix as a fraction of its entries, k = round(density * m * n) (SpIEL `density`).
        r (`int`, *optional*):
            LoRA-equivalent budget instead of `density`: k = r * (m + n) per matrix (as LIFT), for comparisons with
            LoRA at a matched number of trainable parameters.

    > Evolution (drop / grow / re-prune)

        update_interval (`int` or `None`, *optional*, defaults to `20`):
            Optimizer steps between cycles, ΔT (SpIEL `reselection_steps` 20; the SEFT paper reportedly uses 60 for
            C4 recovery and 10 for commonsense reasoning, unverified). `None` keeps the initial positions
            (static sparse ablation).
        accumulation_steps (`int`, *optional*, defaults to `5`):
            Last steps of each cycle whose gradients are accumulated for the grow step (SpIEL
            `selection_accumulation_steps` 5).
        drop_fraction (`float`, *optional*, defaults to `0.2`):
            Fraction p of the k deltas dropped (and regrown) per cycle (SpIEL `initial_reselection_rate` 0.2).
        drop_schedule (`str`, *optional*, defaults to `"linear"`):
            Decay of p over training: "linear" p(1 - t/T) (SpIEL default), "cosine", or "constant".
        full_first_reselection (`bool`, *optional*, defaults to `True`):
            The first cycle replaces all k (random) initial positions (p = 1, SpIEL), so the first real choice is
            gradient-driven.
        grow_criterion (`str`, *optional*, defaults to `"gradient"`):
            "gradient": largest |sum of gradients| over the accumulation window, at the top-k candidates of its first
            step (SpIEL); "instant_gradient": the cycle's last step only (RigL-style); "random": ablation.
        resurrection (`bool`, *optional*, defaults to `True`):
            Allow growth at pruned positions (the paper's App. E.1 reportedly shows it is needed). `False` grows only
            where the base is non-zero, so no re-pruning is needed.
        reprune_criterion (`str`, *optional*, defaults to `"sensitivity"`):
            Score of the non-delta support positions removed to restore the target: "sensitivity" |θ·g| with the
            gradient of the cycle's last step (paper App. E.2 reportedly), or "magnitude" |θ| (ablation).

    > Sparsity contract

        target_sparsity (`float`, *optional*):
            Target fraction of zeros per matrix; default: each base matrix's measured sparsity. It may be higher than
            the base's (extra pruning happens at the first cycle), never lower.
        n_m (`str`, *optional*):
            "2:4" / "4:8": the base must follow this N:M pattern (N zeros per M inputs); growth is restricted to its
            non-zero positions, so the pattern is kept exactly (no re-pruning).

    > Speed and memory

        cache_effective_weight (`bool`, *optional*, defaults to `True`):
            Keep every adapted layer's effective weight W_eff = W0 ⊙ (1 - 1_R) + scatter(A, δ) between steps, in
            one buffer in the compute dtype (tuners/_sparse_delta_cache.py): one more copy of the adapted weights (0.67 GiB for a
            0.5B model in bf16), no W_eff rebuild in each forward and backward. Our choice, not the paper's: on a
            0.5B model the per-layer rebuilds made the step host-bound (docs/seft.md, "Performance"). `False`:
            rebuild W_eff transiently (LoRA-sized autograd memory).

    > Other

        total_steps (`int`, *optional*):
            T, the run's number of optimizer steps, for custom loops that do not pass it to `seft_prepare_step` /
            `seft_after_optimizer_step` (one of the two is required: no cycle may run on the last step, and the drop
            schedule decays over T); under the Trainer its `max_steps` is used.
        init_seed (`int`, *optional*, defaults to `0`):
            Seed of the random initial positions (inside the base's support) and of the random grow ablation.
        target_modules (`list[str]` or `str`, *optional*):
            Modules to adapt; default: every linear projection of the decoder blocks (SpIEL targets all linear
            layers; the shared table of `hf_plugins/tuners/_sparse_delta_tuner.py`).
        pruned_sizes, grow_sizes (`dict[str, int]`, *optional*):
            Bookkeeping written by the tuner whenever the adapter is saved: |R| and the grow window's length per
            module, so that loaders that check shapes before loading (transformers' `load_adapter`) allocate matching
            buffers. Do not set by hand.

    Example:

        >>> from peft import get_peft_model
        >>> from hf_plugins import SeftConfig
        >>> model = get_peft_model(pruned_model, SeftConfig(density=0.01, task_type="CAUSAL_LM"))
    """

    density: float = field(default=0.01, metadata={"help": "Trainable deltas per matrix, as a fraction of entries."})
    r: int | None = field(default=None, metadata={"help": "LoRA-equivalent budget: k = r * (m + n) per matrix."})
    update_interval: int | None = field(
        default=20, metadata={"help": "Optimizer steps between drop/grow/re-prune cycles; None: static positions."}
    )
    accumulation_steps: int = field(default=5, metadata={"help": "Last steps of a cycle whose gradients grow."})
    drop_fraction: float = field(default=0.2, metadata={"help": "Fraction of deltas dropped and regrown per cycle."})
    drop_schedule: str = field(
        default="linear", metadata={"help": "Decay of drop_fraction: linear, cosine, constant."}
    )
    full_first_reselection: bool = field(default=True, metadata={"help": "First cycle replaces all initial deltas."})
    grow_criterion: str = field(
        default="gradient", metadata={"help": "gradient (accumulated), instant_gradient or random."}
    )
    resurrection: bool = field(default=True, metadata={"help": "Allow growth at pruned positions."})
    reprune_criterion: str = field(default="sensitivity", metadata={"help": "sensitivity |w*g| or magnitude |w|."})
    target_sparsity: float | None = field(
        default=None, metadata={"help": "Fraction of zeros per matrix; default: the base's measured sparsity."}
    )
    n_m: str | None = field(default=None, metadata={"help": "Keep this N:M pattern of the base (e.g. '2:4')."})
    cache_effective_weight: bool = field(
        default=True, metadata={"help": "Keep W_eff between steps (+1 copy of the adapted weights, faster steps)."}
    )
    total_steps: int | None = field(default=None, metadata={"help": "T of the drop schedule for custom loops."})
    init_seed: int = field(default=0, metadata={"help": "Seed of the initial positions and random growth."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules to adapt; default: every linear of the decoder blocks."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter."}
    )
    trainable_token_indices: list[int] | dict[str, list[int]] | None = field(
        default=None, metadata={"help": "Read by TRL's SFTTrainer; not used by SEFT."}
    )
    pruned_sizes: dict[str, int] | None = field(
        default=None, metadata={"help": "Written by the tuner at every save (|R| per module); do not set by hand."}
    )
    grow_sizes: dict[str, int] | None = field(
        default=None, metadata={"help": "Written by the tuner at every save (grow window per module); do not set."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType["SEFT"]
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        check_real("density", self.density, 0.0, 1.0, low_open=True)
        check_int("r", self.r, minimum=1, optional=True)
        check_int("update_interval", self.update_interval, minimum=1, optional=True)
        check_int("accumulation_steps", self.accumulation_steps, minimum=1)
        if self.update_interval is not None and self.accumulation_steps > self.update_interval:
            raise ValueError(
                f"`accumulation_steps` must be in [1, update_interval={self.update_interval}], got "
                f"{self.accumulation_steps}."
            )
        check_real("drop_fraction", self.drop_fraction, 0.0, 1.0)
        check_choice("drop_schedule", self.drop_schedule, DROP_SCHEDULES)
        check_bool("full_first_reselection", self.full_first_reselection)
        check_choice("grow_criterion", self.grow_criterion, GROW_CRITERIA)
        check_bool("resurrection", self.resurrection)
        check_choice("reprune_criterion", self.reprune_criterion, REPRUNE_CRITERIA)
        check_real("target_sparsity", self.target_sparsity, 0.0, 1.0, high_open=True, optional=True)
        check_bool("cache_effective_weight", self.cache_effective_weight)
        check_int("total_steps", self.total_steps, minimum=1, optional=True)
        check_int("init_seed", self.init_seed, minimum=0)
        check_sizes("pruned_sizes", self.pruned_sizes)
        check_sizes("grow_sizes", self.grow_sizes)
        if self.n_m is not None:
            n, m = parse_n_m(self.n_m)
            self.n_m = f"{n}:{m}"
            if self.target_sparsity is not None and abs(self.target_sparsity - n / m) > 1e-9:
                raise ValueError(
                    f"`target_sparsity`={self.target_sparsity} contradicts `n_m`={self.n_m} (sparsity {n / m}); "
                    "leave target_sparsity unset in N:M mode."
                )
