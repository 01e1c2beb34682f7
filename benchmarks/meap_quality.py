"""MEAP quality check: multi-document key-value retrieval after SFT of SmolLM2-135M-Instruct, NTP vs MEAP.

The paper (arXiv 2502.07490, abstract) reports that MEAP in fine-tuning beats next-token prediction by 11.77 points
on lost-in-the-middle multi-document QA. Here the pretrained SmolLM2-135M-Instruct is fully fine-tuned on a
retrieval task it does not solve out of the box, with plain next-token SFT (NTP) and with MEAP SFT, at equal steps.

Task (`_meap_data.py`, built in code): a chat prompt of documents, each stating "The secret word of <key> is
<word>." next to a filler sentence, then 8 questions; the answer is one line "<key>: <word>" per question. Keys are
made-up names in groups of 4 sharing their last two syllables; training, dev and test key names are disjoint.
Training examples have `--train-docs` (8-16) documents; test examples have `--eval-docs` (8/16/32/64, up to 4x the
training length, as the paper evaluates long-context QA after SFT on short data) and ask the documents at depths
0/0.25/0.5/0.75/1 of the list among their questions. Score: teacher-forced exact match of the value word (one
token: argmax over the vocabulary given the prompt and the gold earlier lines), per (documents, depth) cell; also
the accuracy among the example's candidate words. The same examples for every model.

Arms, through `DataCollatorForMEAP(mode="sft")` wrapping transformers' `DataCollatorForSeq2Seq` (loss on the answer
only): `ntp` (mask ratio 0: the base collator's batch) and `meap` (ratio 0.1, `sft_mode="separate_rows"`, official
`MEAP-SFT.py`: an answer of more than 50 tokens, here ~60, gets an extra row whose masked answer tokens, and only
those, carry labels: about twice NTP's tokens per step); `meap-concat` (copy after the original) on request.

Training: plain PyTorch loop (the GPU image has no TRL / datasets), full fine-tuning, AdamW (β 0.9/0.999, no weight
decay: transformers' `TrainingArguments` defaults; fused on CUDA), 10% linear warm-up then cosine to 0, grad clip
1.0, fp32 weights with bf16 autocast, `--steps` updates of `--batch` examples (one document count per update); the
loss is summed over micro-batches of <= `--micro-tokens` padded tokens and divided by the batch's supervised tokens
(the full-batch mean), with the LM head run only where a label is set. Each seed has its own training examples;
every arm and rate of a seed sees the same examples in the same order, from the same initial weights.

Protocol: a learning-rate sweep (`--lrs`, seed 0) per arm, chosen by exact match on the dev keys; then more seeds at
each arm's chosen rate (`--lrs best --sweep SWEEP.json`). Rows (`--merge`): test exact match of every seed at the
chosen rate (seed 0 is the sweep's run; choosing never sees test keys), mean [min, max], by documents, by depth
and over all cells, MEAP (ours) vs NTP (baseline); the base model; the sweep.

Shards: `--arms`, `--lrs` and `--seeds` pick a subset, `--out` writes it as JSON; `--merge A.json B.json ...` joins
shards of one task setting, chooses each arm's rate and writes the rows (`--plot` needs matplotlib). SmolLM2 comes
from the GGUF file in `HF_PLUGINS_SMOLLM2_DIR` (`load_smollm2`) and is saved once to `--model-dir`, which later
processes load in seconds.

    python benchmarks/meap_quality.py --smoke                        # tiny random Llama on the CPU, seconds
    python benchmarks/meap_quality.py --arms ntp --seeds 0 --model-dir M --out p1.json     # the 3-rate sweep
    python benchmarks/meap_quality.py --merge p*.json --out sweep.json
    python benchmarks/meap_quality.py --arms meap --lrs best --sweep sweep.json --seeds 1 --model-dir M --out q1.json
    python benchmarks/meap_quality.py --merge p*.json q*.json --out meap_quality.json --plot meap_quality.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import _results  # benchmarks/_results.py (`python benchmarks/x.py` puts this folder on sys.path)
import _sweep_common as common  # benchmarks/_sweep_common.py
import numpy as np
import torch
from _meap_data import DEPTHS, KeyValueTask, smoke_tokenizer
from torch.nn.utils.rnn import pad_sequence


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCRIPT = "meap_quality.py"
ARMS = {  # DataCollatorForMEAP(mode="sft") settings per arm; ratio 0.1 = official MEAP-SFT.py default
    "ntp": {"mask_ratio": 0.0},
    "meap": {"mask_ratio": 0.1, "sft_mode": "separate_rows"},
    "meap-concat": {"mask_ratio": 0.1, "sft_mode": "concat"},
}
TASK_FIELDS = ("smoke", "steps", "batch", "train_docs", "eval_docs", "questions", "n_test", "n_dev",
               "twins", "n_filler", "min_answer_length", "data_seed", "eval_seed", "sweep_seed")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- data
def training_batches(task: KeyValueTask, args, seed: int) -> list[list[dict]]:
    """`args.steps` batches of `args.batch` examples (one document count per batch, uniform in `train_docs`)."""
    rng = np.random.default_rng([seed, 7])
    lo, hi = args.train_docs
    out = []
    for _ in range(args.steps):
        n = int(rng.integers(lo, hi + 1))
        out.append([task.build(rng, n, "train", args.questions) for _ in range(args.batch)])
    return [[{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in batch] for batch in out]


def eval_set(task: KeyValueTask, args, split: str, n: int) -> dict[int, list[dict]]:
    """`n` examples per document count of `args.eval_docs`, one question per depth; the same in every process."""
    rng = np.random.default_rng([args.eval_seed, 0 if split == "test" else 1])
    return {d: [task.build(rng, d, split, args.questions, DEPTHS) for _ in range(n)] for d in args.eval_docs}


def _autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def score(model, sets: dict[int, list[dict]], device, batch_tokens: int, pad_id: int) -> dict:
    """Teacher-forced accuracy of the depth questions' values, per "docs|depth" cell: `grid` = the argmax over the
    vocabulary is the value (exact match), `candidates` = the value scores highest among the example's values."""
    model.eval()
    body, head = getattr(model, model.base_model_prefix), model.get_output_embeddings()
    hits: dict[str, list[bool]] = {}
    picks: dict[str, list[bool]] = {}
    for n_docs, examples in sets.items():
        rows = max(1, batch_tokens // max(len(ex["input_ids"]) for ex in examples))
        for i in range(0, len(examples), rows):
            chunk = examples[i : i + rows]
            seqs = [torch.tensor(ex["input_ids"]) for ex in chunk]  # right padding: positions stay 0, 1, ...
            ids = pad_sequence(seqs, batch_first=True, padding_value=pad_id)
            mask = pad_sequence([torch.ones_like(x) for x in seqs], batch_first=True)
            pos = torch.tensor([[p for _, _, p in ex["targets"]] for ex in chunk])
            cands = torch.tensor([ex["candidates"] for ex in chunk])
            ids, mask, pos, cands = ids.to(device), mask.to(device), pos.to(device), cands.to(device)
            rix = torch.arange(len(chunk), device=device)[:, None]
            with _autocast(device):
                hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                logits = head(hidden[rix, pos - 1]).float()  # position p - 1 predicts token p
            gold = ids[rix, pos]
            exact = (logits.argmax(-1) == gold).cpu().tolist()
            among = logits.gather(-1, cands[:, None, :].expand(-1, pos.shape[1], -1)).argmax(-1)
            picked = (cands.gather(1, among) == gold).cpu().tolist()
            for r, ex in enumerate(chunk):
                for q, (_, depth, _) in enumerate(ex["targets"]):
                    if depth is not None:
                        hits.setdefault(f"{n_docs}|{depth}", []).append(exact[r][q])
                        picks.setdefault(f"{n_docs}|{depth}", []).append(picked[r][q])
    grid = {key: sum(v) / len(v) for key, v in hits.items()}
    cand = {key: sum(v) / len(v) for key, v in picks.items()}
    return {"grid": grid, "overall": statistics.fmean(grid.values()), "candidates": cand,
            "candidates_overall": statistics.fmean(cand.values())}  # fmt: skip


# ------------------------------------------------------------------------------------------------ training
def supervised_loss_sum(model, ids, labels, mask):
    """Summed next-token cross-entropy over the positions whose (shifted) label is set, the LM head run only there;
    returns (sum, count). Equals `model(..., labels=labels).loss * count`."""
    body, head = getattr(model, model.base_model_prefix), model.get_output_embeddings()
    hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logits = head(hidden[keep]).float()
    return torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum"), keep.sum()


def backward_batch(model, batch: dict, micro_tokens: int, device) -> torch.Tensor:
    """Gradients of the batch's mean supervised loss, accumulated over micro-batches of <= `micro_tokens` padded
    tokens (each trimmed to its longest row); returns that mean (detached)."""
    ids, labels, mask = (batch[k] for k in ("input_ids", "labels", "attention_mask"))  # on the CPU: no syncs
    n_sup = int((labels[:, 1:] != -100).sum())
    rows = max(1, micro_tokens // ids.shape[1])
    loss = torch.zeros((), device=device)
    for i in range(0, ids.shape[0], rows):
        width = int(mask[i : i + rows].sum(1).max())
        tensors = (t[i : i + rows, :width].to(device, non_blocking=True) for t in (ids, labels, mask))
        with _autocast(device):
            part, _ = supervised_loss_sum(model, *tensors)
        (part / n_sup).backward()
        loss += part.detach() / n_sup
    return loss


def make_collator(tok, arm: str, args, seed: int):
    from hf_plugins import DataCollatorForMEAP

    return DataCollatorForMEAP(tokenizer=tok, mode="sft", min_answer_length=args.min_answer_length, seed=seed,
                               **ARMS[arm])  # fmt: skip


def train(model, tok, batches, arm: str, lr: float, seed: int, args, device) -> dict:
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    collator = make_collator(tok, arm, args, seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.type == "cuda")
    total = len(batches)
    sched = get_cosine_schedule_with_warmup(opt, max(1, round(0.1 * total)), total)
    losses, masked, tokens = [], [], 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step, examples in enumerate(batches):
        batch = collator(examples)
        masked.append(collator.last_num_masked)
        if (collator.last_num_masked > 0) != (ARMS[arm]["mask_ratio"] > 0):
            raise RuntimeError(f"{arm} batch {step}: {collator.last_num_masked} masked tokens")
        loss = backward_batch(model, batch, args.micro_tokens, device)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss)
        tokens += int(batch["attention_mask"].sum())
        if (step + 1) % args.log_every == 0 or step + 1 == total:
            print(f"    {arm} lr {lr:g} seed {seed} step {step + 1}/{total}: loss {loss.item():.3f}, rows "
                  f"{batch['input_ids'].shape[0]}, masked {masked[-1]}, {tokens / (time.perf_counter() - t0):,.0f} tok/s",
                  flush=True)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    losses = [x.item() for x in losses]
    k = max(1, len(losses) // 10)
    return {"steps": total, "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "loss_first": statistics.fmean(losses[:k]),
            "loss_last": statistics.fmean(losses[-k:]), "masked_tokens": sum(masked),
            "extra_rows": collator.num_extra_rows, "examples": total * args.batch,
            "losses": [round(x, 4) for x in losses]}  # fmt: skip


# ------------------------------------------------------------------------------------------------- model
def load(args):
    """(model, tokenizer, name): SmolLM2-135M-Instruct (from `--model-dir` if saved there, else the GGUF file, then
    saved to `--model-dir`), or a tiny random Llama in `--smoke`; `[MASK]` added (seeded, same in every process)."""
    from hf_plugins import add_mask_token

    if args.smoke:
        from hf_plugins.testing import tiny_llama

        tok, name = smoke_tokenizer(), "tiny random Llama"
        model = tiny_llama(vocab_size=len(tok), max_position_embeddings=2048, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)  # fmt: skip
    elif args.model_dir and (Path(args.model_dir) / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok, name = AutoTokenizer.from_pretrained(args.model_dir), "SmolLM2-135M-Instruct"
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    else:
        from hf_plugins.models.smollm2 import load_smollm2

        (model, tok), name = load_smollm2(dtype=torch.float32), "SmolLM2-135M-Instruct"
        if args.model_dir:  # written under a temporary name, then renamed: concurrent processes never see half a copy
            tmp = Path(f"{args.model_dir}.tmp{os.getpid()}")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                os.rename(tmp, args.model_dir)
            except OSError:  # another process saved it first
                shutil.rmtree(tmp, ignore_errors=True)
    tok.padding_side = "right"
    torch.manual_seed(0)  # the new row's initialisation draws from the global generator
    add_mask_token(tok, model)
    return model, tok, name


# ------------------------------------------------------------------------------------------------ a shard
def run_shard(args) -> dict:
    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    lrs = dict.fromkeys(args.arms, args.lrs)
    if args.lrs == "best":
        chosen = json.loads(Path(args.sweep).read_text())["chosen_lr"]
        missing = [arm for arm in args.arms if arm not in chosen]
        if missing:
            raise ValueError(f"--sweep {args.sweep} chose no learning rate for {missing}; run their sweep first.")
        lrs = {arm: [chosen[arm]] for arm in args.arms}
    model, tok, name = load(args)
    model.to(device)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    task = KeyValueTask(tok, n_filler=args.n_filler, twins=args.twins, seed=args.data_seed)
    test, dev = eval_set(task, args, "test", args.n_test), eval_set(task, args, "dev", args.n_dev)
    lengths = {str(n): statistics.fmean(len(ex["input_ids"]) for ex in exs) for n, exs in test.items()}
    print(f"{name} on {device}; test example tokens by documents: " +
          ", ".join(f"{n}: {t:.0f}" for n, t in lengths.items()), flush=True)  # fmt: skip
    out = {"script": SCRIPT, "task": {k: getattr(args, k) for k in TASK_FIELDS}, "model": name,
           "device": _results.device_label(device.type == "cuda", args.smoke), "tokens_by_docs": lengths,
           "base": None, "runs": []}  # fmt: skip
    batch_tokens = args.micro_tokens
    if args.base:
        out["base"] = {"test": score(model, test, device, batch_tokens, tok.pad_token_id),
                       "dev": score(model, dev, device, batch_tokens, tok.pad_token_id)}  # fmt: skip
        print(f"base model: test {out['base']['test']['overall']:.3f}, dev {out['base']['dev']['overall']:.3f}")
    for seed in args.seeds:
        batches = training_batches(task, args, seed)
        for arm in args.arms:
            for lr in lrs[arm]:
                model.load_state_dict(init)
                stats = train(model, tok, batches, arm, lr, seed, args, device)
                res = {"arm": arm, "lr": lr, "seed": seed, "train": stats,
                       "test": score(model, test, device, batch_tokens, tok.pad_token_id),
                       "dev": score(model, dev, device, batch_tokens, tok.pad_token_id)}  # fmt: skip
                print(f"  {arm} lr {lr:g} seed {seed}: {stats['seconds']:.1f} s, loss {stats['loss_first']:.3f} -> "
                      f"{stats['loss_last']:.3f}; test {res['test']['overall']:.3f}, dev {res['dev']['overall']:.3f}",
                      flush=True)  # fmt: skip
                out["runs"].append(res)
    out["wall_s"] = time.perf_counter() - t_start
    return out


# -------------------------------------------------------------------------------------------------- merge
def merge(payloads: list[dict], names: list[str] | None = None) -> dict:
    """Shards (or merged files, `names` for the errors) of one task into one: runs deduplicated by (arm, lr, seed),
    each arm's chosen rate (best dev exact match among the sweep seed's runs) and its runs at that rate."""
    names = names or [f"file {i + 1}" for i in range(len(payloads))]
    meta, joined = common.join_runs(payloads, names, same=("task",))
    runs = {}
    for r in joined:
        runs.setdefault((r["arm"], r["lr"], r["seed"]), r)
    runs = [runs[k] for k in sorted(runs)]
    sweep = {}
    for r in runs:
        if r["seed"] == meta["task"]["sweep_seed"]:
            sweep.setdefault(r["arm"], {})[r["lr"]] = r["dev"]["overall"]
    chosen = {arm: common.best_lr(by_lr, higher=True) for arm, by_lr in sweep.items()}
    final = {arm: [r for r in runs if r["arm"] == arm and r["lr"] == lr] for arm, lr in chosen.items()}
    base = next((p["base"] for p in payloads if p.get("base")), None)
    return {**{k: meta[k] for k in ("script", "task", "model", "device", "tokens_by_docs")}, "base": base,
            "runs": runs, "sweep": sweep, "chosen_lr": chosen, "final": final}  # fmt: skip


def _row(case: str, metric: str, ours: float, base: float, ours_text: str, base_text: str) -> dict:
    """A RESULTS.md row (keys in the order of the merged files written so far)."""
    return {"case": case, "metric": metric, "ours": ours, "baseline": base, "ours_text": ours_text,
            "base_text": base_text, "ratio": common.ratio(ours, base)}  # fmt: skip


def _text(s: dict) -> str:
    return common.spread_text(s, 3)


def _sweep_text(by_lr: dict, chosen: float | None = None) -> str:
    return common.sweep_text(dict(sorted(by_lr.items())), chosen, fmt=lambda acc: f"{acc:.3f}", sep=", ")


def cell_mean(grid: dict, docs=None, depths=None) -> float:
    keys = [k for k in grid if (docs is None or int(k.split("|")[0]) in docs)
            and (depths is None or float(k.split("|")[1]) in depths)]  # fmt: skip
    return statistics.fmean(grid[k] for k in keys)


def rows_from(m: dict) -> list[dict]:
    """MEAP arms (ours) vs NTP (baseline): test exact match, mean [min, max] over the seeds at the chosen rates."""
    task, final = m["task"], m["final"]
    if "ntp" not in final or not any(a != "ntp" for a in final):
        return []
    seeds = sorted({r["seed"] for runs in final.values() for r in runs})
    lo, hi = task["train_docs"]
    lrs = ", ".join(f"{a} {m['chosen_lr'][a]:g}" for a in sorted(final, key=lambda a: a != "ntp"))
    setup = (f"{m['model']} SFT {task['steps']} steps x {task['batch']} examples of {lo}-{hi} docs, lr {lrs} "
             f"(best of the sweep on dev keys), {task['n_test']} test questions per cell, {len(seeds)} seed{'s' * (len(seeds) > 1)}")  # fmt: skip
    rows = []
    for arm in (a for a in final if a != "ntp"):
        metric = f"answer exact match, {arm} vs NTP, mean [min, max] over seeds"

        def row(case, pick, arm=arm, metric=metric):
            ours = common.seed_stats([pick(r["test"]["grid"]) for r in final[arm]])
            base = common.seed_stats([pick(r["test"]["grid"]) for r in final["ntp"]])
            rows.append(_row(f"{case} ({setup})", metric, ours["mean"], base["mean"], _text(ours), _text(base)))

        for n in task["eval_docs"]:
            tokens = m["tokens_by_docs"][str(n)]
            row(f"KV retrieval, {n} docs (~{tokens:.0f} tokens), mean over depths", lambda g, n=n: cell_mean(g, [n]))
        for d in DEPTHS:
            row(f"KV retrieval, depth {d}, mean over doc counts", lambda g, d=d: cell_mean(g, depths=[d]))
        row("KV retrieval, all cells", cell_mean)
    if m["base"]:
        b, ntp = m["base"]["test"]["overall"], common.seed_stats([r["test"]["overall"] for r in final["ntp"]])
        among = m["base"]["test"]["candidates_overall"]
        metric = "answer exact match (in parentheses: best of the example's candidate words), base model vs NTP"
        case = f"KV retrieval, all cells, not fine-tuned model ({setup})"
        rows.append(_row(case, metric, b, ntp["mean"], f"{b:.3f} ({among:.3f})", _text(ntp)))
    sweep_text = {arm: _sweep_text(by_lr, m["chosen_lr"][arm]) for arm, by_lr in m["sweep"].items()}
    for arm in (a for a in m["sweep"] if a != "ntp"):
        case = f"learning-rate sweep, seed {task['sweep_seed']} ({setup})"
        metric = f"dev exact match by lr (* chosen), {arm} vs NTP"
        rows.append(_row(case, metric, float("nan"), float("nan"), sweep_text[arm], sweep_text.get("ntp", "")))
    return rows


def plot(m: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task, final = m["task"], m["final"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = ((axes[0], list(DEPTHS), lambda g, x: cell_mean(g, depths=[x]), "depth of the asked document"),
              (axes[1], task["eval_docs"], lambda g, x: cell_mean(g, [x]), "documents in the context"))  # fmt: skip
    for ax, xs, pick, label in panels:
        for arm, runs in final.items():
            vals = np.array([[pick(r["test"]["grid"], x) for x in xs] for r in runs])
            mean = vals.mean(0)
            ax.errorbar(xs, mean, yerr=[mean - vals.min(0), vals.max(0) - mean], marker="o", capsize=3,
                        label=f"{arm} (lr {m['chosen_lr'][arm]:g}, {len(runs)} seeds)")  # fmt: skip
        if m["base"]:
            ax.plot(xs, [pick(m["base"]["test"]["grid"], x) for x in xs], "k--", label="not fine-tuned")
        ax.set(xlabel=label, ylabel="test exact match", ylim=(0, 1.02))
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(task["eval_docs"], [str(n) for n in task["eval_docs"]])
    for arm, by_lr in m["sweep"].items():
        axes[2].plot(sorted(by_lr), [by_lr[x] for x in sorted(by_lr)], marker="o", label=arm)
    axes[2].set(
        xscale="log", xlabel="learning rate", ylabel=f"dev exact match, seed {task['sweep_seed']}", ylim=(0, 1)
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MEAP vs NTP SFT of {m['model']}: multi-document key-value retrieval (min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


# ------------------------------------------------------------------------------------------------ command
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny random Llama and word-level tokenizer on the CPU")
    p.add_argument("--merge", nargs="+", default=None, help="join these shard / merged JSON files; no training")
    p.add_argument("--out", default=None, help="JSON file for this shard (or the merged result)")
    p.add_argument("--append", action="store_true", help="with --merge: append the rows to benchmarks/RESULTS.md")
    p.add_argument("--plot", default=None, help="with --merge: write the figure here (needs matplotlib)")
    p.add_argument("--arms", type=lambda t: t.split(","), default=["ntp", "meap"], help=f"subset of {list(ARMS)}")
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3", help='comma-separated rates, or "best" (needs --sweep)')
    p.add_argument("--sweep", default=None, help="merged JSON whose chosen rates --lrs best uses")
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated training seeds")
    p.add_argument("--sweep-seed", type=int, default=0, help="the seed whose runs choose the learning rates")
    p.add_argument("--base", action="store_true", help="also score the model before fine-tuning")
    p.add_argument("--model-dir", default=None, help="save_pretrained copy of SmolLM2 (created if absent)")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu in --smoke)")
    p.add_argument("--steps", type=int, default=80, help="updates per run (equal for every arm)")
    p.add_argument("--batch", type=int, default=16, help="examples per update (MEAP adds its masked rows)")
    p.add_argument("--micro-tokens", type=int, default=16384, help="padded tokens per forward (memory cap)")
    p.add_argument("--train-docs", type=_ints, default=[8, 16], help="min,max documents per training example")
    p.add_argument("--eval-docs", type=_ints, default=[8, 16, 32, 64], help="documents per test example")
    p.add_argument("--questions", type=int, default=8, help="questions per example (evaluation: 5 at fixed depths)")
    p.add_argument("--n-test", type=int, default=128, help="test examples per document count")
    p.add_argument("--n-dev", type=int, default=32, help="dev examples per document count")
    p.add_argument("--twins", type=int, default=4, help="keys per group sharing the last two syllables")
    p.add_argument("--n-filler", type=int, default=2000, help="filler sentences in the pool")
    p.add_argument("--min-answer-length", type=int, default=50, help="MEAP SFT: longer answer spans get masked")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--data-seed", type=int, default=0, help="filler pool")
    p.add_argument("--eval-seed", type=int, default=12345, help="dev and test examples")
    args = p.parse_args(argv)
    if args.smoke:  # small defaults; flags given explicitly still win
        p.set_defaults(steps=3, batch=2, micro_tokens=300, train_docs=[6, 8], eval_docs=[6, 9], questions=6, n_test=3,
                       n_dev=2, n_filler=50, log_every=1, min_answer_length=10, lrs="1e-3,3e-3,1e-2")  # fmt: skip
        args = p.parse_args(argv)
    if args.merge:
        return args
    if args.lrs == "best":
        if not args.sweep:
            raise ValueError("--lrs best needs --sweep (a merged JSON of the learning-rate sweep)")
    else:
        try:
            args.lrs = [float(x) for x in args.lrs.split(",") if x]
        except ValueError:
            raise ValueError(f"--lrs must be comma-separated numbers or 'best', got {args.lrs!r}") from None
        if not args.lrs or min(args.lrs) <= 0:
            raise ValueError(f"--lrs needs positive rates, got {args.lrs}")
    if not args.arms or set(args.arms) - set(ARMS):
        raise ValueError(f"--arms must be a comma-separated subset of {list(ARMS)}, got {args.arms}")
    for name in ("steps", "batch", "micro_tokens", "questions", "n_test", "n_dev", "n_filler", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.questions < len(DEPTHS):
        raise ValueError(f"--questions must be >= {len(DEPTHS)} (one per depth in evaluation), got {args.questions}")
    if len(args.train_docs) != 2 or not args.questions <= args.train_docs[0] <= args.train_docs[1]:
        raise ValueError(f"--train-docs must be min,max with --questions <= min <= max, got {args.train_docs}")
    if not args.eval_docs or min(args.eval_docs) < args.questions:
        raise ValueError(f"--eval-docs needs counts >= --questions ({args.questions}), got {args.eval_docs}")
    if not args.seeds:
        raise ValueError("--seeds needs at least one seed")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.merge:
        merged = merge([json.loads(Path(f).read_text()) for f in args.merge], args.merge)
    else:
        payload = run_shard(args)
        print(f"shard done in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.out:  # a shard: its runs only; --merge joins shards and reports
            Path(args.out).write_text(json.dumps(payload, indent=1))
            return 0
        merged = merge([payload])
    for arm, by_lr in merged["sweep"].items():
        print(f"{arm}: dev exact match by lr {_sweep_text(by_lr)} -> chose {merged['chosen_lr'][arm]:g}")
    rows = rows_from(merged)
    lines = _results.markdown_text(rows, SCRIPT, merged["device"]) if rows else []
    print("\n".join(lines) if lines else "no rows: needs NTP and a MEAP arm at their chosen rates")
    payload = {"rows": rows, **{k: v for k, v in merged.items() if k != "final"}}  # `final`: runs repeated
    _results.write_outputs(lines, out=args.out, payload=payload, append=args.append and bool(rows))
    if args.plot and merged["final"]:
        plot(merged, args.plot)
    print(f"total wall {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
