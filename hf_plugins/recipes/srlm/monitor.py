"""Per-step diagnostics of an `rl` (GRPO) stage, to see whether the stage can learn at all.

- `RewardGroupMonitor` wraps the stage's reward functions. After each scored generation batch it logs, through
  TRL's `log_metric` hook (so the values land in `trainer.state.log_history`): the mean *within-group* standard
  deviation of the weighted total reward (TRL's own `reward_std` is over the whole batch), and the share of
  completions that state an answer at all (`answers/found`) and a marked one (`answers/marked`). A group whose
  rewards are all equal has zero advantage and trains nothing; TRL logs that share as `frac_reward_zero_std`.
- `PolicyDriftCallback` measures how far the policy moved: after every optimizer step, the exact per-token
  KL(pi_start || pi_theta) over the vocabulary, averaged over the completion tokens of a fixed probe (greedy
  completions of the stage's first prompts by the starting model). TRL logs a KL only when `kl_coef` > 0, and
  then to its reference model on the current samples.
- `rl_step_table` joins both, and TRL's per-step metrics, into one row per optimizer step for the stage report.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from transformers import TrainerCallback

from hf_plugins.rewards.answers import MARKED_RULES, extract_answer
from hf_plugins.rewards.math import completion_text


__all__ = ["RL_STEP_KEYS", "PolicyDriftCallback", "RewardGroupMonitor", "build_probe", "rl_step_table"]

# report name -> key in TRL's log history (or ours)
RL_STEP_KEYS = {
    "reward": "reward",
    "reward_std_batch": "reward_std",
    "reward_std_in_group": "groups/reward_std",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "correct": "rewards/correctness_reward/mean",
    "answer_found": "answers/found",
    "answer_marked": "answers/marked",
    "completion_length": "completions/mean_length",
    "truncated": "completions/clipped_ratio",
    "clip_ratio": "clip_ratio/region_mean",
    "kl_ref": "kl",
    "entropy": "entropy",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
}


class _Recorded:
    """A reward function that hands its outputs to the monitor; keeps the wrapped function's `__name__` (TRL's
    metric names)."""

    def __init__(self, monitor: RewardGroupMonitor, index: int, func: Callable):
        self.monitor, self.index, self.func = monitor, index, func
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, *args, **kwargs):
        out = self.func(*args, **kwargs)
        self.monitor._collect(self.index, out, kwargs)
        return out


class _RecordedAsync(_Recorded):
    """The same for an `async` reward function (TRL awaits those together)."""

    async def __call__(self, *args, **kwargs):
        out = await self.func(*args, **kwargs)
        self.monitor._collect(self.index, out, kwargs)
        return out


def _is_async(func) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


class RewardGroupMonitor:
    """Wraps `reward_funcs` (weights `weights`, groups of `num_generations`); `wrapped()` are the functions to give
    to `GRPOTrainer`. `batches` keeps one dict of statistics per scored generation batch."""

    def __init__(self, reward_funcs: Sequence[Callable], weights: Sequence[float], num_generations: int):
        if len(reward_funcs) != len(weights):
            raise ValueError(f"{len(reward_funcs)} reward functions but {len(weights)} weights")
        self.funcs, self.weights, self.num_generations = list(reward_funcs), list(weights), num_generations
        self.batches: list[dict] = []
        self._outputs: dict[int, list] = {}

    @staticmethod
    def supports(reward_funcs: Sequence) -> bool:
        """Only reward *functions* can be wrapped: a reward model (a module or a model id) is scored by TRL itself."""
        return all(callable(fn) and not isinstance(fn, torch.nn.Module) for fn in reward_funcs)

    def wrapped(self) -> list[_Recorded]:
        return [(_RecordedAsync if _is_async(fn) else _Recorded)(self, i, fn) for i, fn in enumerate(self.funcs)]

    def _collect(self, index: int, out: list, kwargs: dict) -> None:
        self._outputs[index] = list(out)
        if len(self._outputs) < len(self.funcs):
            return
        outputs, self._outputs = self._outputs, {}
        stats = self.statistics([outputs[i] for i in range(len(self.funcs))], kwargs.get("completions") or [])
        state = kwargs.get("trainer_state")
        self.batches.append({"step": getattr(state, "global_step", None), **stats})
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for key in ("groups/reward_std", "answers/found", "answers/marked"):
                if not math.isnan(stats[key]):
                    log_metric(key, stats[key])

    def statistics(self, outputs: list[list], completions: Sequence) -> dict:
        """Weighted total reward per completion (None-aware, as TRL), then per group of `num_generations`."""
        n = len(outputs[0])
        totals = []
        for j in range(n):
            parts = [w * o[j] for w, o in zip(self.weights, outputs) if o[j] is not None]
            totals.append(sum(parts) if parts else math.nan)
        g = self.num_generations
        stds, zero = [], 0
        for start in range(0, n - n % g, g):
            group = [t for t in totals[start : start + g] if not math.isnan(t)]
            if len(group) < 2:
                continue
            mean = sum(group) / len(group)
            std = math.sqrt(sum((t - mean) ** 2 for t in group) / (len(group) - 1))  # unbiased, as TRL's nanstd
            stds.append(std)
            zero += math.isclose(std, 0.0, abs_tol=1e-12)
        matches = [extract_answer(completion_text(c)) for c in completions]
        valid = [t for t in totals if not math.isnan(t)]
        return {
            "reward": sum(valid) / len(valid) if valid else math.nan,
            "groups/reward_std": sum(stds) / len(stds) if stds else math.nan,
            "groups/frac_zero_std": zero / len(stds) if stds else math.nan,
            "answers/found": sum(m.value is not None for m in matches) / len(matches) if matches else math.nan,
            "answers/marked": sum(m.rule in MARKED_RULES and m.value is not None for m in matches) / len(matches)
            if matches
            else math.nan,
        }


@torch.no_grad()
def build_probe(model, tokenizer, prompt_texts: Sequence[str], max_new_tokens: int) -> dict:
    """Greedy completions of `prompt_texts` (already chat-formatted) by `model`: `input_ids`, `attention_mask`
    and `target_mask` (True where a logit predicts a completion token)."""
    old_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        device = next(model.parameters()).device
        enc = tokenizer(list(prompt_texts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    prompt_len = enc["input_ids"].shape[1]
    completion = out[:, prompt_len:]
    # completion tokens up to and including the first eos
    is_eos = completion == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    completion_mask = ~after_eos
    attention = torch.cat([enc["attention_mask"], completion_mask.long()], dim=1)
    target = torch.zeros_like(attention, dtype=torch.bool)
    target[:, prompt_len - 1 : -1] = completion_mask  # logit at position t predicts token t + 1
    return {"input_ids": out, "attention_mask": attention, "target_mask": target}


class PolicyDriftCallback(TrainerCallback):
    """Exact KL(pi_start || pi_theta) per completion token of a fixed `probe` (`build_probe`), after every optimizer
    step; `records` holds `{"step", "kl_start"}`. The starting log-probabilities are kept for the probe's
    completion positions only (probe size x completion length x vocabulary floats)."""

    def __init__(self, probe: dict):
        self.probe = probe
        self.records: list[dict] = []
        self._start_logp: torch.Tensor | None = None

    @torch.no_grad()
    def _logprobs(self, model) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            logits = model(
                input_ids=self.probe["input_ids"].to(device), attention_mask=self.probe["attention_mask"].to(device)
            ).logits
        finally:
            model.train(was_training)
        return torch.log_softmax(logits[self.probe["target_mask"].to(device)].float(), dim=-1)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._start_logp = self._logprobs(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._start_logp is None or self._start_logp.numel() == 0:
            return
        logp = self._logprobs(model)
        kl = (self._start_logp.exp() * (self._start_logp - logp)).sum(-1).mean().item()
        self.records.append({"step": state.global_step, "kl_start": kl})


def rl_step_table(log_history: list[dict], drift: Sequence[dict] = ()) -> list[dict]:
    """One row per optimizer step: TRL's metrics under the names of `RL_STEP_KEYS` (None where a step did not log
    one, e.g. reward metrics on updates that reuse an earlier generation batch) and `kl_start`."""
    kl = {r["step"]: r["kl_start"] for r in drift}
    rows = []
    for entry in log_history:
        if "step" not in entry or "loss" not in entry and "reward" not in entry:
            continue
        row = {"step": entry["step"]}
        row.update({name: entry.get(key) for name, key in RL_STEP_KEYS.items()})
        row["kl_start"] = kl.get(entry["step"])
        rows.append(row)
    return rows
