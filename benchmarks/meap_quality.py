"""MEAP quality check: needle-in-a-haystack retrieval after pre-training from scratch, NTP vs MEAP at equal steps.

The paper's claim (arXiv 2502.07490, abstract) is better key-information retrieval. Synthetic task, built here
in code (no tokenizer, no data set): documents of random filler tokens with P key-value needles
`[KEY k v1 v2]` buried in them, followed by queries `[QUERY k v1 v2]` (an induction / associative-recall
pattern that small transformers learn in a few thousand steps). A small Llama is pre-trained
from scratch twice with the same seed, initialisation, data stream and number of steps: plain next-token
prediction (NTP) and MEAP (`DataCollatorForMEAP`, mask ratio 0.15, pre-training mode; structural tokens are
special and never masked). Evaluation is unmasked: exact match of both value tokens (greedy, teacher-forced
on v1), by context length and by the depth of the queried needle, plus the validation loss.

Runs on the GPU image (torch + transformers only: no TRL, no datasets; a plain training loop):

    python benchmarks/meap_quality.py --out meap_quality.json      # ~2-3 min on one H200
    python benchmarks/meap_quality.py --smoke                      # CPU, < 1 min
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
PAD, BOS, MASK, KEY, QUERY = range(5)
SPECIAL = [PAD, BOS, MASK, KEY, QUERY]
N_KEYS, N_VALUES = 64, 64
KEY_LO = len(SPECIAL)
VAL_LO = KEY_LO + N_KEYS
FILLER_LO = VAL_LO + N_VALUES
VOCAB = 512
NEEDLE = 4  # KEY k v1 v2
QUERY_LEN = 4  # QUERY k v1 v2


def make_batch(batch: int, ctx: int, pairs: int, generator: torch.Generator, depth: float | None = None):
    """`(input_ids (B, ctx), answer_pos (B,), values (B, 2))`: BOS, a body of filler with `pairs` needles on a
    grid of 4-token slots, then queries. Training (`depth=None`): every needle is queried, in random order.
    Evaluation: the queried needle sits at `depth` in [0, 1] of the body, one query at the very end."""
    n_queries = pairs if depth is None else 1
    body = ctx - 1 - n_queries * QUERY_LEN
    slots = body // NEEDLE
    if slots < pairs:
        raise ValueError(f"context {ctx} is too short for {pairs} needles")
    ids = torch.randint(FILLER_LO, VOCAB, (batch, ctx), generator=generator)
    ids[:, 0] = BOS
    keys = torch.rand(batch, N_KEYS, generator=generator).argsort(1)[:, :pairs] + KEY_LO
    values = torch.randint(VAL_LO, FILLER_LO, (batch, pairs, 2), generator=generator)
    order = torch.rand(batch, slots, generator=generator).argsort(1)
    if depth is not None:  # the target (pair 0) at the requested depth, the others in other slots
        target = round(depth * (slots - 1))
        order = torch.cat([torch.full((batch, 1), target), order[order != target].view(batch, -1)], 1)
    starts = 1 + order[:, :pairs] * NEEDLE
    rows = torch.arange(batch)
    for p in range(pairs):
        s = starts[:, p]
        ids[rows, s], ids[rows, s + 1] = KEY, keys[:, p]
        ids[rows, s + 2], ids[rows, s + 3] = values[:, p, 0], values[:, p, 1]
    q0 = 1 + body
    asked = torch.rand(batch, pairs, generator=generator).argsort(1)[:, :n_queries]
    if depth is not None:
        asked = torch.zeros(batch, 1, dtype=torch.long)
    for j in range(n_queries):
        s, p = q0 + j * QUERY_LEN, asked[:, j]
        ids[rows, s], ids[rows, s + 1] = QUERY, keys[rows, p]
        ids[rows, s + 2], ids[rows, s + 3] = values[rows, p, 0], values[rows, p, 1]
    answer_pos = torch.full((batch,), ctx - 2)  # v1 of the last query
    return ids, answer_pos, values[rows, asked[:, -1]]


def n_pairs(cfg: dict, ctx: int) -> int:
    """Needles per document: proportional to the context (denser retrieval signal; longer = more distractors)."""
    return max(2, cfg["pairs_per_64"] * ctx // 64)


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
            pred1 = logits[rows, pos.to(device) - 1].argmax(-1)  # position before v1 predicts v1
            pred2 = logits[rows, pos.to(device)].argmax(-1)
            hit = (pred1 == values[:, 0].to(device)) & (pred2 == values[:, 1].to(device))
            acc[(ctx, depth)] = hit.float().mean().item()
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
    if smoke:
        return {
            "hidden": 32, "layers": 2, "heads": 4, "batch": 4, "train_ctx": [48, 64], "eval_ctx": [48, 64],
            "depths": [0.0, 1.0], "pairs_per_64": 2, "lr": 3e-3, "warmup": 2, "max_steps": 6, "probe_steps": 0,
            "eval_n": 8, "seed": seed,
        }  # fmt: skip
    return {
        "hidden": 256, "layers": 4, "heads": 8, "batch": 64, "train_ctx": [128, 256, 512], "eval_ctx": [128, 256, 512],
        "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "pairs_per_64": 2, "lr": 1e-3, "warmup": 100, "max_steps": 3000,
        "probe_steps": 40, "eval_n": 256, "seed": seed,
    }  # fmt: skip


def rows_from(ntp: dict, meap: dict, cfg: dict, steps: int) -> list[dict]:
    rows = []
    tag = f"{cfg['layers']}L/{cfg['hidden']}d from scratch, {steps} steps, {cfg['pairs_per_64']} needles per 64 tokens"

    def mean(res, pred):
        vals = [v for k, v in res["accuracy"].items() if pred(k)]
        return sum(vals) / len(vals)

    for ctx in cfg["eval_ctx"]:
        rows.append(
            (
                f"NIAH ctx={ctx}, mean over depths ({tag})",
                "retrieval accuracy",
                lambda r, c=ctx: mean(r, lambda k: k[0] == c),
            )
        )
    for depth in cfg["depths"]:
        rows.append(
            (
                f"NIAH depth={depth}, mean over contexts ({tag})",
                "retrieval accuracy",
                lambda r, d=depth: mean(r, lambda k: k[1] == d),
            )
        )
    rows.append((f"NIAH all cells ({tag})", "retrieval accuracy", lambda r: mean(r, lambda k: True)))
    rows.append((f"unmasked validation ({tag})", "val loss (nats)", lambda r: r["val_loss"]))
    return [{"case": c, "metric": m, "ours": f(meap), "baseline": f(ntp)} for c, m, f in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write all results (full accuracy grid) as JSON here")
    p.add_argument("--steps", type=int, default=None, help="fixed steps per run (default: from --budget-s)")
    p.add_argument("--budget-s", type=float, default=60.0, help="training seconds per run when --steps is unset")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    cfg = config(args.smoke, args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"NTP run on {device} ...")
    ntp, steps, t_ntp = train(cfg, meap=False, steps=args.steps, device=device, budget_s=args.budget_s)
    print(f"MEAP run, {steps} steps ...")
    meap, _, t_meap = train(cfg, meap=True, steps=steps, device=device, budget_s=args.budget_s)
    print(f"train seconds: NTP {t_ntp:.1f}, MEAP {t_meap:.1f}; MEAP masked fraction {meap['masked_fraction']:.4f}")
    print("accuracy (ctx, depth): NTP -> MEAP")
    for key in ntp["accuracy"]:
        print(f"  {key}: {ntp['accuracy'][key]:.3f} -> {meap['accuracy'][key]:.3f}")
    rows = rows_from(ntp, meap, cfg, steps)
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
        grid = {
            name: {f"ctx={c},depth={d}": v for (c, d), v in res["accuracy"].items()} | {"val_loss": res["val_loss"]}
            for name, res in (("ntp", ntp), ("meap", meap))
        }
        payload = {"config": cfg, "steps": steps, "train_seconds": {"ntp": t_ntp, "meap": t_meap}, "grid": grid}
        Path(args.out).write_text(json.dumps({"rows": rows, **payload}, indent=2) + "\n")
    if args.append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
