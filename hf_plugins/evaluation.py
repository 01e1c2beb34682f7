"""Exact-match evaluation of a causal LM on question/answer problems (batched greedy generation)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from hf_plugins.rewards.answers import numbers_equal


__all__ = ["evaluate_exact_match", "generate_completions"]


def _prompts(tokenizer, questions: Sequence[str], use_chat_template: bool) -> list[str]:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions
        ]
    return [f"Question: {q}\nAnswer:" for q in questions]


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    use_chat_template: bool = True,
    progress: bool = False,
) -> list[str]:
    """Greedy completions for `questions`, batched with left padding; the prompt is stripped off."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first")
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    prompts = _prompts(tokenizer, questions, use_chat_template)
    outputs: list[str] = []
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generating", unit="batch")
    try:
        for start in batches:
            chunk = prompts[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


def evaluate_exact_match(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    use_chat_template: bool = True,
    progress: bool = False,
) -> dict:
    """Accuracy of the final number in each greedy completion against `answers`.

    Returns `{"accuracy", "correct", "n", "seconds", "samples": [{question, answer, completion, correct}]}`.
    """
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    t0 = time.perf_counter()
    completions = generate_completions(
        model,
        tokenizer,
        questions,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        use_chat_template=use_chat_template,
        progress=progress,
    )
    samples = [
        {"question": q, "answer": a, "completion": c, "correct": numbers_equal(c, a)}
        for q, a, c in zip(questions, answers, completions)
    ]
    correct = sum(s["correct"] for s in samples)
    n = len(samples)
    return {
        "accuracy": correct / n if n else 0.0,
        "correct": correct,
        "n": n,
        "seconds": time.perf_counter() - t0,
        "samples": samples,
    }
