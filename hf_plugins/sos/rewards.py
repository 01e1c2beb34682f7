"""A GRPO reward for SoS answers, in the signature TRL's `GRPOTrainer(reward_funcs=...)` calls:
`reward(prompts=..., completions=..., completion_ids=..., **dataset_columns) -> list[float | None]`.

1.0 when the last valid box equals the *checker-proved* label, 0.0 when it is wrong or invalid, and `None` when
the label is not proved (the sample is then skipped, not trained on a guess). A label that is neither 0, 1 nor
None (the string `"1"`, `2`, `True`, `1.0`) raises: it would otherwise silently make every reward None.
"""

from __future__ import annotations

import numbers

from .prompts import parse_boxed_answer


__all__ = ["completion_text", "make_sos_reward", "sos_reward"]


def completion_text(completion) -> str:
    """A completion as text: TRL passes strings (standard format) or lists of messages (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, list):
        return "".join(completion_text(m) for m in completion if not isinstance(m, dict) or m.get("role") != "user")
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def make_sos_reward(label_key: str = "proved_label", correct: float = 1.0, wrong: float = 0.0):
    """A reward function reading the proved label from the dataset column `label_key` (0, 1 or None)."""

    def sos_reward(completions, **kwargs) -> list[float | None]:
        if label_key not in kwargs:
            raise ValueError(
                f"the SoS reward needs the dataset column `{label_key}` (0, 1, or None when unproved); got columns "
                f"{sorted(kwargs)}. Build the data set with `hf_plugins.sos.sft.make_grpo_rows`."
            )
        labels = kwargs[label_key]
        if len(labels) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(labels)} labels in `{label_key}`")
        rewards: list[float | None] = []
        for i, (completion, label) in enumerate(zip(completions, labels)):
            if label is None:
                rewards.append(None)
                continue
            if not isinstance(label, numbers.Integral) or isinstance(label, bool) or label not in (0, 1):
                raise ValueError(
                    f"`{label_key}`[{i}] is {label!r} ({type(label).__name__}); SoS labels must be the integers "
                    "0 or 1, or None when unproved. Convert the column (e.g. `int(label)`) when building the data set."
                )
            answer = parse_boxed_answer(completion_text(completion))
            rewards.append(correct if answer is not None and answer == int(label) else wrong)
        return rewards

    sos_reward.__name__ = "sos_reward"
    return sos_reward


sos_reward = make_sos_reward()
