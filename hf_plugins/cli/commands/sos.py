"""`hf-plugins sos generate|check|eval`: SoS-1K data with proved labels, the exact checker, and LM evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hf_plugins.cli import common
from hf_plugins.cli.arguments import Command, ModelArguments


def _h(text: str) -> dict:
    return {"help": text}


@dataclass
class SosGenerateArguments:
    out: str = field(metadata=_h("output .jsonl file (required)"))
    classes: str = field(default="all", metadata=_h("comma-separated classes (see docs/sos.md) or 'all'"))
    per_class: int = field(default=10, metadata=_h("items per class"))
    seed: int = field(default=0, metadata=_h("seed"))
    num_vars: int = field(default=3, metadata=_h("variables"))
    degree: int = field(default=4, metadata=_h("even total degree (odd_degree uses degree + 1)"))
    num_terms: int = field(default=6, metadata=_h("terms / squares / Gram basis size"))
    max_chars: int | None = field(default=None, metadata=_h("longest printed polynomial"))
    style: Literal["x1", "x(1)"] = field(default="x1", metadata=_h("variable names"))


@dataclass
class SosCheckArguments:
    polynomial: str | None = field(default=None, metadata=_h("a polynomial, e.g. '(x1 - x2)^2 + 1'"))
    file: str | None = field(default=None, metadata=_h("a .jsonl file with a `polynomial` field per line"))
    sos1: bool = field(default=False, metadata=_h("check the released SoS1 evaluation file (see docs/sos.md)"))
    limit: int | None = field(default=None, metadata=_h("check only the first N rows"))
    max_basis: int = field(default=150, metadata=_h("largest Gram basis sent to the SDP"))
    no_sdp: bool = field(default=False, metadata=_h("cheap exact checks only"))
    output: str | None = field(default=None, metadata=_h("write verdicts (and the SoS1 summary) to this JSON file"))


@dataclass
class SosEvalArguments:
    _argument_group_name = "evaluation"

    adapter: str | None = field(default=None, metadata=_h("PEFT adapter directory on top of --model"))
    file: str | None = field(default=None, metadata=_h("items (.jsonl from `sos generate`); default: the SoS1 file"))
    style: Literal["plain", "simple", "reasoning"] = field(default="reasoning", metadata=_h("prompt style"))
    limit: int | None = field(default=None, metadata=_h("first N items only"))
    max_new_tokens: int = field(default=512, metadata=_h("generation length"))
    batch_size: int = field(default=8, metadata=_h("generation batch size"))
    proved: bool = field(default=False, metadata=_h("SoS1 only: also score against the stored proved labels"))
    output: str | None = field(default=None, metadata=_h("write metrics and per-item records to this JSON file"))


def run_generate(args: SosGenerateArguments) -> int:
    from hf_plugins.sos.generators import CLASS_LABELS, GeneratorConfig, generate_items

    classes = (
        list(CLASS_LABELS) if args.classes == "all" else [c.strip() for c in args.classes.split(",") if c.strip()]
    )
    bad = [c for c in classes if c not in CLASS_LABELS]
    if bad:
        raise ValueError(f"unknown classes {bad}; choose from {sorted(CLASS_LABELS)}")
    cfg = GeneratorConfig(
        num_vars=args.num_vars,
        degree=args.degree,
        num_terms=args.num_terms,
        max_chars=args.max_chars,
        style=args.style,
    )
    items = generate_items(classes, args.per_class, seed=args.seed, config=cfg)
    with open(args.out, "w") as fh:
        fh.writelines(json.dumps(it.to_dict()) + "\n" for it in items)
    print(f"wrote {len(items)} items ({len(classes)} classes x {args.per_class}) to {args.out}")
    return 0


def run_check(args: SosCheckArguments) -> int:
    from hf_plugins.sos.checker import CheckerConfig, check_polynomial
    from hf_plugins.sos.sos1 import check_sos1, load_check_rows, load_sos1, summarize_sos1

    cfg = CheckerConfig(max_basis=args.max_basis, use_sdp=not args.no_sdp)
    if args.polynomial is not None:
        v = check_polynomial(args.polynomial, cfg)
        print(f"{v.label} ({v.method}, {v.seconds:.2f} s): {v.message}")
        if args.output:
            common.write_json(Path(args.output), v.to_dict())
        return 0
    if not args.file and not args.sos1:
        raise ValueError("give a polynomial, --file FILE.jsonl or --sos1")
    rows = load_sos1() if args.sos1 else load_check_rows(args.file)
    rows = rows[: args.limit] if args.limit else rows

    def show(rec, v):
        print(
            f"row {rec['row']:>4} {rec['subset']:<24} released {rec['released']} -> {v.label:<14} {rec['outcome']:<12} {v.method} ({v.seconds:.1f} s)"
        )

    records = check_sos1(rows, cfg, progress=show)
    summary = summarize_sos1(records)
    print(json.dumps({"per_subset": summary["per_subset"], "totals": summary["totals"]}, indent=1))
    for d in summary["disproved"]:
        print(f"disproved: row {d['row']} ({d['subset']}, released {d['released']}) by {d['method']}")
    if args.output:
        summary["verdicts"] = [{"row": r["row"], "subset": r["subset"], **r["verdict"].to_dict()} for r in records]
        common.write_json(Path(args.output), summary)
    return 0


def run_eval(model_args: ModelArguments, args: SosEvalArguments) -> int:
    from hf_plugins.loading import load_model
    from hf_plugins.sos.evaluation import evaluate_sos_model, load_eval_items

    items = load_eval_items(args.file, proved=args.proved)
    items = items[: args.limit] if args.limit else items
    model, tokenizer = load_model(**model_args.load_kwargs())
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    result = evaluate_sos_model(
        model, tokenizer, items, style=args.style, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    m = result["metrics"]
    r = m["released"]
    print(
        f"released labels: acc valid {r['acc_valid']:.3f}, acc total {r['acc_total']:.3f}, invalid {r['invalid_rate']:.3f} "
        f"(n={r['n']}); too long {m['too_long']}; {m['seconds_mean']:.2f} s and {m['tokens_mean']:.0f} tokens per answer"
    )
    if args.output:
        common.write_json(Path(args.output), result)
    return 0


COMMAND = Command(
    name="sos",
    help="SoS-1K: generate polynomials with proved labels, check SoS exactly, evaluate a model",
    description="Sum-of-squares polynomials (SoS-1K, arXiv 2502.20545). See docs/sos.md.",
    actions=(
        Command(
            "generate",
            help="write generated items (JSON lines) with their certificates",
            dataclasses=(SosGenerateArguments,),
            run=run_generate,
        ),
        Command(
            "check",
            help="check polynomials exactly and print verdicts with evidence",
            dataclasses=(SosCheckArguments,),
            positionals=(("polynomial", "a polynomial, e.g. '(x1 - x2)^2 + 1'"),),
            run=run_check,
        ),
        Command(
            "eval",
            help="accuracy of a causal LM on SoS items",
            dataclasses=(ModelArguments, SosEvalArguments),
            run=run_eval,
        ),
    ),
)
