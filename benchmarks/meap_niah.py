"""MEAP quality check 2 (issue 7): needle-in-a-haystack retrieval after fine-tuning the pretrained
SmolLM2-135M-Instruct, NTP vs MEAP at equal steps (same seed, data, data order and initialisation).

Why this check. `meap_quality.py` trains a 4-layer model from scratch; neither arm learned its recall task, so its
comparison says nothing. Here the model starts pretrained (it can already copy from its context), so the baseline
learns the task within a few hundred updates and the question becomes whether MEAP's input masking changes how
well the fine-tuned model retrieves a fact buried in long filler text, by depth, context length and distractors.

Data (built here, seeded; no download). A document is a haystack of varied filler sentences (10 templates over
small word lists: people, places, objects, animals, adjectives, verbs, times, weather; a pool of `--n-filler`
sentences), with needles "The secret code of <key> is <value>." inserted between sentences (keys: made-up
three-syllable names such as "Belkarnov"; values: 6-digit numbers, one token per digit in SmolLM2), then questions
"Question: What is the secret code of <key>?" each followed by "Answer: <value>.". Every document has exactly
`ctx` tokens (the last filler sentence is cut to fit). Distractor needles (other keys, other values) sit at
uniformly random sentence boundaries; the target at the boundary whose token offset is closest to depth x
haystack length (0 = first token, 1 = right before the question). Training and evaluation keys are disjoint
(held-out names); the filler pool is shared. Difficulty knobs:
- context length: `--train-lengths` (default 512/1024/2048) vs `--eval-lengths` (512/1024/2048/4096: 4096 is
  beyond the fine-tuning lengths; SmolLM2's own position range is 8,192);
- distractors: `--eval-distractors` levels, default "4" (4 random-key distractors) and "16n" (16 near-key
  distractors: keys sharing the target's first two syllables where the held-out names allow, else its first,
  e.g. "Zarcastav" asked among "Zarcaswyn", "Zarcasdru", "Zarpelmir", ...); training documents have 0..
  `--train-distractors` (16), near keys in `--train-near` (50%) of them, and ask `--train-queries` (3) questions
  (the target first, then other needles); evaluation documents ask one.

How MEAP applies: pre-training mode, continued training on whole documents. The paper's retrieval claim
(needle-in-a-haystack, spec meap.md "Reference results") comes from MEAP *pre-training*: 15% of the input tokens
of the whole sequence replaced by `[MASK]`, next-token loss on every original token (official `meap_1b.py`).
Our SFT mode would not test that: it masks only answer tokens, and only in answers longer than
`min_answer_length` = 50 tokens (official `MEAP-SFT.py`); a 7-token answer is never masked, and even with the
threshold lowered, one masked token of a short answer in a "separate_rows" copy is predicted from an unmasked
prefix (the same loss as the original row). So both arms train on the same full documents with the loss on
every token (haystack, needles, questions, answers), through the same `DataCollatorForMEAP(mode="pretrain")`
wrapping transformers' `DataCollatorForLanguageModeling(mlm=False)`: ratio 0.15 for MEAP (paper main setting)
and 0.0 for NTP (the collator then returns the base batch unchanged), so masking is the only difference. The
masked-token count of every batch is recorded and asserted (> 0 for MEAP, 0 for NTP); evaluation is unmasked (as
official validation). `[MASK]` is added to SmolLM2's tokenizer with `add_mask_token` (embeddings resized once,
before the shared initial state is saved, so all arms and the base measurement start from the same weights).

Training: plain PyTorch loop (no TRL / datasets: the GPU image lacks them), full fine-tuning, AdamW (β 0.9/0.95
and weight decay 0.05 as the official pre-training; fused on CUDA), lr 2e-4 (full FT of a 135M model; between
the 1e-4 of sos_quality.py and the 5e-4 of our CPU check), linear warm-up 10% then cosine to 0, grad clip 1.0,
fp32 weights with bf16 autocast on CUDA, `--batch-tokens` (16,384) tokens per update at every training length
(rows = batch_tokens // ctx, one length per update). Each seed draws its own training documents and mask stream;
NTP and MEAP of one seed see the same batches in the same order.

Evaluation: teacher-forced exact match of the answer's 6 digit tokens (the space token before them counts as
prompt: it is format, and the un-fine-tuned model rarely predicts it after "Answer:"): one forward per document
(batched, no padding: the documents of a cell share one length), argmax at every answer position given the
prompt and the gold earlier digits; correct when all 6 match. Grid: distractor levels x `--eval-lengths` x depths
0/0.25/0.5/0.75/1.0, `--n-eval` (64) held-out documents per cell, the same documents for the base model (not
fine-tuned) and every (arm, seed). Also the answer-token accuracy and the unmasked next-token loss over whole
held-out documents (every token).

CPU learnability check (2026-11-29, this CPU, one NTP run): after 24 updates of 2 documents of 160 tokens (lr 5e-4,
1-3 distractors, 3 questions per document), exact match of the 7 answer tokens (space included) went from 0.000
(base) to 0.975 (40 held-out documents; answer-token accuracy 0.743 -> 0.996). Base model at 512 tokens,
digits only: exact match 0.000 (4 random-key distractors, 20 documents) and 0.050 (16 near-key, 20 documents),
digit accuracy 0.82 / 0.74: it copies digits but rarely the right first one. So the task is learnable and the
base sits near the floor; the GPU defaults add length (to 4,096) and near-key distractors to keep NTP off the
ceiling.

Rows: ours = MEAP, baseline = NTP (mean over seeds; per-seed values in parentheses), per context length, per
depth, per distractor level, all cells, the base model (vs NTP) and the unmasked validation loss; `--out` writes
every grid (exact match and token accuracy) per seed, the per-batch masked-token counts and the loss curves.

    python benchmarks/meap_niah.py --gguf-dir DIR --out meap_niah.json   # GPU; DIR: SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/meap_niah.py --smoke                               # tiny random Llama on the CPU, ~10 s
Budget on one H200 with the defaults: 2 seeds x 2 arms x 240 updates of 16,384 tokens (3.9M tokens per run,
~25-40 s at 100-150k tokens/s) plus 5 evaluations of 2,560 documents (512-4,096 tokens, 4.9M tokens, forward
only) and ~10 s of data building per seed: about 3-4 minutes.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCRIPT = "meap_niah.py"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
ARMS = ("ntp", "meap")
MEAP_RATIO = 0.15  # paper main setting (pre-training); ablations 0.05-0.2

# ------------------------------------------------------------------------------------------------- word lists
SYLLABLES = (
    "bel dor fen gar hix jun kal lom mir nov pel quor ras sil tav ulm vex wyn zar bri cas dru esk fal"
).split()
PEOPLE = (
    "Anna Boris Clara Daniel Elena Felix Greta Hugo Irene Jonas Karla Leo Maria Nina Oscar Paula Rosa Simon".split()
)
PLACES = "garden harbor kitchen library market station village valley museum forest bakery workshop".split()
OBJECTS = "basket lantern bicycle letter window blanket ladder teapot violin notebook mirror wagon umbrella".split()
ANIMALS = "cat dog horse sparrow goat rabbit fox owl donkey heron".split()
ADJS = "old quiet bright heavy narrow yellow gentle broken warm crowded empty wooden tiny noisy".split()
VERBS = "carried painted repaired found moved cleaned sold borrowed opened watched".split()
TIMES = "in the morning|after lunch|before dawn|on Sunday|in winter|last week|at noon|every evening".split("|")
WEATHER = "rain|fog|wind|snow|sunshine|thunder".split("|")
TEMPLATES = (
    "{P} {v} the {a} {o} near the {pl} {t}.",
    "The {a} {o} in the {pl} was {a2} {t}.",
    "{P} and {P2} walked to the {pl} {t}.",
    "A {a} {an} slept beside the {o} while {P} {v} the {o2}.",
    "Nobody in the {pl} remembered who {v} the {a} {o}.",
    "The {pl} felt {a} because of the {w} {t}.",
    "{P} said that the {o} belonged to the {a} {an}.",
    "When the {w} stopped, {P} {v} the {o} and went to the {pl}.",
    "Every {an} in the {a} {pl} looked at the {o}.",
    "The {o} that {P} {v} {t} was {a} and {a2}.",
)
NEEDLE = " The secret code of {key} is"
QUESTION = "\nQuestion: What is the secret code of {key}?\nAnswer:"


def filler_sentences(n: int, seed: int) -> list[str]:
    """`n` distinct-ish filler sentences (leading space) from the templates, seeded."""
    rng = np.random.default_rng(seed)

    def pick(words):
        return words[rng.integers(len(words))]

    out = []
    for _ in range(n):
        p, p2 = rng.choice(len(PEOPLE), 2, replace=False)
        o, o2 = rng.choice(len(OBJECTS), 2, replace=False)
        a, a2 = rng.choice(len(ADJS), 2, replace=False)
        text = pick(TEMPLATES).format(
            P=PEOPLE[p], P2=PEOPLE[p2], o=OBJECTS[o], o2=OBJECTS[o2], a=ADJS[a], a2=ADJS[a2], v=pick(VERBS),
            pl=pick(PLACES), t=pick(TIMES), an=pick(ANIMALS), w=pick(WEATHER),
        )  # fmt: skip
        out.append(" " + text)
    return out


def key_syllables() -> list[tuple[str, str, str]]:
    """Three-syllable made-up names from `SYLLABLES` (no syllable twice in a row: 12,696), in a fixed shuffled
    order, as syllable triples."""
    triples = [(a, b, c) for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES if a != b != c]
    order = np.random.default_rng(1234).permutation(len(triples))
    return [triples[i] for i in order]


def level_text(level: str) -> str:
    n, near = parse_level(level)
    return f"{n} {'near-key' if near else 'random-key'} distractors"


def key_names() -> list[str]:
    return ["".join(t).capitalize() for t in key_syllables()]


def parse_level(level: str) -> tuple[int, bool]:
    """An evaluation distractor level: "16" (random keys) or "16n" (near keys: sharing the target's first two
    syllables where possible, else its first syllable)."""
    near = level.endswith("n")
    count = level[:-1] if near else level
    if not count.isdigit():
        raise ValueError(f"--eval-distractors levels look like 4 or 16n, got {level!r}")
    return int(count), near


# ------------------------------------------------------------------------------------------------ documents
class NiahBuilder:
    """Token-level document builder: filler pool, needles, questions and answers as token-id lists.

    Pieces are tokenized separately and concatenated (each starts with a space or a newline, so SmolLM2's BPE gives
    the same tokens as for the whole text); the answer tokens are exactly the value's tokens in the needle.
    """

    def __init__(self, tokenizer, n_filler: int = 2000, value_digits: int = 6, seed: int = 0):
        self.tok = tokenizer
        self.value_digits = value_digits
        texts = filler_sentences(n_filler, seed)
        self.filler = [self._ids(t) for t in texts]
        self.filler_len = np.array([len(f) for f in self.filler])
        self.period = self._ids(".")
        # SmolLM2 writes " 348072" as " " + one token per digit: the answer scored is the digits (the space is
        # format, not retrieval, and the un-fine-tuned model rarely predicts it after "Answer:").
        probe = self._ids(" 0")
        self.value_skip = len(probe) - len(self._ids("0"))
        triples = key_syllables()
        n_eval = len(triples) // 5
        self.keys, self._near = {}, {}
        for split, part in (("eval", triples[:n_eval]), ("train", triples[n_eval:])):
            self.keys[split] = ["".join(t).capitalize() for t in part]
            by2, by1 = {}, {}
            for i, t in enumerate(part):
                by2.setdefault(t[:2], []).append(i)
                by1.setdefault(t[:1], []).append(i)
            self._near[split] = (part, by2, by1)
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _cached(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self._ids(text)
        return self._cache[text]

    def value_ids(self, value: int) -> list[int]:
        return self._ids(f" {value:0{self.value_digits}d}")

    def _key_indices(self, rng, split: str, n_distractors: int, near: bool) -> list[int]:
        """The target's key index, then `n_distractors` others: random, or (`near`) first those sharing the target's
        first two syllables, then its first syllable, then random."""
        names = self.keys[split]
        if not near:
            return rng.choice(len(names), 1 + n_distractors, replace=False).tolist()
        part, by2, by1 = self._near[split]
        target = int(rng.integers(len(names)))
        chosen, seen = [target], {target}
        for pool in (by2[part[target][:2]], by1[part[target][:1]]):
            for i in rng.permutation(pool).tolist():
                if len(chosen) > n_distractors:
                    return chosen
                if i not in seen:
                    chosen.append(i)
                    seen.add(i)
        while len(chosen) <= n_distractors:
            i = int(rng.integers(len(names)))
            if i not in seen:
                chosen.append(i)
                seen.add(i)
        return chosen

    def build(
        self, rng, ctx: int, depth: float, n_distractors: int, split: str, n_queries: int = 1, near: bool = False
    ) -> dict:
        """One document of exactly `ctx` tokens.

        Returns `input_ids`, `answer_start` / `answer_len` (the first question's answer: the target needle's value),
        `needle_start` (token index of the target needle) and `depth` (its token depth within the haystack span).
        """
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"`depth` must be in [0, 1], got {depth}.")
        names = self.keys[split]
        n_needles = 1 + n_distractors
        keys = [names[i] for i in self._key_indices(rng, split, n_distractors, near)]
        values = rng.integers(0, 10**self.value_digits, n_needles).tolist()
        needles = [self._cached(NEEDLE.format(key=k)) + self.value_ids(v) + self.period for k, v in zip(keys, values)]
        asked = [0] + (rng.permutation(n_needles - 1)[: max(n_queries, 1) - 1] + 1).tolist()
        tail, answer = [], None
        for q in asked:
            question = self._cached(QUESTION.format(key=keys[q]))
            value = self.value_ids(values[q])
            if answer is None:
                answer = (len(tail) + len(question) + self.value_skip, len(value) - self.value_skip)
            tail += question + value + self.period
        budget = ctx - len(tail) - sum(len(n) for n in needles)
        if budget < 1:
            raise ValueError(
                f"context {ctx} is too short for {n_needles} needles and {len(asked)} questions; raise the context "
                "length or lower --train-distractors / --eval-distractors / --train-queries."
            )
        sentences = self._filler(rng, budget)
        # Distractors at uniformly random sentence boundaries (0 .. len(sentences)); then the target at the boundary
        # (before or after the distractors already there) whose token offset in the haystack is closest to
        # depth x haystack length, so depth 0 is the first token and depth 1 directly precedes the question.
        slots = len(sentences)
        by_slot: dict[int, list[int]] = {}
        for i, j in enumerate(rng.integers(slots + 1, size=n_distractors).tolist(), start=1):
            by_slot.setdefault(j, []).append(i)
        span = budget + sum(len(n) for n in needles[1:])  # haystack tokens without the target
        best, offset = (0, 0, 0), 0  # (slot, position within the slot, token offset)
        for j in range(slots + 1):
            for k, i in enumerate([*by_slot.get(j, []), None]):
                if abs(offset - depth * span) < abs(best[2] - depth * span):
                    best = (j, k, offset)
                if i is not None:
                    offset += len(needles[i])
            if j < slots:
                offset += len(sentences[j])
        by_slot.setdefault(best[0], []).insert(best[1], 0)
        ids = []
        for j in range(slots + 1):
            for i in by_slot.get(j, []):
                ids += needles[i]
            if j < slots:
                ids += sentences[j]
        needle_start = best[2]
        answer_start = len(ids) + answer[0]
        ids += tail
        assert len(ids) == ctx, (len(ids), ctx)
        return {
            "input_ids": ids,
            "answer_start": answer_start,
            "answer_len": answer[1],
            "needle_start": needle_start,
            "depth": needle_start / span if span > 0 else 0.0,
            "key": keys[0],
            "value": values[0],
        }

    def _filler(self, rng, budget: int) -> list[list[int]]:
        """Random filler sentences totalling exactly `budget` tokens (the last one cut)."""
        guess = int(budget / self.filler_len.mean() * 1.5) + 4
        while True:
            idx = rng.integers(len(self.filler), size=guess)
            ends = np.cumsum(self.filler_len[idx])
            if ends[-1] >= budget:
                break
            guess *= 2
        n = int(np.searchsorted(ends, budget)) + 1  # sentences needed to reach the budget
        out = [self.filler[i] for i in idx[:n]]
        cut = int(ends[n - 1] - budget)
        if cut:
            out[-1] = out[-1][:-cut]
        return out


def training_batches(builder: NiahBuilder, args, seed: int) -> list[tuple[int, np.ndarray]]:
    """`args.steps` batches `(ctx, ids (rows, ctx))`: a training length per step, `batch_tokens // ctx` documents
    with uniform depth, 0..`train_distractors` distractors, near keys with probability `train_near`."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for _ in range(args.steps):
        ctx = int(args.train_lengths[rng.integers(len(args.train_lengths))])
        rows = max(1, args.batch_tokens // ctx)
        docs = [
            builder.build(rng, ctx, float(rng.random()), int(rng.integers(args.train_distractors + 1)), "train",
                          args.train_queries, near=bool(rng.random() < args.train_near))["input_ids"]
            for _ in range(rows)
        ]  # fmt: skip
        out.append((ctx, np.asarray(docs, dtype=np.int64)))
    return out


def eval_sets(builder: NiahBuilder, args) -> dict[str, list[dict]]:
    """Held-out documents per cell "level|context length|depth" (level: distractors, "n" = near keys), the same
    for every model."""
    rng = np.random.default_rng([args.eval_seed, 11])
    sets = {}
    for level in args.eval_distractors:
        n, near = parse_level(level)
        for ctx in args.eval_lengths:
            for d in DEPTHS:
                sets[cell_key(level, ctx, d)] = [
                    builder.build(rng, ctx, d, n, "eval", near=near) for _ in range(args.n_eval)
                ]
    return sets


def cell_key(level: str, ctx: int, depth: float) -> str:
    return f"{level}|{ctx}|{depth}"


# ---------------------------------------------------------------------------------------------- evaluation
def _autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def answer_exact_match(model, docs: list[dict], device, batch_tokens: int, token_accuracy: bool = False):
    """Teacher-forced exact match of each document's answer: one forward per document (batched; the documents of
    a call share one length, so no padding), argmax at every answer position, correct when all tokens match. Only
    the answer positions go through the LM head. With `token_accuracy`, also each document's fraction of correct
    answer tokens."""
    body = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    out, tokens = [], []
    rows = max(1, batch_tokens // len(docs[0]["input_ids"]))
    for i in range(0, len(docs), rows):
        chunk = docs[i : i + rows]
        ids = torch.tensor([d["input_ids"] for d in chunk], device=device)
        length = chunk[0]["answer_len"]
        if any(d["answer_len"] != length for d in chunk):
            raise ValueError("answer lengths differ within an evaluation batch")
        start = torch.tensor([d["answer_start"] for d in chunk], device=device)
        pos = start[:, None] + torch.arange(length, device=device)  # (B, L) answer token positions
        with _autocast(device):
            hidden = body(input_ids=ids, use_cache=False).last_hidden_state
            rows_ix = torch.arange(len(chunk), device=device)[:, None]
            pred = head(hidden[rows_ix, pos - 1]).argmax(-1)  # position p-1 predicts token p
        hits = pred == ids[rows_ix, pos]
        out += hits.all(-1).tolist()
        tokens += hits.float().mean(-1).tolist()
    return (out, tokens) if token_accuracy else out


@torch.no_grad()
def document_loss(model, docs: list[dict], device, batch_tokens: int) -> float:
    """Mean unmasked next-token loss (nats) over every token of the documents."""
    total, count = 0.0, 0
    rows = max(1, batch_tokens // len(docs[0]["input_ids"]))
    for i in range(0, len(docs), rows):
        ids = torch.tensor([d["input_ids"] for d in docs[i : i + rows]], device=device)
        with _autocast(device):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        n = ids.numel() - ids.shape[0]
        total, count = total + loss.item() * n, count + n
    return total / count


def evaluate(model, sets: dict, val_docs: list[dict], args, device) -> dict:
    model.eval()
    t0 = time.perf_counter()
    grid, token_grid = {}, {}
    for key, docs in sets.items():
        hits, tokens = answer_exact_match(model, docs, device, args.eval_batch_tokens, token_accuracy=True)
        grid[key], token_grid[key] = sum(hits) / len(hits), statistics.fmean(tokens)
    res = {
        "grid": grid,
        "token_accuracy_grid": token_grid,
        "token_accuracy": statistics.fmean(token_grid.values()),
        "overall": statistics.fmean(grid.values()),
        "by_distractors": {
            nd: statistics.fmean(v for k, v in grid.items() if k.startswith(f"{nd}|")) for nd in args.eval_distractors
        },  # fmt: skip
        "val_loss": document_loss(model, val_docs, device, args.batch_tokens),  # full logits: training-sized batches
        "seconds": time.perf_counter() - t0,
    }
    print(format_grid(grid, args), flush=True)
    by_nd = ", ".join(f"{level_text(nd)} {v:.3f}" for nd, v in res["by_distractors"].items())
    print(
        f"    all cells {res['overall']:.3f} ({by_nd}), answer-token accuracy {res['token_accuracy']:.3f}, "
        f"unmasked val loss {res['val_loss']:.3f}, eval {res['seconds']:.1f} s",
        flush=True,
    )
    return res


def format_grid(grid: dict, args) -> str:
    lines = []
    for nd in args.eval_distractors:
        lines.append(f"    {level_text(nd):>28}, ctx \\ depth " + " ".join(f"{d:>6}" for d in DEPTHS))
        for ctx in args.eval_lengths:
            lines.append(f"    {ctx:>43} " + " ".join(f"{grid[cell_key(nd, ctx, d)]:6.3f}" for d in DEPTHS))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ training
def make_collator(tok, arm: str, seed: int):
    from hf_plugins import DataCollatorForMEAP

    return DataCollatorForMEAP(tokenizer=tok, mode="pretrain", mask_ratio=MEAP_RATIO if arm == "meap" else 0.0,
                               seed=seed)  # fmt: skip


def train(model, tok, batches, arm: str, seed: int, args, device) -> dict:
    """One run: the batches in order through `DataCollatorForMEAP` (ratio 0.15 or 0), loss on every token."""
    torch.manual_seed(seed)
    collator = make_collator(tok, arm, seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05, fused=device.type == "cuda")
    total = len(batches)
    warmup = max(1, round(0.1 * total))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses, masked, tokens = [], [], 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step, (_, ids) in enumerate(batches):
        batch = collator([{"input_ids": row} for row in ids.tolist()])
        masked.append(collator.last_num_masked)
        if arm == "meap":
            assert collator.last_num_masked > 0, f"MEAP batch {step} masked no token"
        else:
            assert collator.last_num_masked == 0
        ids_t, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with _autocast(device):
            loss = model(input_ids=ids_t, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        tokens += ids_t.numel()
        if (step + 1) % args.log_every == 0 or step + 1 == total:
            rate = tokens / (time.perf_counter() - t0)
            print(f"    {arm} seed {seed} step {step + 1}/{total}: loss {losses[-1].item():.3f}, masked tokens in "
                  f"batch {masked[-1]} of {ids_t.numel()}, {rate:,.0f} tok/s", flush=True)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    losses = [x.item() for x in losses]
    k = max(1, len(losses) // 10)
    return {
        "steps": total,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "loss_first": statistics.fmean(losses[:k]),
        "loss_last": statistics.fmean(losses[-k:]),
        "masked_tokens_per_batch": masked,
        "masked_fraction": sum(masked) / tokens,
        "losses": [round(x, 4) for x in losses],
    }


# ----------------------------------------------------------------------------------------------------- model
def smoke_tokenizer():
    """A word-level tokenizer over this script's vocabulary (digits one per token) for the CPU smoke run."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(" ".join([*PEOPLE, *PLACES, *OBJECTS, *ANIMALS, *ADJS, *VERBS, *TIMES, *WEATHER]).split())
    for t in (*TEMPLATES, NEEDLE, QUESTION):
        words.update(t.replace("{", " {").replace(".", " ").replace("?", " ").replace(":", " ").split())
    words = sorted(w for w in words if not w.startswith("{"))
    vocab = ["<pad>", "<s>", "<|im_end|>", "<unk>", ".", "?", ":", ",", *"0123456789", *words, *key_names()]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                   unk_token="<unk>")  # fmt: skip


def load(args):
    """(model, tokenizer) with `[MASK]` added; SmolLM2-135M-Instruct, or a tiny random Llama in `--smoke`."""
    from hf_plugins import add_mask_token

    if args.smoke:
        from hf_plugins.testing import tiny_llama

        tok = smoke_tokenizer()
        model = tiny_llama(vocab_size=len(tok), max_position_embeddings=1024, pad_token_id=0, eos_token_id=2)
    else:
        if args.gguf_dir:
            os.environ["HF_PLUGINS_SMOLLM2_DIR"] = args.gguf_dir  # read by smollm2_path()
        from hf_plugins.models.smollm2 import load_smollm2

        model, tok = load_smollm2(dtype=torch.float32)
    torch.manual_seed(0)  # the resized row's initialisation draws from the global generator
    mask_id = add_mask_token(tok, model)
    return model, tok, mask_id


# ------------------------------------------------------------------------------------------------------- run
def run(args) -> dict:
    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    model, tok, mask_id = load(args)
    model.to(device)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    builder = NiahBuilder(tok, n_filler=args.n_filler, seed=args.data_seed)
    sets = eval_sets(builder, args)
    vrng = np.random.default_rng([args.eval_seed, 13])
    val_len = max(args.train_lengths)
    val_docs = [builder.build(vrng, val_len, float(vrng.random()), 4, "eval") for _ in range(args.n_val)]
    example = sets[cell_key(args.eval_distractors[0], args.eval_lengths[0], 0.5)][0]
    print(f"device {device}; [MASK] id {mask_id}; filler sentences: {len(builder.filler)} (mean "
          f"{builder.filler_len.mean():.1f} tokens); answer = {example['answer_len']} tokens", flush=True)  # fmt: skip
    print("example (depth 0.5, shortened): " + repr(tok.decode(example["input_ids"][:60]))
          + " ... " + repr(tok.decode(example["input_ids"][-40:])), flush=True)  # fmt: skip
    print("base model (not fine-tuned):", flush=True)
    results = {"device": device.type, "args": vars(args), "base": evaluate(model, sets, val_docs, args, device)}
    results["runs"] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        t0 = time.perf_counter()
        batches = training_batches(builder, args, seed)
        print(f"seed {seed}: {len(batches)} training batches built in {time.perf_counter() - t0:.1f} s", flush=True)
        for arm in args.arms:
            model.load_state_dict(init)
            print(f"  {arm} (mask ratio {MEAP_RATIO if arm == 'meap' else 0.0}), seed {seed}:", flush=True)
            stats = train(model, tok, batches, arm, seed, args, device)
            print(f"    {stats['steps']} steps in {stats['seconds']:.1f} s ({stats['tokens_per_s']:,.0f} tok/s), loss "
                  f"{stats['loss_first']:.3f} -> {stats['loss_last']:.3f}, masked fraction "
                  f"{stats['masked_fraction']:.4f}", flush=True)  # fmt: skip
            res = evaluate(model, sets, val_docs, args, device)
            results["runs"][arm].append({"seed": seed, "train": stats, **res})
    results["wall_s"] = time.perf_counter() - t_start
    return results


def _mean_text(values: list[float]) -> tuple[float, str]:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, f"{mean:.3f}"
    return mean, f"{mean:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def rows_from(res: dict, args) -> list[dict]:
    """Rows: ours = MEAP, baseline = NTP; values = mean over seeds, per-seed values in parentheses."""
    model = "tiny random Llama" if args.smoke else "SmolLM2-135M-Instruct"
    steps = res["runs"]["ntp"][0]["train"]["steps"]
    setup = (
        f"{model} FT {steps} steps x {args.batch_tokens} tok, lr {args.lr:g}, train ctx "
        f"{'/'.join(map(str, args.train_lengths))} with 0-{args.train_distractors} distractors "
        f"({args.train_near:.0%} near keys), n={args.n_eval}/cell, {len(args.seeds)} seed(s)"
    )
    rows = []

    def row(case, metric, pick, base=None):
        ours, ours_text = _mean_text([pick(r) for r in res["runs"]["meap"]])
        if base is None:
            baseline, base_text = _mean_text([pick(r) for r in res["runs"]["ntp"]])
        else:
            baseline, base_text = base, f"{base:.3f}"
        rows.append({"case": case, "metric": metric, "ours": ours, "baseline": baseline, "ours_text": ours_text,
                     "base_text": base_text, "ratio": ours / baseline if baseline else float("nan")})  # fmt: skip

    nds, ctxs = args.eval_distractors, args.eval_lengths
    levels = "/".join(map(str, nds)) + " distractor levels"

    def cells(r, nds, ctxs, depths):
        return statistics.fmean(r["grid"][cell_key(n, c, d)] for n in nds for c in ctxs for d in depths)

    metric = "answer exact match (teacher-forced), MEAP vs NTP"
    for c in ctxs:
        row(f"NIAH ctx={c}, mean over depths and {levels} ({setup})", metric,
            lambda r, c=c: cells(r, nds, [c], DEPTHS))  # fmt: skip
    for d in DEPTHS:
        row(f"NIAH depth={d}, mean over contexts and {levels} ({setup})", metric,
            lambda r, d=d: cells(r, nds, ctxs, [d]))  # fmt: skip
    for n in nds:
        row(f"NIAH {level_text(n)}, mean over contexts and depths ({setup})", metric,
            lambda r, n=n: cells(r, [n], ctxs, DEPTHS))  # fmt: skip
    row(f"NIAH all cells ({setup})", metric, lambda r: r["overall"])
    ntp_mean = statistics.fmean(r["overall"] for r in res["runs"]["ntp"])
    rows.append({"case": f"NIAH all cells, not fine-tuned model ({setup})",
                 "metric": "answer exact match, base model vs NTP", "ours": res["base"]["overall"],
                 "baseline": ntp_mean, "ours_text": f"{res['base']['overall']:.3f}", "base_text": f"{ntp_mean:.3f}",
                 "ratio": res["base"]["overall"] / ntp_mean if ntp_mean else float("nan")})  # fmt: skip
    row(f"unmasked val loss, {args.n_val} held-out docs of {max(args.train_lengths)} tokens, 4 distractors ({setup})",
        "next-token loss (nats), MEAP vs NTP", lambda r: r["val_loss"])  # fmt: skip
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny random Llama + word-level tokenizer on the CPU")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write rows and every grid per seed as JSON here")
    p.add_argument("--gguf-dir", default=None, help="directory holding SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu in --smoke)")
    p.add_argument("--seeds", type=_ints, default=[0, 1], help="comma-separated training seeds")
    p.add_argument("--arms", type=lambda t: t.split(","), default=list(ARMS), help="ntp,meap (rows need both)")
    p.add_argument("--steps", type=int, default=240, help="updates per run (equal for both arms)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per update (rows = this // ctx)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--train-lengths", type=_ints, default=[512, 1024, 2048], help="training context lengths")
    p.add_argument("--eval-lengths", type=_ints, default=[512, 1024, 2048, 4096], help="evaluation context lengths")
    p.add_argument("--train-distractors", type=int, default=16, help="training documents: uniform 0..this many")
    p.add_argument("--train-near", type=float, default=0.5, help="fraction of training documents with near keys")
    p.add_argument(
        "--eval-distractors",
        type=lambda t: [x for x in t.split(",") if x],
        default=["4", "16n"],
        help='evaluation levels, comma-separated: "4" = 4 random-key distractors, "16n" = 16 near-key ones',
    )
    p.add_argument("--train-queries", type=int, default=3, help="questions per training document")
    p.add_argument("--n-eval", type=int, default=64, help="held-out documents per (length, depth) cell")
    p.add_argument("--n-val", type=int, default=32, help="held-out documents for the unmasked validation loss")
    p.add_argument("--n-filler", type=int, default=3000, help="filler sentences in the pool")
    p.add_argument("--eval-batch-tokens", type=int, default=65536)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--data-seed", type=int, default=0, help="filler pool")
    p.add_argument("--eval-seed", type=int, default=12345, help="held-out documents")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_tokens, args.train_lengths, args.eval_lengths = 6, 512, [128], [128, 256]
        args.n_eval, args.n_val, args.n_filler, args.log_every = 4, 4, 200, 3
        args.train_distractors, args.eval_distractors = 2, ["1", "2n"]
        args.seeds, args.lr = [0], 1e-3
    for name in ("steps", "batch_tokens", "n_eval", "n_val", "n_filler", "log_every", "eval_batch_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.train_distractors < 0:
        raise ValueError("--train-distractors must be >= 0")
    if not 0.0 <= args.train_near <= 1.0:
        raise ValueError("--train-near must be in [0, 1]")
    for level in args.eval_distractors:
        parse_level(level)
    if not args.arms or set(args.arms) - set(ARMS):
        raise ValueError(f"--arms must be a comma-separated subset of {ARMS}, got {args.arms}")
    if not (args.seeds and args.train_lengths and args.eval_lengths and args.eval_distractors):
        raise ValueError("--seeds, --train-lengths, --eval-lengths and --eval-distractors need a value each")
    return args


def main(argv=None) -> int:
    import _results  # benchmarks/_results.py; imported here: tests load this file without benchmarks/ on sys.path

    args = parse_args(argv)
    t0 = time.perf_counter()
    raw = run(args)
    if set(args.arms) != set(ARMS):  # a probe of one arm: no MEAP-vs-NTP rows
        if args.out:
            _results.write_outputs([], out=args.out, payload={"rows": [], "raw": raw})
        print(f"total wall {time.perf_counter() - t0:.1f} s (one arm: no rows)", flush=True)
        return 0
    rows = rows_from(raw, args)
    device = _results.device_label(raw["device"] == "cuda", args.smoke)
    _results.report(rows, raw, SCRIPT, device, time.perf_counter() - t0, out=args.out, append=args.append, text=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
