"""Configs of the SRLM recipe (arXiv 2506.13404 v3, CPAL 2026): one dataclass per stage kind and one for the
pipeline. Every default is the paper's (marked [paper], second-hand: no official code exists), TRL 1.16's
([TRL]) or ours ([ours]); see docs/srlm.md."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any


__all__ = [
    "DIVERGENCES",
    "STAGE_KINDS",
    "KdStageConfig",
    "RlStageConfig",
    "SftStageConfig",
    "SrlmConfig",
    "parse_stages",
]

STAGE_KINDS = ("sft", "kd", "rl")

# Our `divergence` names -> the `beta` of TRL's DistillationConfig / GKDConfig, which selects the divergence
# (0 = forward KL(p_T || p_S), 1 = reverse KL(p_S || p_T), in between the generalised JSD). We never expose a bare
# "beta": TRL uses that name for three different things.
DIVERGENCES = {"forward_kl": 0.0, "jsd": 0.5, "reverse_kl": 1.0}

# Values TRL 1.16's GRPOConfig accepts; it checks them only inside training (the first loss / reward computation).
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
GRPO_SCALE_REWARDS = ("group", "batch", "none", True, False)


def _check_int(owner, name: str, minimum: int) -> None:
    value = getattr(owner, name)
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")


def _check_finite(owner, name: str, low: float | None = None, *, strict: bool = False) -> None:
    value = getattr(owner, name)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (low is None or (value > low if strict else value >= low))):
        bound = "" if low is None else f" {'>' if strict else '>='} {low}"
        raise ValueError(f"`{name}` must be a finite number{bound}, got {value!r}")


@dataclass
class StageConfig:
    """Fields shared by every stage.

    Args:
        max_steps (`int`, *optional*, defaults to `20`):
            Optimizer steps of the stage [ours: a CPU-sized default; the paper trains 4 epochs].
        learning_rate (`float` or `None`, *optional*):
            Peak learning rate; `None` uses the stage's default (see each stage).
        per_device_train_batch_size (`int`, *optional*, defaults to `8`):
            Sequences per optimizer step (RL: derived from `num_generations` x `prompts_per_step`).
        method (`str`, *optional*, defaults to `"full"`):
            A `hf_plugins.registry.METHODS` name (`full`, `lora`, `lift`, ...): full fine-tuning or a PEFT config.
            A PEFT stage is merged (`merge_and_unload`) before the hand-off, so every stage starts from a plain model.
        method_options (`dict`, *optional*):
            Options of `method` (e.g. `{"r": 8}` for LoRA).
        trainer_kwargs (`dict`, *optional*):
            Any other field of the stage's TRL config (`SFTConfig`, `DistillationConfig`, `GKDConfig`, `GRPOConfig`).
    """

    max_steps: int = 20
    learning_rate: float | None = None
    per_device_train_batch_size: int = 8
    method: str = "full"
    method_options: dict[str, Any] = field(default_factory=dict)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check_int(self, "max_steps", 1)
        if self.learning_rate is not None:
            _check_finite(self, "learning_rate", 0, strict=True)
        _check_int(self, "per_device_train_batch_size", 1)

    def resolved_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else self.default_learning_rate()

    def default_learning_rate(self) -> float:
        # [paper, unverified] full fine-tuning 4.0e-5, LoRA 1.0e-4.
        return 4e-5 if self.method == "full" else 1e-4


@dataclass
class SftStageConfig(StageConfig):
    """`sft`: TRL `SFTTrainer` on prompt/completion data, loss on the completion only.

    Args:
        max_length (`int`, *optional*, defaults to `512`):
            Truncation length [ours: arithmetic solutions are < 200 tokens; the paper's 8192 is for R1 traces].
    """

    max_length: int = 512

    def __post_init__(self):
        super().__post_init__()
        if self.max_length < 8:
            raise ValueError(f"`max_length` must be >= 8, got {self.max_length}")


@dataclass
class KdStageConfig(SftStageConfig):
    """`kd`: knowledge distillation, sequence-level (default) or logit-level.

    Args:
        kind (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"`: the teacher writes solutions, those with the correct final answer are kept (deduplicated),
            and the student is fine-tuned on them with `SFTTrainer` (any teacher, any vocabulary; matches the
            paper's text-only KD data). `"logit"`: TRL's `DistillationTrainer` / `GKDTrainer` match the teacher's
            next-token distributions (the vocabularies must be identical).
        teacher (`str` or model, *optional*, defaults to `"arithmetic"`):
            `"arithmetic"` (the programmatic teacher, sequence KD only), `"smollm2"`, `"tiny"`, a local directory,
            or a `PreTrainedModel` object.
        teacher_tokenizer (*optional*):
            The tokenizer of a teacher given as an object (default: the student's).
        samples_per_problem (`int`, *optional*, defaults to `4`):
            k teacher samples per problem for sequence KD with an LM teacher [ours].
        teacher_temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of an LM teacher for sequence KD [ours].
        teacher_max_new_tokens (`int`, *optional*, defaults to `256`):
            Length cap of teacher solutions.
        divergence (`str`, *optional*, defaults to `"reverse_kl"`):
            Logit KD: `"forward_kl"`, `"jsd"` or `"reverse_kl"` (TRL's DistillationConfig default, beta=1).
        trainer (`str`, *optional*, defaults to `"distillation"`):
            Logit KD: `"distillation"` (TRL `DistillationTrainer`, on-policy, loss at `temperature`) or `"gkd"`
            (`trl.experimental.gkd.GKDTrainer`, mixes on-policy / dataset / teacher sequences with `lmbda`,
            `seq_kd`; its temperature affects sampling only).
        temperature (`float`, *optional*, defaults to `1.0`):
            Logit KD sampling temperature (and loss temperature for `"distillation"`) [TRL].
        lmbda (`float`, *optional*, defaults to `0.5`):
            GKD: probability that a step trains on student samples [TRL GKDConfig].
        seq_kd (`bool`, *optional*, defaults to `False`):
            GKD: off-policy steps use teacher samples instead of the dataset's solutions [TRL GKDConfig].
        max_completion_length (`int`, *optional*, defaults to `128`):
            Logit KD: tokens the student (or teacher) generates per prompt [ours; TRL: 512 / 128].
    """

    kind: str = "sequence"
    teacher: Any = "arithmetic"
    teacher_tokenizer: Any = None
    samples_per_problem: int = 4
    teacher_temperature: float = 0.7
    teacher_max_new_tokens: int = 256
    divergence: str = "reverse_kl"
    trainer: str = "distillation"
    temperature: float = 1.0
    lmbda: float = 0.5
    seq_kd: bool = False
    max_completion_length: int = 128

    def __post_init__(self):
        super().__post_init__()
        if self.kind not in ("sequence", "logit"):
            raise ValueError(f"`kind` must be 'sequence' or 'logit', got {self.kind!r}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"`divergence` must be one of {sorted(DIVERGENCES)}, got {self.divergence!r}")
        if self.trainer not in ("distillation", "gkd"):
            raise ValueError(f"`trainer` must be 'distillation' or 'gkd', got {self.trainer!r}")
        if self.kind == "logit" and isinstance(self.teacher, str) and self.teacher == "arithmetic":
            raise ValueError(
                "the programmatic 'arithmetic' teacher has no logits: use kind='sequence', or give an LM teacher "
                "with the student's tokenizer for kind='logit'"
            )
        if self.samples_per_problem < 1:
            raise ValueError(f"`samples_per_problem` must be >= 1, got {self.samples_per_problem}")
        if self.teacher_temperature < 0 or self.temperature <= 0:
            raise ValueError(
                f"temperatures must be positive, got teacher_temperature={self.teacher_temperature}, "
                f"temperature={self.temperature}"
            )
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"`lmbda` must be in [0, 1], got {self.lmbda}")
        if self.max_completion_length < 1 or self.teacher_max_new_tokens < 1:
            raise ValueError("`max_completion_length` and `teacher_max_new_tokens` must be >= 1")

    def default_learning_rate(self) -> float:
        if self.kind == "sequence":
            return super().default_learning_rate()  # plain SFT on teacher text: the sft stage's settings
        return 1e-6 if self.trainer == "distillation" else 2e-5  # TRL DistillationConfig / GKDConfig defaults

    @property
    def beta(self) -> float:
        return DIVERGENCES[self.divergence]


@dataclass
class RlStageConfig(StageConfig):
    """`rl`: TRL `GRPOTrainer` (no vLLM) with verifiable rewards.

    Args:
        num_generations (`int`, *optional*, defaults to `8`):
            G completions per prompt [TRL].
        prompts_per_step (`int`, *optional*, defaults to `1`):
            Prompts per optimizer step; the batch is G x prompts_per_step sequences [TRL's default batch gives 1].
        max_completion_length (`int`, *optional*, defaults to `128`):
            [ours: arithmetic solutions are short; TRL: 512].
        max_prompt_length (`int`, *optional*, defaults to `256`):
            Problems with longer prompts are dropped (TRL 1.16 does not truncate prompts) [ours].
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature [ours; TRL: 1.0]. At 1.0 SmolLM2-135M-Instruct's samples of arithmetic solutions
            are mostly incoherent and run past 96 tokens in 88% of cases (69% at 0.7), while the greedy evaluation
            reads the distribution's mode; see docs/srlm.md.
        kl_coef (`float`, *optional*, defaults to `0.0`):
            KL penalty to the reference model, GRPOConfig's `beta` [TRL: 0.0, no reference model loaded].
        loss_type (`str`, *optional*, defaults to `"dapo"`), scale_rewards (`str`, *optional*, defaults to `"group"`):
            [TRL defaults]; checked against the values TRL 1.16 accepts (`GRPO_LOSS_TYPES`, `GRPO_SCALE_REWARDS`),
            which TRL itself checks only once training has started.
        correctness_weight (`float`, *optional*, defaults to `1.0`), format_weight (`float`, *optional*, defaults to `0.1`):
            Weights of `correctness_reward` and `format_reward` [ours: verifiable answer reward plus a small
            format term].
        overlong_punishment (`tuple[int, int]` or `None`, *optional*):
            `(max_completion_len, soft_punish_cache)` adds TRL's `get_soft_overlong_punishment` (DAPO, arXiv
            2503.14476, Eq. 13) with weight 1 [ours: off by default]. `length_penalty` is its deprecated name.
        extra_rewards (`list`, *optional*):
            More reward functions in TRL's protocol, each with weight 1.
        probe_size (`int`, *optional*, defaults to `8`):
            Prompts of the fixed probe on which the per-step KL to the starting policy is measured (0: off) [ours].
    """

    per_device_train_batch_size: int = 0  # derived: num_generations * prompts_per_step
    num_generations: int = 8
    prompts_per_step: int = 1
    max_completion_length: int = 128
    max_prompt_length: int = 256
    temperature: float = 0.7
    kl_coef: float = 0.0
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    correctness_weight: float = 1.0
    format_weight: float = 0.1
    overlong_punishment: tuple[int, int] | None = None
    extra_rewards: list = field(default_factory=list)
    probe_size: int = 8
    length_penalty: tuple[int, int] | None = None  # deprecated name of `overlong_punishment`

    def __post_init__(self):
        if not (isinstance(self.num_generations, int) and not isinstance(self.num_generations, bool)):
            raise ValueError(f"`num_generations` must be an integer >= 2, got {self.num_generations!r}")
        if self.num_generations < 2:
            raise ValueError(
                f"`num_generations` must be >= 2 (GRPO compares completions of one prompt), got {self.num_generations}"
            )
        _check_int(self, "prompts_per_step", 1)
        batch = self.num_generations * self.prompts_per_step
        if self.per_device_train_batch_size in (0, None):
            self.per_device_train_batch_size = batch
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"`per_device_train_batch_size` ({self.per_device_train_batch_size}) must be a multiple of "
                f"`num_generations` ({self.num_generations}); set `prompts_per_step` instead"
            )
        super().__post_init__()
        _check_finite(self, "kl_coef", 0)
        if not (isinstance(self.temperature, numbers.Real) and 0 < self.temperature < math.inf):
            raise ValueError(f"`temperature` must be > 0 (GRPO samples), got {self.temperature}")
        _check_int(self, "max_completion_length", 1)
        _check_int(self, "max_prompt_length", 1)
        _check_finite(self, "correctness_weight")
        _check_finite(self, "format_weight")
        if self.loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of TRL's {GRPO_LOSS_TYPES}, got {self.loss_type!r}")
        if self.scale_rewards not in GRPO_SCALE_REWARDS:
            raise ValueError(f"`scale_rewards` must be one of TRL's {GRPO_SCALE_REWARDS}, got {self.scale_rewards!r}")
        if not isinstance(self.extra_rewards, list | tuple):
            raise ValueError(f"`extra_rewards` must be a list of reward functions, got {self.extra_rewards!r}")
        if self.probe_size < 0:
            raise ValueError(f"`probe_size` must be >= 0, got {self.probe_size}")
        if self.length_penalty is not None:
            warnings.warn(
                "RlStageConfig.length_penalty is deprecated: use overlong_punishment=(max_completion_len, "
                "soft_punish_cache), TRL's get_soft_overlong_punishment",
                FutureWarning,
                stacklevel=3,
            )
            if self.overlong_punishment is None:
                self.overlong_punishment = self.length_penalty
            self.length_penalty = None
        if self.overlong_punishment is not None:
            value = tuple(self.overlong_punishment)
            if len(value) != 2 or not 0 <= value[1] <= value[0] or value[0] < 1:
                raise ValueError(
                    "`overlong_punishment` must be (max_completion_len, soft_punish_cache) with "
                    f"0 <= soft_punish_cache <= max_completion_len, got {self.overlong_punishment}"
                )
            self.overlong_punishment = value

    def default_learning_rate(self) -> float:
        return 1e-6 if self.method == "full" else 1e-5  # TRL GRPOConfig default; LoRA: 10x [ours]


@dataclass
class SrlmConfig:
    """The pipeline: which stages, in which order, on which data.

    Args:
        stages (`list[str]`): stage kinds in order, e.g. `["sft", "rl"]`; the same kind may repeat.
        sft / kd / rl: the configs of each kind (shared by repeated stages of that kind).
        num_problems (`int`, *optional*, defaults to `400`): arithmetic training problems.
        eval_size (`int`, *optional*, defaults to `64`): held-out problems scored after each stage (0: none).
        eval_max_new_tokens (`int`, *optional*, defaults to `128`): greedy generation length of the evaluation.
        eval_batch_size (`int`, *optional*, defaults to `32`): problems per generation batch of the evaluation.
        eval_before (`bool`, *optional*, defaults to `True`): also score the model before the first stage.
        arith_max_ops / arith_max_value / arith_seed: difficulty and seed of the problems.
        handoff (`str`, *optional*, defaults to `"memory"`): `"memory"` passes the model object to the next
            stage; `"disk"` saves each stage with `save_pretrained` under `output_dir/<i>-<stage>` and reloads it.
        output_dir (`str`, *optional*): run directory (stage outputs, `report.json`).
        seed (`int`, *optional*, defaults to `0`).
        bf16 (`bool`, *optional*, defaults to `False`): bf16 mixed precision (GPU).
    """

    stages: list[str] = field(default_factory=lambda: ["sft", "kd", "rl"])
    sft: SftStageConfig = field(default_factory=SftStageConfig)
    kd: KdStageConfig = field(default_factory=KdStageConfig)
    rl: RlStageConfig = field(default_factory=RlStageConfig)
    num_problems: int = 400
    eval_size: int = 64
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 32
    eval_before: bool = True
    arith_max_ops: int = 2
    arith_max_value: int = 30
    arith_seed: int = 0
    handoff: str = "memory"
    output_dir: str | None = None
    seed: int = 0
    bf16: bool = False

    def __post_init__(self):
        self.stages = parse_stages(self.stages)
        for name, cls in (("sft", SftStageConfig), ("kd", KdStageConfig), ("rl", RlStageConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"`{name}` must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.handoff not in ("memory", "disk"):
            raise ValueError(f"`handoff` must be 'memory' or 'disk', got {self.handoff!r}")
        if self.handoff == "disk" and not self.output_dir:
            raise ValueError("`handoff='disk'` needs an `output_dir` to save the stages in")
        if self.num_problems < 1:
            raise ValueError(f"`num_problems` must be >= 1, got {self.num_problems}")
        if self.eval_size < 0:
            raise ValueError(f"`eval_size` must be >= 0, got {self.eval_size}")
        if self.eval_batch_size < 1:
            raise ValueError(f"`eval_batch_size` must be >= 1, got {self.eval_batch_size}")
        _check_int(self, "eval_max_new_tokens", 1)
        _check_int(self, "arith_max_ops", 1)  # ArithmeticConfig's limits, checked before any stage runs
        _check_int(self, "arith_max_value", 2)


def parse_stages(stages) -> list[str]:
    """`"sft,kd,rl"` or a list -> a validated list of stage kinds; an empty list is allowed (evaluate only)."""
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    if not isinstance(stages, list | tuple):
        raise ValueError(f"`stages` must be a list of stage names or a string like 'sft,rl', got {stages!r}")
    stages = list(stages)
    bad = [s for s in stages if s not in STAGE_KINDS]
    if bad:
        raise ValueError(f"unknown SRLM stage name(s) {bad}; known stages: {', '.join(STAGE_KINDS)} (e.g. 'sft,rl')")
    return stages
