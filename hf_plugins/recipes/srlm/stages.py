"""The three stage kinds, each one stock TRL trainer: `run_stage(kind, model, tokenizer, problems, cfg, ctx)`
returns the trained (plain, merged) model and the stage's report. TRL is imported inside the functions."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from hf_plugins import registry
from hf_plugins.data.arithmetic import Problem
from hf_plugins.loading import load_model

from .config import KdStageConfig, RlStageConfig, SftStageConfig, StageConfig
from .kd import check_same_vocabulary
from .monitor import PolicyDriftCallback, RewardGroupMonitor, build_probe, rl_step_table
from .teacher import ArithmeticTeacher, sample_teacher_solutions


__all__ = ["StageContext", "load_teacher", "rl_rewards", "run_stage"]


@dataclasses.dataclass
class StageContext:
    output_dir: Path
    seed: int = 0
    bf16: bool = False


def _chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _prompt(tokenizer, question: str):
    return [{"role": "user", "content": question}] if _chat(tokenizer) else f"Question: {question}\nAnswer:"


def _completion(tokenizer, text: str):
    return [{"role": "assistant", "content": text}] if _chat(tokenizer) else " " + text


def _trl_args(config_cls, cfg: StageConfig, ctx: StageContext, name: str, **stage_fields):
    """A TRL config with CPU-safe defaults, the stage's fields, then the user's `trainer_kwargs`."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg.trainer_kwargs) - fields)
    if unknown:
        raise ValueError(f"trainer_kwargs of the {name} stage name no {config_cls.__name__} field: {unknown}")
    cuda = torch.cuda.is_available()
    kw = {
        "output_dir": str(ctx.output_dir / "trainer"),
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.resolved_learning_rate(),
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": ctx.seed,
        # TRL resolves bf16=None to True and then refuses to run on a CPU.
        "bf16": bool(ctx.bf16 and cuda),
        "use_cpu": not cuda,
        "gradient_checkpointing": False,  # TRL defaults to True; it only costs time on small models
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    kw.update(stage_fields)
    kw.update(cfg.trainer_kwargs)
    return config_cls(**kw)


def _peft_config(cfg: StageConfig, model):
    entry = registry.lookup(registry.METHODS, "method", cfg.method)
    return entry.build(model, dict(cfg.method_options))


def _finish(trainer, peft_config, t0: float, extra: dict) -> tuple:
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()  # every stage hands a plain model on (docs/srlm.md)
    logs = trainer.state.log_history
    tokens = [e["num_tokens"] for e in logs if "num_tokens" in e]
    report = {
        "steps": int(trainer.state.global_step),
        "seconds": time.perf_counter() - t0,
        "train_tokens": float(tokens[-1]) if tokens else None,
        "peft": peft_config is not None,
        "log_history": logs,
        **extra,
    }
    return model.eval(), report


def _sft_on(model, tokenizer, pairs: list[tuple[Problem, str]], cfg: SftStageConfig, ctx: StageContext, name: str):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not pairs:
        raise ValueError(f"the {name} stage has no training examples")
    data = Dataset.from_list(
        [{"prompt": _prompt(tokenizer, p.question), "completion": _completion(tokenizer, text)} for p, text in pairs]
    )
    args = _trl_args(SFTConfig, cfg, ctx, name, max_length=cfg.max_length)
    peft_config = _peft_config(cfg, model)
    t0 = time.perf_counter()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()
    return _finish(trainer, peft_config, t0, {"examples": len(data)})


def run_sft(model, tokenizer, problems, cfg: SftStageConfig, ctx: StageContext, teacher_cache=None):
    """SFT on the problems' own worked solutions (`#### n` style)."""
    return _sft_on(model, tokenizer, [(p, p.solution) for p in problems], cfg, ctx, "sft")


def load_teacher(teacher, teacher_tokenizer=None, student_tokenizer=None):
    """`(model_or_programmatic_teacher, tokenizer)` for a `KdStageConfig.teacher` value."""
    if isinstance(teacher, ArithmeticTeacher) or teacher == "arithmetic":
        return (teacher if isinstance(teacher, ArithmeticTeacher) else ArithmeticTeacher()), None
    if isinstance(teacher, str):
        return load_model(teacher)
    if isinstance(teacher, torch.nn.Module):
        return teacher, (teacher_tokenizer if teacher_tokenizer is not None else student_tokenizer)
    raise ValueError(f"`teacher` must be 'arithmetic', 'smollm2', 'tiny', a directory or a model, got {type(teacher)}")


def run_kd(model, tokenizer, problems, cfg: KdStageConfig, ctx: StageContext, teacher_cache=None):
    """Sequence-level KD (teacher solutions filtered by correctness, then SFT) or logit-level KD (TRL)."""
    teacher, teacher_tok = (
        teacher_cache
        if teacher_cache is not None
        else load_teacher(cfg.teacher, cfg.teacher_tokenizer, student_tokenizer=tokenizer)
    )
    if cfg.kind == "sequence":
        if isinstance(teacher, ArithmeticTeacher):
            pairs, stats = teacher.solutions(problems), {"teacher": "arithmetic (programmatic)"}
        else:
            pairs, stats = sample_teacher_solutions(
                teacher,
                teacher_tok,
                problems,
                samples_per_problem=cfg.samples_per_problem,
                temperature=cfg.teacher_temperature,
                max_new_tokens=cfg.teacher_max_new_tokens,
                seed=ctx.seed,
            )
            if not pairs:
                raise ValueError(
                    f"the teacher solved none of {len(problems)} problems in {cfg.samples_per_problem} samples each: "
                    "use a stronger teacher, more samples, or easier problems"
                )
        model, report = _sft_on(model, tokenizer, pairs, cfg, ctx, "kd")
        report["teacher_data"] = stats
        return model, report
    if isinstance(teacher, ArithmeticTeacher):
        raise ValueError("logit-level KD needs an LM teacher; the programmatic teacher only supports kind='sequence'")  # noqa: TRY004  (a user error: the CLI reports ValueErrors)
    check_same_vocabulary(model, tokenizer, teacher, teacher_tok)
    return _run_logit_kd(model, tokenizer, teacher, problems, cfg, ctx)


def _run_logit_kd(model, tokenizer, teacher, problems, cfg: KdStageConfig, ctx: StageContext):
    from datasets import Dataset

    peft_config = _peft_config(cfg, model)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # DistillationTrainer demands it; generation stages need it
    try:
        if cfg.trainer == "distillation":
            from trl import DistillationConfig, DistillationTrainer

            data = Dataset.from_list([{"prompt": _prompt(tokenizer, p.question)} for p in problems])
            args = _trl_args(
                DistillationConfig,
                cfg,
                ctx,
                "kd",
                beta=cfg.beta,
                temperature=cfg.temperature,
                max_completion_length=cfg.max_completion_length,
            )
            trainer_cls = DistillationTrainer
        else:
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            if not _chat(tokenizer):
                raise ValueError("the GKD trainer needs a tokenizer with a chat template (it trains on `messages`)")
            data = Dataset.from_list(
                [
                    {"messages": [*_prompt(tokenizer, p.question), *_completion(tokenizer, p.solution)]}
                    for p in problems
                ]
            )
            args = _trl_args(
                GKDConfig,
                cfg,
                ctx,
                "kd",
                beta=cfg.beta,
                lmbda=cfg.lmbda,
                seq_kd=cfg.seq_kd,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_completion_length,
                max_length=cfg.max_length,
            )
            trainer_cls = GKDTrainer
        t0 = time.perf_counter()
        trainer = trainer_cls(
            model=model,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.train()
    finally:
        tokenizer.padding_side = old_side
    return _finish(trainer, peft_config, t0, {"examples": len(data), "divergence": cfg.divergence})


def _chat_text(tokenizer, prompt) -> str:
    if _chat(tokenizer):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def rl_rewards(cfg: RlStageConfig) -> tuple[list, list[float]]:
    """The `rl` stage's reward functions and weights: correctness, format, TRL's soft overlong punishment (if
    `overlong_punishment` is set) and `extra_rewards` (weight 1 each)."""
    from hf_plugins.rewards.math import correctness_reward, format_reward

    funcs, weights = [correctness_reward, format_reward], [cfg.correctness_weight, cfg.format_weight]
    if cfg.overlong_punishment is not None:
        from trl.rewards import get_soft_overlong_punishment

        max_len, cache = cfg.overlong_punishment
        funcs.append(get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=cache))
        weights.append(1.0)
    for fn in cfg.extra_rewards:
        funcs.append(fn)
        weights.append(1.0)
    return funcs, weights


def run_rl(model, tokenizer, problems, cfg: RlStageConfig, ctx: StageContext, teacher_cache=None):
    """GRPO with exact-answer correctness + format rewards (+ optional soft overlong punishment). The report adds
    `rl_steps`: one row per optimizer step (reward mean, within-group reward std, share of zero-variance groups,
    KL to the starting policy, completion length, truncation and clip ratios, ...; see `monitor.py`)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows, texts = [], []
    for p in problems:
        prompt = _prompt(tokenizer, p.question)
        text = _chat_text(tokenizer, prompt)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= cfg.max_prompt_length:
            rows.append({"prompt": prompt, "answer": p.answer})
            texts.append(text)
    if not rows:
        raise ValueError(f"every prompt is longer than max_prompt_length={cfg.max_prompt_length} tokens")
    funcs, weights = rl_rewards(cfg)
    # reward models (modules, model ids) in extra_rewards: TRL scores them; no within-group statistics then
    monitor = RewardGroupMonitor(funcs, weights, cfg.num_generations) if RewardGroupMonitor.supports(funcs) else None
    args = _trl_args(
        GRPOConfig,
        cfg,
        ctx,
        "rl",
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.kl_coef,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        reward_weights=weights,
    )
    if args.generation_batch_size % cfg.num_generations:  # TRL raises too, but less clearly
        raise ValueError(
            f"GRPO's generation batch ({args.generation_batch_size}) must be a multiple of num_generations "
            f"({cfg.num_generations}); use prompts_per_step"
        )
    peft_config = _peft_config(cfg, model)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        callbacks = []
        if cfg.probe_size:
            probe = build_probe(model, tokenizer, texts[: cfg.probe_size], cfg.max_completion_length)
            callbacks.append(PolicyDriftCallback(probe))
        t0 = time.perf_counter()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=monitor.wrapped() if monitor else funcs,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        trainer.train()
    finally:
        tokenizer.padding_side = old_side
    drift = callbacks[0].records if callbacks else []
    extra = {
        "examples": len(rows),
        "dropped_long_prompts": len(problems) - len(rows),
        "rl_steps": rl_step_table(trainer.state.log_history, drift),
        "reward_batches": monitor.batches if monitor else [],
    }
    return _finish(trainer, peft_config, t0, extra)


_RUNNERS = {"sft": run_sft, "kd": run_kd, "rl": run_rl}


def run_stage(kind: str, model, tokenizer, problems, cfg, ctx: StageContext, teacher_cache=None):
    if kind not in _RUNNERS:
        raise ValueError(f"unknown SRLM stage {kind!r}; known: {', '.join(_RUNNERS)}")
    return _RUNNERS[kind](model, tokenizer, problems, cfg, ctx, teacher_cache=teacher_cache)
