"""Teachers for sequence-level KD: a programmatic teacher for the arithmetic task, and sampling from any causal
LM with rejection of wrong answers (the paper's KD data are teacher traces filtered by correctness)."""

from __future__ import annotations

import re
from fractions import Fraction

import torch

from hf_plugins.data.arithmetic import Problem
from hf_plugins.rewards.math import is_correct


__all__ = ["ArithmeticTeacher", "sample_teacher_solutions"]

_START_RE = re.compile(r"starts with (\d+)")
_STEP_RE = re.compile(r"(-?\d+) ([-+*/]) (\d+) = (-?\d+)")
_OPS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}


class ArithmeticTeacher:
    """Exact step-by-step solutions of `hf_plugins.data.arithmetic` problems, in a style unlike the SFT data.

    The SFT solutions narrate each step ("Ben buys 5 more: 12 + 5 = 17.") and end with `#### 17`; this teacher
    numbers the steps, spells the operation, recomputes every result with exact fractions and ends with
    `\\boxed{17}`:

        Start: 12.
        Step 1: 12 plus 5 is 12 + 5 = 17.
        So the answer is \\boxed{17}.

    It raises `ValueError` if its own computation disagrees with the problem's answer (it never emits a wrong
    trace), so sequence KD with it keeps every problem.
    """

    name = "arithmetic"

    def solve(self, problem: Problem) -> str:
        start = _START_RE.search(problem.steps[0]) if problem.steps else None
        if start is None:
            raise ValueError(f"cannot read the starting quantity of problem {problem.question!r}")
        value = Fraction(int(start.group(1)))
        lines = [f"Start: {value}."]
        for i, step in enumerate(problem.steps[1:], 1):
            m = _STEP_RE.search(step)
            if m is None:
                raise ValueError(f"cannot read step {step!r} of problem {problem.question!r}")
            op, n = m.group(2), Fraction(int(m.group(3)))
            new = {"+": value + n, "-": value - n, "*": value * n, "/": value / n}[op]
            lines.append(f"Step {i}: {value} {_OPS[op]} {n} is {value} {op} {n} = {new}.")
            value = new
        if value != problem.answer:
            raise ValueError(
                f"teacher computed {value} but the problem's answer is {problem.answer}: {problem.question!r}"
            )
        lines.append(f"So the answer is \\boxed{{{value}}}.")
        return "\n".join(lines)

    def solutions(self, problems: list[Problem]) -> list[tuple[Problem, str]]:
        return [(p, self.solve(p)) for p in problems]


@torch.no_grad()
def sample_teacher_solutions(
    model,
    tokenizer,
    problems: list[Problem],
    *,
    samples_per_problem: int = 4,
    temperature: float = 0.7,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[list[tuple[Problem, str]], dict]:
    """Sample k solutions per problem from an LM teacher, keep those whose final answer is correct, dedupe.

    Returns `(kept, stats)`; `kept` is a list of `(problem, solution_text)`; stats count sampled / kept / solved.
    Uses the teacher's own tokenizer and chat template, so the teacher may have any vocabulary.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the teacher's tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token`")
    torch.manual_seed(seed)
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    kept: list[tuple[Problem, str]] = []
    sampled = 0
    solved = set()
    try:
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            if getattr(tokenizer, "chat_template", None):
                prompts = [
                    tokenizer.apply_chat_template(
                        [{"role": "user", "content": p.question}], tokenize=False, add_generation_prompt=True
                    )
                    for p in chunk
                ]
            else:
                prompts = [f"Question: {p.question}\nAnswer:" for p in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=1.0,
                top_k=0,
                num_return_sequences=samples_per_problem,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, problem in enumerate(chunk):
                seen = set()
                for text in texts[j * samples_per_problem : (j + 1) * samples_per_problem]:
                    sampled += 1
                    text = text.strip()
                    if text in seen or not is_correct(text, problem.answer):
                        continue
                    seen.add(text)
                    kept.append((problem, text))
                    solved.add(problem.question)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    stats = {"sampled": sampled, "kept": len(kept), "problems": len(problems), "problems_solved": len(solved)}
    return kept, stats
