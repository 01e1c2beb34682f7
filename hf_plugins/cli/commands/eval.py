"""`hf-plugins eval`: exact-match accuracy on the held-out arithmetic problems."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_plugins.cli import common


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="exact-match accuracy on the arithmetic test split",
        description=(
            "Generate greedy answers for the held-out arithmetic problems and report exact-match accuracy "
            "of the final number. Evaluate a base model (--model), a base plus adapter (--adapter), or a "
            "run directory written by `hf-plugins train` (--run)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", default=None, help="run directory of `hf-plugins train` (reads its run_config.json)")
    p.add_argument("--model", default="smollm2", help="'smollm2', 'tiny' or a local model directory")
    p.add_argument("--adapter", default=None, help="PEFT adapter directory to load on top of --model")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--eval-size", type=int, default=64, help="held-out problems to score")
    p.add_argument("--arith-seed", type=int, default=0, help="seed of the arithmetic problem generator")
    p.add_argument("--arith-max-ops", type=int, default=2, help="largest number of operations per problem")
    p.add_argument("--arith-max-value", type=int, default=30, help="largest starting quantity / +- operand")
    p.add_argument("--eval-batch-size", type=int, default=32, help="generation batch size")
    p.add_argument("--max-new-tokens", type=int, default=96, help="generation length")
    p.add_argument("--output", default=None, help="write the per-problem samples and the score to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems
    from hf_plugins.evaluation import evaluate_exact_match

    if args.run:
        run_dir = Path(args.run)
        cfg_path = run_dir / "run_config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: --run expects a directory written by `hf-plugins train`")
        cfg = json.loads(cfg_path.read_text())
        for key in ("arith_seed", "arith_max_ops", "arith_max_value", "dtype"):
            setattr(args, key, cfg.get(key, getattr(args, key)))
        if cfg.get("model_config"):
            args.model = str(run_dir / "model")
        elif cfg.get("peft_config"):
            args.model, args.adapter = cfg["model"], str(run_dir / "model")
        else:
            args.model = str(run_dir / "model")
    model, tokenizer = common.load_model(args.model, args.dtype)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    problems = generate_problems(
        ArithmeticConfig(
            seed=args.arith_seed,
            num_train=0,
            num_test=args.eval_size,
            max_ops=args.arith_max_ops,
            max_value=args.arith_max_value,
        ),
        split="test",
    )
    result = evaluate_exact_match(
        model,
        tokenizer,
        [p.question for p in problems],
        [p.answer for p in problems],
        batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        use_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        progress=True,
    )
    print(f"accuracy: {result['accuracy']:.3f} ({result['correct']}/{result['n']}) in {result['seconds']:.0f} s")
    if args.output:
        common.write_json(Path(args.output), result)
    return 0
