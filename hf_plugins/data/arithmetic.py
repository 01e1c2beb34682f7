"""Seeded arithmetic word problems with exact integer answers: the embedded default task.

Each problem is a short story (a starting quantity, then 1..N operations), a step-by-step solution, and a
GSM8K-style final line (`#### 42`). Difficulty knobs: number of operations and number sizes. The test split
is drawn from its own random stream and never shares a question with the training split.

Views (`Problem.view(name)`, `make_dataset(..., view=name)`):
- "conversational": `{"messages": [user question, assistant solution]}` (TRL's SFTTrainer, chat models)
- "prompt_completion": `{"prompt": [user], "completion": [assistant]}` (loss on the answer only in TRL)
- "text": `{"text": "Question: ...\\nAnswer: ..."}` (plain causal-LM training)
- "qa": `{"question", "solution", "answer"}` (evaluation, rewards)
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field


__all__ = ["ArithmeticConfig", "Problem", "generate_problems", "make_dataset", "vocabulary"]

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Max", "Nora", "Omar"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards", "eggs", "stickers"]
VIEWS = ("conversational", "prompt_completion", "text", "qa")

# (story sentence, solution step). {n}: operand, {p}: previous total, {v}: new total, {name}, {item}.
TEMPLATES = {
    "add": [
        ("Then {name} buys {n} more {item}.", "{name} buys {n} more: {p} + {n} = {v}."),
        ("A friend gives {name} {n} {item}.", "A friend gives {n}: {p} + {n} = {v}."),
    ],
    "sub": [
        ("Then {name} gives away {n} {item}.", "{name} gives away {n}: {p} - {n} = {v}."),
        ("{name} loses {n} {item}.", "{name} loses {n}: {p} - {n} = {v}."),
    ],
    "mul": [
        ("Then the number of {item} becomes {n} times as large.", "It becomes {n} times as large: {p} * {n} = {v}."),
    ],
    "div": [
        (
            "{name} splits the {item} into {n} equal groups and keeps one group.",
            "{name} keeps one of {n} equal groups: {p} / {n} = {v}.",
        ),
    ],
}


@dataclass
class ArithmeticConfig:
    """Knobs of the problem generator.

    Args:
        seed: seed of both splits (train and test use separate streams derived from it).
        num_train / num_test: split sizes (unique questions).
        min_ops / max_ops: number of operations after the starting quantity (difficulty).
        max_value: largest starting quantity and largest operand of + and -.
        max_factor: largest operand of * and /.
        operations: subset of ("add", "sub", "mul", "div").
    """

    seed: int = 0
    num_train: int = 2000
    num_test: int = 200
    min_ops: int = 1
    max_ops: int = 3
    max_value: int = 50
    max_factor: int = 6
    operations: tuple[str, ...] = field(default=("add", "sub", "mul", "div"))

    def __post_init__(self):
        self.operations = tuple(self.operations)
        if self.num_train < 0:
            raise ValueError(f"`num_train` must be >= 0, got {self.num_train}")
        if self.num_test < 0:
            raise ValueError(f"`num_test` must be >= 0, got {self.num_test}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= `min_ops` <= `max_ops`, got min_ops={self.min_ops}, max_ops={self.max_ops}")
        if self.max_value < 2:
            raise ValueError(f"`max_value` must be >= 2, got {self.max_value}")
        if self.max_factor < 2:
            raise ValueError(f"`max_factor` must be >= 2, got {self.max_factor}")
        bad = [op for op in self.operations if op not in TEMPLATES]
        if bad or not self.operations:
            raise ValueError(f"`operations` must be a non-empty subset of {tuple(TEMPLATES)}, got {self.operations}")


@dataclass
class Problem:
    question: str
    steps: list[str]
    answer: int

    @property
    def solution(self) -> str:
        return "\n".join([*self.steps, f"#### {self.answer}"])

    def plain_text(self) -> str:
        return f"Question: {self.question}\nAnswer: {self.solution}"

    def view(self, name: str) -> dict:
        if name == "conversational":
            return {
                "messages": [
                    {"role": "user", "content": self.question},
                    {"role": "assistant", "content": self.solution},
                ]
            }
        if name == "prompt_completion":
            return {
                "prompt": [{"role": "user", "content": self.question}],
                "completion": [{"role": "assistant", "content": self.solution}],
            }
        if name == "text":
            return {"text": self.plain_text()}
        if name == "qa":
            return {"question": self.question, "solution": self.solution, "answer": self.answer}
        raise ValueError(f"unknown view {name!r}; choose one of {VIEWS}")

    def to_dict(self) -> dict:
        return asdict(self)


def _one_problem(rng: random.Random, cfg: ArithmeticConfig) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, cfg.max_value)
    story = [f"{name} has {value} {item}."]
    steps = [f"{name} starts with {value} {item}."]
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        ops = list(cfg.operations)
        if value < 1:
            ops = [op for op in ops if op == "add"] or ops
        op = rng.choice(ops)
        if op == "add":
            n = rng.randint(1, cfg.max_value)
            new = value + n
        elif op == "sub" and value >= 1:
            n = rng.randint(1, value)
            new = value - n
        elif op == "mul":
            n = rng.randint(2, cfg.max_factor)
            new = value * n
        else:  # "div", or "sub" with nothing left: fall back to a divisor of the current value
            divisors = [d for d in range(2, cfg.max_factor + 1) if value % d == 0 and value > 0]
            if not divisors:
                op, n = "add", rng.randint(1, cfg.max_value)
                new = value + n
            else:
                op, n = "div", rng.choice(divisors)
                new = value // n
        sentence, step = rng.choice(TEMPLATES[op])
        fmt = {"name": name, "item": item, "n": n, "p": value, "v": new}
        story.append(sentence.format(**fmt))
        steps.append(step.format(**fmt))
        value = new
    story.append(f"How many {item} does {name} have now?")
    return Problem(question=" ".join(story), steps=steps, answer=value)


def _stream(cfg: ArithmeticConfig, split: str, count: int, exclude: set[str]) -> list[Problem]:
    rng = random.Random(f"hf_plugins-arithmetic-{split}-{cfg.seed}")
    out, seen = [], set(exclude)
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(
                f"could not draw {count} unique {split} problems with these knobs; raise `max_value` or `max_ops`"
            )
        p = _one_problem(rng, cfg)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def generate_problems(cfg: ArithmeticConfig | None = None, split: str = "train") -> list[Problem]:
    """The problems of `split` ("train" or "test"); deterministic given the config."""
    cfg = cfg or ArithmeticConfig()
    if split == "train":
        test = _stream(cfg, "test", cfg.num_test, set()) if cfg.num_test else []
        return _stream(cfg, "train", cfg.num_train, {p.question for p in test})
    if split == "test":
        return _stream(cfg, "test", cfg.num_test, set())
    raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")


def make_dataset(cfg: ArithmeticConfig | None = None, split: str = "train", view: str = "conversational"):
    """A `datasets.Dataset` of one split in one view (see the module docstring)."""
    from datasets import Dataset

    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    rows = [p.view(view) for p in generate_problems(cfg, split)]
    return Dataset.from_list(rows)


def vocabulary() -> set[str]:
    """Every word the templates can produce (digits excluded), for tokenizers built in code."""
    import re

    words: set[str] = set(NAMES) | set(ITEMS)
    text = " ".join(s for pairs in TEMPLATES.values() for pair in pairs for s in pair)
    text += " has starts with How many does have now ? Question : Answer #### equal groups"
    words.update(w for w in re.findall(r"[A-Za-z]+", text) if w not in {"name", "item", "n", "p", "v"})
    return words
