"""Exact-match evaluation of a causal LM on question/answer problems (batched greedy generation).

Completions are graded with the reward functions' extractor and grader (`hf_plugins.rewards.answers`), so an
evaluation and a `correctness_reward` never disagree on the same text. Accuracy is lenient (any rule of
`extract_answer`, down to the last number) and strict (the answer is marked with `\\boxed{}` or `####`); strict is
lenient restricted to marked answers, so it can never exceed it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from hf_plugins.rewards.answers import answer_matches, extract_answer


__all__ = ["evaluate_exact_match", "generate_completions", "score_completions"]


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
    """Accuracy of the final answer of each greedy completion against `answers` (see `score_completions`).

    Returns `{"accuracy", "strict_accuracy", "correct", "strict_correct", "n", "seconds", "samples": [{question,
    answer, completion, correct, strict_correct, rule}]}`.
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
    scores = score_completions(completions, answers)
    scores["samples"] = [{"question": q, **s} for q, s in zip(questions, scores["samples"])]
    return {**scores, "seconds": time.perf_counter() - t0}


def score_completions(completions: Sequence[str], answers: Sequence) -> dict:
    """Grade `completions` against `answers` with `extract_answer` / `answer_matches`.

    Returns `{"accuracy", "strict_accuracy", "correct", "strict_correct", "n", "samples": [{answer, completion,
    correct, strict_correct, rule}]}`; `strict_correct` implies `correct`.
    """
    if len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
    samples = []
    for completion, answer in zip(completions, answers):
        match = extract_answer(completion)
        correct = answer_matches(match, answer)
        samples.append(
            {
                "answer": answer,
                "completion": completion,
                "correct": correct,
                "strict_correct": correct and answer_matches(match, answer, strict=True),
                "rule": match.rule,
            }
        )
    n = len(samples)
    correct = sum(s["correct"] for s in samples)
    strict = sum(s["strict_correct"] for s in samples)
    return {
        "accuracy": correct / n if n else 0.0,
        "strict_accuracy": strict / n if n else 0.0,
        "correct": correct,
        "strict_correct": strict,
        "n": n,
        "samples": samples,
    }
