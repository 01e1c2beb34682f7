"""MEAP quality check: key-value recall after pre-training from scratch, NTP vs MEAP at equal steps.

The paper's claim (arXiv 2502.07490, abstract) is better key-information retrieval. Synthetic task, built here
in code (no tokenizer, no data set): a document is low-entropy filler (16 filler tokens) holding one fact
`k v` per 16 tokens (128 key tokens, 64 value tokens, single-token keys and values), followed by one query
`QUERY k v` per fact (multi-query associative recall; every queried value is predictable from the context
only). A 4-layer / 256-wide Llama is pre-trained from scratch with NTP and with MEAP (`DataCollatorForMEAP`,
ratio 0.15, pre-training mode; PAD/BOS/MASK/QUERY are special and never masked), same seed, initialisation,
data stream and number of steps, for 2 seeds. Training contexts are 128 and 256 tokens; evaluation (unmasked)
at 128-1024 tokens, so the longer contexts (more distractors, unseen positions) keep NTP from saturating:
accuracy of the last query's value (chance 1/64) by context length and by the depth of the queried fact.

Runs on the GPU image (torch + transformers only: no TRL, no datasets; a plain training loop):

    python benchmarks/meap_quality.py --out meap_quality.json      # 4 runs x 40 s + eval, ~3.5 min on one H200
    python benchmarks/meap_quality.py --smoke                      # CPU, ~25 s (pipeline check only)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch


SCRIPT = "meap_quality.py"
PAD, BOS, MASK, QUERY = range(4)
SPECIAL = [PAD, BOS, MASK, QUERY]
N_KEYS, N_VALUES, N_FILLER = 128, 64, 16
KEY_LO = len(SPECIAL)
VAL_LO = KEY_LO + N_KEYS
FILLER_LO = VAL_LO + N_VALUES
VOCAB = FILLER_LO + N_FILLER  # 212
FACT = 2  # k v
QUERY_LEN = 3  # QUERY k v


def make_batch(batch: int, ctx: int, pairs: int, generator: torch.Generator, depth: float | None = None):
    """`(input_ids (B, ctx), answer_pos (B,), value (B,))`: BOS, a body of low-entropy filler (16 filler tokens)
    holding `pairs` facts `k v` (distinct keys per document) at random 2-token slots, then one query
    `QUERY k v` per fact in random order (multi-query associative recall: every query's value is predictable
    from the context only). Evaluation (`depth` in [0, 1]): the *last* query asks the fact placed at `depth` of
    the body; the answer is the value token at `answer_pos`."""
    body = ctx - 1 - pairs * QUERY_LEN
    slots = body // FACT
    if slots < pairs:
        raise ValueError(f"context {ctx} is too short for {pairs} facts")
    ids = torch.randint(FILLER_LO, VOCAB, (batch, ctx), generator=generator)
    ids[:, 0] = BOS
    keys = torch.rand(batch, N_KEYS, generator=generator).argsort(1)[:, :pairs] + KEY_LO
    values = torch.randint(VAL_LO, FILLER_LO, (batch, pairs), generator=generator)
    order = torch.rand(batch, slots, generator=generator).argsort(1)
    asked = torch.rand(batch, pairs, generator=generator).argsort(1)
    if depth is not None:  # fact 0 at the requested depth and asked last; the others elsewhere, in random order
        target = round(depth * (slots - 1))
        order = torch.cat([torch.full((batch, 1), target), order[order != target].view(batch, -1)], 1)
        asked = torch.cat([asked[asked != 0].view(batch, -1), torch.zeros(batch, 1, dtype=torch.long)], 1)
    starts = 1 + order[:, :pairs] * FACT
    rows = torch.arange(batch)
    for p in range(pairs):
        ids[rows, starts[:, p]], ids[rows, starts[:, p] + 1] = keys[:, p], values[:, p]
    q0 = 1 + body
    for j in range(pairs):
        s, p = q0 + j * QUERY_LEN, asked[:, j]
        ids[rows, s], ids[rows, s + 1], ids[rows, s + 2] = QUERY, keys[rows, p], values[rows, p]
    answer_pos = torch.full((batch,), ctx - 1)  # the value of the last query
    return ids, answer_pos, values[rows, asked[:, -1]]


def n_pairs(cfg: dict, ctx: int) -> int:
    """Facts per document: proportional to the context (longer context = more distractors, a longer haystack)."""
    return max(2, ctx // cfg["tokens_per_fact"])


def _stack_base(examples):
    """The base collator: equal-length rows, labels = inputs (the model shifts)."""
    ids = torch.stack([e["input_ids"] for e in examples])
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def build_model(cfg: dict, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=cfg["hidden"],
        intermediate_size=4 * cfg["hidden"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["heads"],
        max_position_embeddings=max(cfg["train_ctx"] + cfg["eval_ctx"]),
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=PAD,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(cfg["seed"])
    return LlamaForCausalLM(config).to(device)


@torch.no_grad()
def evaluate(model, cfg: dict, device) -> dict:
    model.eval()
    g = torch.Generator().manual_seed(10_000 + cfg["seed"])
    acc, losses = {}, []
    for ctx in cfg["eval_ctx"]:
        for depth in cfg["depths"]:
            ids, pos, values = make_batch(cfg["eval_n"], ctx, n_pairs(cfg, ctx), g, depth=depth)
            ids = ids.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(input_ids=ids).logits
            rows = torch.arange(ids.shape[0], device=device)
            pred = logits[rows, pos.to(device) - 1].argmax(-1)  # the position before the value predicts it
            acc[(ctx, depth)] = (pred == values.to(device)).float().mean().item()
        ids, _, _ = make_batch(cfg["eval_n"], ctx, n_pairs(cfg, ctx), g)
        ids = ids.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    model.train()
    return {"accuracy": acc, "val_loss": sum(losses) / len(losses)}


def train(cfg: dict, meap: bool, steps: int | None, device, budget_s: float) -> tuple[dict, int, float]:
    """Train one model; with `steps=None` the step count is set from the measured speed and `budget_s`."""
    from hf_plugins import DataCollatorForMEAP

    model = build_model(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.05)
    collator = (
        DataCollatorForMEAP(base=_stack_base, mask_token_id=MASK, special_token_ids=SPECIAL, seed=cfg["seed"])
        if meap
        else _stack_base
    )
    g = torch.Generator().manual_seed(cfg["seed"])  # same data stream for both runs
    total = steps or cfg["max_steps"]
    t0, step = time.perf_counter(), 0
    while step < total:
        ctx = cfg["train_ctx"][step % len(cfg["train_ctx"])]
        ids, _, _ = make_batch(cfg["batch"], ctx, n_pairs(cfg, ctx), g)
        batch = collator([{"input_ids": row} for row in ids])
        lr_scale = min(1.0, (step + 1) / cfg["warmup"]) * (0.55 + 0.45 * math.cos(math.pi * step / total))
        for group in opt.param_groups:
            group["lr"] = cfg["lr"] * lr_scale
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if steps is None and step == cfg["probe_steps"]:  # fix the step count from the measured speed
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - t0) / step
            total = max(step, min(cfg["max_steps"], int(budget_s / per_step)))
            print(f"  {per_step * 1e3:.1f} ms/step -> {total} steps per run")
        if step % max(1, total // 5) == 0:
            print(f"  {'MEAP' if meap else 'NTP '} step {step}/{total} loss {loss.item():.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = evaluate(model, cfg, device)
    if meap:
        result["masked_fraction"] = collator.num_masked_tokens / max(collator.num_eligible_tokens, 1)
    return result, total, seconds


def config(smoke: bool, seed: int) -> dict:
    if smoke:  # CPU, < 90 s: checks the pipeline; too few steps to learn the recall task on a shared CPU
        return {
            "hidden": 64, "layers": 2, "heads": 4, "batch": 16, "train_ctx": [48, 64], "eval_ctx": [64, 128],
            "depths": [0.0, 0.5, 1.0], "tokens_per_fact": 16, "lr": 3e-3, "warmup": 10, "max_steps": 60,
            "probe_steps": 0, "eval_n": 128, "seed": seed,
        }  # fmt: skip
    # GPU: trained on contexts up to 256, evaluated up to 1024 (4x the facts, positions never seen in training):
    # the longer contexts keep NTP away from saturation.
    return {
        "hidden": 256, "layers": 4, "heads": 8, "batch": 64, "train_ctx": [128, 256], "eval_ctx": [128, 256, 512, 1024],
        "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "tokens_per_fact": 16, "lr": 1e-3, "warmup": 100, "max_steps": 2500,
        "probe_steps": 30, "eval_n": 256, "seed": seed,
    }  # fmt: skip


def mean_over_seeds(results: list[dict]) -> dict:
    keys = results[0]["accuracy"]
    return {
        "accuracy": {k: sum(r["accuracy"][k] for r in results) / len(results) for k in keys},
        "val_loss": sum(r["val_loss"] for r in results) / len(results),
    }


def rows_from(ntp: dict, meap: dict, cfg: dict, steps: int, seeds: int) -> list[dict]:
    rows = []
    tag = (
        f"{cfg['layers']}L/{cfg['hidden']}d from scratch, {steps} steps, train ctx <= {max(cfg['train_ctx'])}, "
        f"1 fact per {cfg['tokens_per_fact']} tokens, mean of {seeds} seed(s)"
    )

    def mean(res, pred):
        vals = [v for k, v in res["accuracy"].items() if pred(k)]
        return sum(vals) / len(vals)

    for ctx in cfg["eval_ctx"]:
        rows.append(
            (f"recall ctx={ctx}, mean over depths ({tag})", "accuracy", lambda r, c=ctx: mean(r, lambda k: k[0] == c))
        )
    for depth in cfg["depths"]:
        rows.append(
            (
                f"recall depth={depth}, mean over contexts ({tag})",
                "accuracy",
                lambda r, d=depth: mean(r, lambda k: k[1] == d),
            )
        )
    rows.append((f"recall all cells ({tag})", "accuracy", lambda r: mean(r, lambda k: True)))
    rows.append((f"unmasked validation ({tag})", "val loss (nats)", lambda r: r["val_loss"]))
    return [{"case": c, "metric": m, "ours": f(meap), "baseline": f(ntp)} for c, m, f in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write all results (full accuracy grid per seed) as JSON here")
    p.add_argument("--steps", type=int, default=None, help="fixed steps per run (default: from --budget-s)")
    p.add_argument("--budget-s", type=float, default=40.0, help="training seconds per run when --steps is unset")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1, each trained with NTP and with MEAP")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    steps, runs = args.steps, {"ntp": [], "meap": []}
    seconds = {"ntp": [], "meap": []}
    for seed in range(1 if args.smoke else args.seeds):
        cfg = config(args.smoke, seed)
        for name in ("ntp", "meap"):
            print(f"{name.upper()} run, seed {seed}, on {device} ...")
            res, steps, sec = train(cfg, meap=name == "meap", steps=steps, device=device, budget_s=args.budget_s)
            runs[name].append(res)
            seconds[name].append(sec)
    ntp, meap = mean_over_seeds(runs["ntp"]), mean_over_seeds(runs["meap"])
    fractions = [r["masked_fraction"] for r in runs["meap"]]
    print(
        f"train seconds: NTP {sum(seconds['ntp']):.1f}, MEAP {sum(seconds['meap']):.1f}; masked fraction {fractions}"
    )
    print(f"accuracy (ctx, depth): NTP -> MEAP (chance {1 / N_VALUES:.3f})")
    for key in ntp["accuracy"]:
        print(f"  {key}: {ntp['accuracy'][key]:.3f} -> {meap['accuracy'][key]:.3f}")
    rows = rows_from(ntp, meap, cfg, steps, len(runs["ntp"]))
    import transformers

    dev = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    stamp = (
        f"| {datetime.date.today().isoformat()} | {SCRIPT} | {dev} | {torch.__version__} / {transformers.__version__}"
    )
    lines = [
        f"{stamp} | {r['case']} | {r['metric']} (MEAP vs NTP) | {r['ours']:.3f} | {r['baseline']:.3f} | "
        f"{(r['ours'] / r['baseline']) if r['baseline'] else float('nan'):.2f} |"
        for r in rows
    ]
    print("\n".join(lines))
    if args.out:
        grids = {
            name: [
                {f"ctx={c},depth={d}": v for (c, d), v in res["accuracy"].items()} | {"val_loss": res["val_loss"]}
                for res in results
            ]
            for name, results in runs.items()
        }
        payload = {"config": cfg, "steps": steps, "train_seconds": seconds, "masked_fraction": fractions}
        Path(args.out).write_text(json.dumps({"rows": rows, **payload, "grids": grids}, indent=2) + "\n")
    if args.append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
