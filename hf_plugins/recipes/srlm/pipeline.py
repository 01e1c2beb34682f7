"""`run_srlm`: run any sequence of SFT / KD / RL stages on one model, evaluate after each, report everything."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems
from hf_plugins.models.smollm2 import drop_gguf_quantizer

from .config import SrlmConfig
from .kd import check_same_vocabulary
from .stages import StageContext, load_teacher, run_stage
from .teacher import ArithmeticTeacher


__all__ = ["evaluate_arithmetic", "run_srlm"]


def evaluate_arithmetic(model, tokenizer, problems, max_new_tokens: int = 128, batch_size: int = 32) -> dict:
    """Greedy zero-shot accuracy, graded by one extractor (`hf_plugins.evaluation.score_completions`):
    `accuracy` (lenient: any answer, down to the last number) and `strict_accuracy` (the same answer, marked with
    `####` or `\\boxed{}`), so strict never exceeds lenient."""
    from hf_plugins.evaluation import evaluate_exact_match

    res = evaluate_exact_match(
        model,
        tokenizer,
        [p.question for p in problems],
        [p.answer for p in problems],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        use_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )
    return {
        "accuracy": res["accuracy"],
        "strict_accuracy": res["strict_accuracy"],
        "n": res["n"],
        "seconds": res["seconds"],
        "examples": res["samples"][:3],
    }


def _evaluate(model, tokenizer, test, config: SrlmConfig) -> dict:
    return evaluate_arithmetic(model, tokenizer, test, config.eval_max_new_tokens, config.eval_batch_size)


def _jsonable(obj):
    """Configs and logs as JSON values; objects (a teacher model, reward functions) become their names. No
    `dataclasses.asdict`: it would deep-copy a teacher model held in a config."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return getattr(obj, "__name__", None) or f"<{type(obj).__name__}>"


def run_srlm(
    model,
    tokenizer,
    config: SrlmConfig | None = None,
    *,
    hook: Callable[[str, int, str, torch.nn.Module], None] | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Run `config.stages` in order on `model`; return `(final_model, report)`.

    Each stage builds a fresh stock TRL trainer on the previous stage's model (in memory, or through
    `save_pretrained` directories with `handoff="disk"`); the same tokenizer is every stage's
    `processing_class`. `report` holds, per stage: its config, whether it was PEFT (merged before the hand-off),
    `log_history`, train tokens, seconds, and held-out accuracy (lenient and strict), plus the accuracy before
    the first stage. `hook(event, index, stage, model)` is called with "start" / "end" around every stage.
    """
    from transformers import AutoModelForCausalLM

    config = config or SrlmConfig()
    model = drop_gguf_quantizer(model)
    out = Path(config.output_dir) if config.output_dir else Path(tempfile.mkdtemp(prefix="srlm-"))
    out.mkdir(parents=True, exist_ok=True)
    arith = ArithmeticConfig(
        seed=config.arith_seed,
        num_train=config.num_problems,
        num_test=max(config.eval_size, 1),
        max_ops=config.arith_max_ops,
        max_value=config.arith_max_value,
    )
    train, test = generate_problems(arith, "train"), generate_problems(arith, "test")[: config.eval_size]
    teacher_cache = None
    if "kd" in config.stages:  # load (and for logit KD, check) the teacher once, before any training
        teacher_cache = load_teacher(config.kd.teacher, config.kd.teacher_tokenizer, student_tokenizer=tokenizer)
        if config.kd.kind == "logit" and not isinstance(teacher_cache[0], ArithmeticTeacher):
            check_same_vocabulary(model, tokenizer, *teacher_cache)

    report: dict = {"config": _jsonable(config), "output_dir": str(out), "stages": []}
    if test and config.eval_before:
        report["eval_before"] = _evaluate(model, tokenizer, test, config)
    t_start = time.perf_counter()
    for i, kind in enumerate(config.stages):
        stage_cfg = getattr(config, kind)
        ctx = StageContext(output_dir=out / f"{i}-{kind}", seed=config.seed + i, bf16=config.bf16)
        torch.manual_seed(ctx.seed)
        if hook:
            hook("start", i, kind, model)
        model, stage_report = run_stage(kind, model, tokenizer, train, stage_cfg, ctx, teacher_cache=teacher_cache)
        if config.handoff == "disk":
            save_dir = ctx.output_dir / "model"
            model.save_pretrained(save_dir)
            tokenizer.save_pretrained(save_dir)
            param = next(model.parameters())
            # same dtype and device: without `.to`, a GPU run would evaluate the reloaded model on the CPU
            model = AutoModelForCausalLM.from_pretrained(save_dir, dtype=param.dtype).to(param.device).eval()
            stage_report["saved_to"] = str(save_dir)
        if hook:
            hook("end", i, kind, model)
        if test:
            stage_report["eval"] = _evaluate(model, tokenizer, test, config)
        report["stages"].append({"stage": kind, "index": i, "config": _jsonable(stage_cfg), **stage_report})
        acc = stage_report.get("eval", {}).get("accuracy")
        print(f"[srlm] stage {i} {kind}: {stage_report['steps']} steps, {stage_report['seconds']:.0f} s"
              + (f", accuracy {acc:.3f}" if acc is not None else ""))  # fmt: skip
    report["seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    return model, report
