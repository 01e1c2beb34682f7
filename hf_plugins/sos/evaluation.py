"""Evaluate any causal LM on SoS items: greedy answers, accuracy on valid answers and on all items, the invalid
rate, tokens and seconds per answer. No retries; prompts longer than the model's context are reported as
"too long", never truncated silently.

Items are dicts with `polynomial` (text) and `label` (the released or generated label), optionally
`proved_label` (the checker's, None if undecided) and `class` / `subset` for per-class accuracy. An item with an
`error` (or without polynomial text) is recorded with its error and not sent to the model; the rest go on.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Sequence

from .parse import PolynomialParseError, parse_polynomial
from .prompts import build_prompt, parse_boxed_answer
from .sos1 import binary_label, load_sos1, read_jsonl_rows, sos1_proved_labels


__all__ = ["chat_prompt", "evaluate_sos_model", "load_eval_items", "score_answers", "surface_rule"]


def surface_rule(text: str) -> int:
    """The no-model surface-cue baseline: 0 ("not SoS") if the total degree is odd or the constant term is <= 0,
    else 1. It needs no reasoning beyond reading two coefficients, yet scores 0.84 against the proved labels of the
    released SoS1 file (0.77 against its released labels), where every SoS row has a positive constant term; on our
    generated data, whose shifts are randomised, it is near 0.5. Rejected (truncated) text is guessed 1."""
    try:
        p = parse_polynomial(text)
    except PolynomialParseError:
        return 1
    return 0 if p.degree % 2 or p.constant_term() <= 0 else 1


def _acc(records: list[dict], key: str) -> dict:
    scored = [r for r in records if r.get(key) is not None and not r.get("error")]  # errors are counted apart
    valid = [r for r in scored if r["answer"] is not None]
    correct = sum(r["answer"] == r[key] for r in valid)
    n = len(scored)
    return {
        "n": n,
        "valid": len(valid),
        "correct": correct,
        "acc_valid": correct / len(valid) if valid else 0.0,
        "acc_total": correct / n if n else 0.0,
        "invalid_rate": (n - len(valid)) / n if n else 0.0,
    }


def _confusion(records: list[dict], key: str) -> dict:
    """Counts of answers (0, 1, invalid) per true label `key` (records with an error or no label left out)."""
    out = {f"true {t}": {"0": 0, "1": 0, "invalid": 0} for t in (0, 1)}
    for r in records:
        if r.get(key) in (0, 1) and not r.get("error"):
            out[f"true {r[key]}"]["invalid" if r["answer"] is None else str(r["answer"])] += 1
    return out


def score_answers(records: list[dict]) -> dict:
    """Metrics from records with `answer` (0, 1 or None), `label`, optional `proved_label`, `class`, `tokens`,
    `seconds`, `error`. Accuracy and the confusion matrix (answers 0 / 1 / invalid per true label) are reported
    against the released labels and against the proved labels; records with an `error` (no prompt could be built)
    are left out of both and counted in `errors`."""
    out = {"released": _acc(records, "label"), "proved": _acc(records, "proved_label")}
    out["confusion"] = {"released": _confusion(records, "label"), "proved": _confusion(records, "proved_label")}
    by_class = defaultdict(list)
    for r in records:
        by_class[r.get("class") or "all"].append(r)
    out["per_class"] = {
        k: {"released": _acc(v, "label"), "proved": _acc(v, "proved_label")} for k, v in sorted(by_class.items())
    }
    toks = [r["tokens"] for r in records if r.get("tokens") is not None]
    secs = [r["seconds"] for r in records if r.get("seconds") is not None]
    out["too_long"] = sum(bool(r.get("too_long")) for r in records)
    out["errors"] = sum(bool(r.get("error")) for r in records)
    out["tokens_mean"] = statistics.fmean(toks) if toks else 0.0
    out["tokens_median"] = statistics.median(toks) if toks else 0.0
    out["seconds_mean"] = statistics.fmean(secs) if secs else 0.0
    out["seconds_median"] = statistics.median(secs) if secs else 0.0
    return out


def chat_prompt(tokenizer, polynomial: str, style: str = "reasoning", use_chat_template: bool = True) -> str:
    """The model input for `polynomial`: the user message of `style` in the tokenizer's chat template with the
    generation prompt (tokenize it with `add_special_tokens=False`), or the bare message plus a newline when there
    is no template. SFT examples must start with exactly this text for training and evaluation to agree."""
    user = build_prompt(polynomial, style)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return user + "\n"


def _batches(lengths: list[int], order: list[int], batch_size: int, max_batch_tokens: int | None, new: int):
    """Consecutive batches of `order` (sorted by length) with at most `batch_size` items and, when
    `max_batch_tokens` is set, at most that many padded tokens (prompt + `new`) each; a lone item may exceed it."""
    batch: list[int] = []
    for i in order:
        width = max([lengths[j] for j in batch] + [lengths[i]]) + new
        if batch and (len(batch) >= batch_size or (max_batch_tokens and (len(batch) + 1) * width > max_batch_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def evaluate_sos_model(
    model,
    tokenizer,
    items: Sequence[dict],
    *,
    style: str = "reasoning",
    max_new_tokens: int = 512,
    batch_size: int = 8,
    max_batch_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    use_chat_template: bool = True,
    progress: bool = False,
) -> dict:
    """Greedy answers of `model` on `items`; returns `{"metrics": score_answers(...), "records": [...]}`.

    Seconds per answer is the wall time of its generation batch divided by the batch size (model latency, not an
    API round trip as in the paper's harness). Prompts are sorted by length and batched with left padding: at
    most `batch_size` per batch and, with `max_batch_tokens`, at most that many tokens (padded prompt +
    `max_new_tokens`) per batch, so long prompts go in smaller batches. `max_prompt_tokens` defaults to the model's
    context length minus `max_new_tokens`.
    """
    import torch

    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first")
    if max_prompt_tokens is None:
        ctx = getattr(model.config, "max_position_embeddings", None) or 4096
        max_prompt_tokens = max(1, ctx - max_new_tokens)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    prompts: list[str | None] = []
    records = []
    for it in items:
        text = it.get("polynomial")
        error = it.get("error") or (
            None if isinstance(text, str) else f"no polynomial text (got {type(text).__name__})"
        )
        prompt = None if error else chat_prompt(tokenizer, text, style, use_chat_template)
        n_tok = None if prompt is None else len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        prompts.append(prompt)
        records.append(
            {
                "label": it.get("label"),
                "proved_label": it.get("proved_label"),
                "class": it.get("class") or it.get("subset"),
                "prompt_tokens": n_tok,
                "too_long": n_tok is not None and n_tok > max_prompt_tokens,
                "error": error,
                "answer": None,
                "completion": None,
                "tokens": None,
                "seconds": None,
            }
        )
    todo = [i for i, r in enumerate(records) if not r["too_long"] and not r["error"]]
    todo.sort(key=lambda i: records[i]["prompt_tokens"])  # similar lengths per batch: less padding
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    lengths = [r["prompt_tokens"] or 0 for r in records]
    batches = list(_batches(lengths, todo, batch_size, max_batch_tokens, max_new_tokens))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="sos eval", unit="batch")
    try:
        for idx in batches:
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(
                device
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / len(idx)
            new = out[:, enc["input_ids"].shape[1] :]
            for row, i in zip(new, idx):
                ids = row.tolist()
                n_new = len(ids)
                for k, t in enumerate(ids):
                    if t == tokenizer.eos_token_id or t == tokenizer.pad_token_id:
                        n_new = k
                        break
                text = tokenizer.decode(ids[:n_new], skip_special_tokens=True)
                records[i].update(completion=text, answer=parse_boxed_answer(text), tokens=n_new, seconds=dt)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return {"metrics": score_answers(records), "records": records}


def load_eval_items(path=None, *, proved: bool = False, sos1_path=None) -> list[dict]:
    """Items for `evaluate_sos_model`.

    With `path`, JSON lines from `hf-plugins sos generate` (`polynomial`, 0/1 `label`, `class`): the generator's
    certificates prove those labels, so `proved_label` is the label. A line that is not JSON, or has no polynomial
    text or 0/1 label, becomes an item with an `error`: reported per row, not evaluated. Without `path`, the
    released SoS1 file (at `sos1_path`, default `default_sos1_path()`); with `proved`, `proved_label` is the
    stored proved label of each row (`sos1_proved_labels`: the recorded whole-file checker run, no checker or
    solver at evaluation time; None for truncated rows).
    """
    if path is None:
        rows = load_sos1(sos1_path)
        labels = sos1_proved_labels(rows) if proved else [None] * len(rows)
        return [
            {"polynomial": r["polynomial"], "label": int(r["ans"]), "proved_label": pl, "class": r["label"],
             "row": r["row"]}
            for r, pl in zip(rows, labels)
        ]  # fmt: skip
    items = []
    for r in read_jsonl_rows(path):
        label = binary_label(r.get("label"))
        error = r.get("error")
        if not error and not isinstance(r.get("polynomial"), str):
            error = f"line {r['row'] + 1} has no polynomial text"
        if not error and label is None:
            error = f"line {r['row'] + 1} has label {r.get('label')!r}; expected 0 or 1"
        item = {"polynomial": r.get("polynomial"), "label": label, "proved_label": label, "class": r.get("class"),
                "row": r["row"]}  # fmt: skip
        if error:
            item["error"] = error
        items.append(item)
    return items
