"""What every learning-rate sweep of the quality checks shares, whatever its protocol: `_sweep.py` (full runs at
every rate, one file per run), `_lr_sweep.py` (every rate to an early step, the best one continued; partial files
per process) and `meap_quality.py` (full runs, shard files). Each chooses an arm's rate from validation scores
(`best_lr`), reports mean [min, max] over the seeds at that rate (`seed_stats`, `spread_text`), compares ours with a
baseline (`compare_row`, `ratio`), lists the sweep (`sweep_text`) and joins result files of one protocol
(`join_runs`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable


def lr_key(lr: float) -> str:
    """A learning rate as the sweeps print and name it (6 significant digits, as `f"{lr:g}"`)."""
    return f"{lr:.6g}"


def _worst_if_not_finite(value, sign: float = 1.0) -> float:
    value = math.nan if value is None else float(value)
    return sign * value if math.isfinite(value) else math.inf


def best_lr(scores: dict, *, higher: bool = False, ties: dict | None = None) -> float | None:
    """The learning rate (key of `scores`) with the lowest score, or the highest with `higher`; a missing or
    non-finite score (a diverged run) is the worst. Equal scores go to the lower `ties` value (lower is better),
    then to the first rate in `scores`' order. None when `scores` is empty."""
    sign = -1.0 if higher else 1.0
    ties = ties or {}
    key = lambda lr: (_worst_if_not_finite(scores[lr], sign), _worst_if_not_finite(ties.get(lr)))  # noqa: E731
    return min(scores, key=key) if scores else None


def seed_stats(values: list, *, keep_values: bool = False, as_is: bool = False) -> dict:
    """`mean`, `min`, `max` of one metric over seeds and their count `n`. By default (`_sweep.py`, `meap_quality.py`)
    all three are NaN when there is no value or one is missing or not finite (a diverged run), and the mean is
    `statistics.fmean`; `as_is` (`_lr_sweep.py`): the values as they are (a NaN one makes the mean NaN), NaN only
    without values, and the exactly rounded `statistics.mean`. `keep_values`: the values too."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if as_is and values:
        out = {"mean": statistics.mean(values), "min": min(values), "max": max(values)}
    elif not as_is and finite and len(finite) == len(values):
        out = {"mean": statistics.fmean(finite), "min": min(finite), "max": max(finite)}
    else:
        out = {"mean": math.nan, "min": math.nan, "max": math.nan}
    if keep_values:
        out["values"] = values
    out["n"] = len(values)
    return out


def spread_text(
    s: dict, digits: int = 4, *, fmt: Callable[[float], str] | None = None, one_value: bool = False
) -> str:
    """`mean [min, max]` of `seed_stats`, numbers with `digits` decimals or through `fmt`; "n/a" without values;
    `one_value`: a single seed's value alone."""
    if not s["n"]:
        return "n/a"
    fmt = fmt or (lambda x: f"{x:.{digits}f}")
    if one_value and s["n"] == 1:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} [{fmt(s['min'])}, {fmt(s['max'])}]"


def ratio(ours, base) -> float:
    """ours / base; NaN when either is missing or not finite, or the baseline is 0."""
    if ours is None or base is None or not (math.isfinite(ours) and math.isfinite(base)) or base == 0:
        return math.nan
    return ours / base


def compare_row(case: str, metric: str, ours: dict, base: dict, text: Callable[[dict], str] = spread_text) -> dict:
    """A comparison row of two `seed_stats`: the means, their ratio, and `text` of each (RESULTS.md cells)."""
    row = {"case": case, "metric": metric, "ours": ours["mean"], "baseline": base["mean"]}
    return {**row, "ratio": ratio(ours["mean"], base["mean"]), "ours_text": text(ours), "base_text": text(base)}


def sweep_text(scores: dict, chosen: float | None = None, *, fmt: Callable, sep: str = "; ") -> str:
    """`lr: score` for every rate in `scores`' order, the `chosen` one starred."""
    return sep.join(f"{lr_key(lr)}: {fmt(v)}" + ("*" if lr == chosen else "") for lr, v in scores.items())


def join_runs(payloads: list[dict], names: list[str], same: tuple[str, ...], sharded: tuple[str, ...] = ()):
    """(the first payload without its `runs`, the runs of every payload in order). The `same` keys must be equal in
    every payload (the protocol), but for the `sharded` keys inside them (what processes split it by)."""

    def protocol(value):
        return {k: v for k, v in value.items() if k not in sharded} if isinstance(value, dict) else value

    if not payloads:
        raise ValueError("--merge needs at least one result file")
    meta, runs = {k: v for k, v in payloads[0].items() if k != "runs"}, []
    for name, data in zip(names, payloads):
        for key in same:
            have, want = protocol(data.get(key)), protocol(meta.get(key))
            if have != want:
                both = isinstance(have, dict) and isinstance(want, dict)
                diff = sorted(k for k in {**have, **want} if have.get(k) != want.get(k)) if both else [have, want]
                raise ValueError(
                    f"{name}: `{key}` differs from {names[0]} (different {key} settings: {diff}); merge only the "
                    "files of one protocol"
                )
        runs += data["runs"]
    return meta, runs
