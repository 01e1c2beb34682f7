"""`hf-plugins eval`: exact-match accuracy on the held-out arithmetic problems."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_plugins.cli import common
from hf_plugins.cli.arguments import Command, DataArguments, EvalArguments, ModelArguments


@dataclass
class EvalRunArguments:
    _argument_group_name = "what to score"

    run: str | None = field(
        default=None, metadata={"help": "run directory of `hf-plugins train` (reads its run_config.json)"}
    )
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter directory to load on top of --model"})
    output: str | None = field(
        default=None, metadata={"help": "write the per-problem samples and the score to this JSON file"}
    )


def _from_run(run_dir: Path, model_args: ModelArguments, data: DataArguments, run: EvalRunArguments) -> None:
    cfg_path = run_dir / "run_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: --run expects a directory written by `hf-plugins train`")
    cfg = json.loads(cfg_path.read_text())
    for key in ("arith_seed", "arith_max_ops", "arith_max_value"):
        setattr(data, key, cfg.get(key, getattr(data, key)))
    for key in ("dtype", "revision", "cache_dir"):
        setattr(model_args, key, cfg.get(key, getattr(model_args, key)))
    if cfg.get("peft_config") and not cfg.get("model_config"):
        model_args.model, run.adapter = cfg["model"], str(run_dir / "model")
    else:
        model_args.model = str(run_dir / "model")


def run(model_args: ModelArguments, data: DataArguments, ev: EvalArguments, what: EvalRunArguments) -> int:
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems
    from hf_plugins.evaluation import evaluate_exact_match
    from hf_plugins.loading import load_model

    if data.dataset != "arithmetic":
        raise ValueError(f"hf-plugins eval scores the arithmetic task only; got --dataset {data.dataset!r}")
    if what.run:
        _from_run(Path(what.run), model_args, data, what)
    model, tokenizer = load_model(**model_args.load_kwargs())
    if what.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, what.adapter)
    problems = generate_problems(
        ArithmeticConfig(
            seed=data.arith_seed,
            num_train=0,
            num_test=max(ev.eval_size, 1),
            max_ops=data.arith_max_ops,
            max_value=data.arith_max_value,
        ),
        split="test",
    )
    result = evaluate_exact_match(
        model,
        tokenizer,
        [p.question for p in problems],
        [p.answer for p in problems],
        batch_size=ev.eval_batch_size,
        max_new_tokens=ev.max_new_tokens,
        use_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        progress=True,
    )
    print(f"accuracy: {result['accuracy']:.3f} ({result['correct']}/{result['n']}) in {result['seconds']:.0f} s")
    if what.output:
        common.write_json(Path(what.output), result)
    return 0


COMMAND = Command(
    name="eval",
    help="exact-match accuracy on the arithmetic test split",
    description=(
        "Generate greedy answers for the held-out arithmetic problems (the data group's arithmetic fields, the "
        "evaluation group's sizes) and report exact-match accuracy of the final number. Evaluate a base model "
        "(--model), a base plus adapter (--adapter), or a run directory written by `hf-plugins train` (--run)."
    ),
    dataclasses=(ModelArguments, DataArguments, EvalArguments, EvalRunArguments),
    run=run,
)
