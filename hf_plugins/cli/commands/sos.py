"""`hf-plugins sos generate|check|eval`: SoS-1K data with proved labels, the exact checker, and LM evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_plugins.cli import common


def register(sub) -> None:
    p = sub.add_parser(
        "sos",
        help="SoS-1K: generate polynomials with proved labels, check SoS exactly, evaluate a model",
        description="Sum-of-squares polynomials (SoS-1K, arXiv 2502.20545). See docs/sos.md.",
    )
    ssub = p.add_subparsers(dest="sos_command", metavar="ACTION", help="generate, check or eval")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    g = ssub.add_parser(
        "generate", help="write generated items (JSON lines) with their certificates", formatter_class=fmt
    )
    g.add_argument("--classes", default="all", help="comma-separated classes (see docs/sos.md) or 'all'")
    g.add_argument("--per-class", type=int, default=10, help="items per class")
    g.add_argument("--seed", type=int, default=0, help="seed")
    g.add_argument("--num-vars", type=int, default=3, help="variables")
    g.add_argument("--degree", type=int, default=4, help="even total degree (odd_degree uses degree + 1)")
    g.add_argument("--num-terms", type=int, default=6, help="terms / squares / Gram basis size")
    g.add_argument("--max-chars", type=int, default=None, help="longest printed polynomial")
    g.add_argument("--style", default="x1", choices=["x1", "x(1)"], help="variable names")
    g.add_argument("--out", required=True, help="output .jsonl file")
    g.set_defaults(func=run_generate)

    c = ssub.add_parser(
        "check", help="check polynomials exactly and print verdicts with evidence", formatter_class=fmt
    )
    c.add_argument("polynomial", nargs="?", default=None, help="a polynomial, e.g. '(x1 - x2)^2 + 1'")
    c.add_argument("--file", default=None, help="a .jsonl file with a `polynomial` field per line")
    c.add_argument("--sos1", action="store_true", help="check the released SoS1 evaluation file (see docs/sos.md)")
    c.add_argument("--limit", type=int, default=None, help="check only the first N rows")
    c.add_argument("--max-basis", type=int, default=150, help="largest Gram basis sent to the SDP")
    c.add_argument("--no-sdp", action="store_true", help="cheap exact checks only")
    c.add_argument("--output", default=None, help="write verdicts (and the SoS1 summary) to this JSON file")
    c.set_defaults(func=run_check)

    e = ssub.add_parser("eval", help="accuracy of a causal LM on SoS items", formatter_class=fmt)
    e.add_argument("--model", default="smollm2", help="'smollm2', 'tiny' or a local model directory")
    e.add_argument("--adapter", default=None, help="PEFT adapter directory on top of --model")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    e.add_argument("--file", default=None, help="items (.jsonl from `sos generate`); default: the SoS1 file")
    e.add_argument("--style", default="reasoning", choices=["plain", "simple", "reasoning"], help="prompt style")
    e.add_argument("--limit", type=int, default=None, help="first N items only")
    e.add_argument("--max-new-tokens", type=int, default=512, help="generation length")
    e.add_argument("--batch-size", type=int, default=8, help="generation batch size")
    e.add_argument("--proved", action="store_true", help="SoS1 only: also score against the stored proved labels")
    e.add_argument("--output", default=None, help="write metrics and per-item records to this JSON file")
    e.set_defaults(func=run_eval)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def run_generate(args) -> int:
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


def run_check(args) -> int:
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


def run_eval(args) -> int:
    from hf_plugins.sos.evaluation import evaluate_sos_model, load_eval_items

    items = load_eval_items(args.file, proved=args.proved)
    items = items[: args.limit] if args.limit else items
    model, tokenizer = common.load_model(args.model, args.dtype)
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
