"""Learning-rate sweeps with seeds, shardable over processes: the shared driver of the pre-training quality checks
(coe_quality.py, neurotrails_quality.py).

A script describes one training run as an object with `total_steps`, `sweep_step`, `train_to(step)` (trains up to
that step, evaluating on its own schedule, which must include `sweep_step` and `total_steps`), `record()` (a JSON
dict with `arm`, `lr`, `seed`, `steps_done`, `curve` = [{"step", <metrics>}], ...) and `close()` (frees memory).
`sweep_arm` runs an arm's sweep: every learning rate with the first seed up to `sweep_step`, the best one (lowest
`score_key` there) continues to `total_steps`, and the other seeds run at that learning rate from scratch. With a
single learning rate every seed runs in full. The continued run is an ordinary full run: every run follows the same
schedule whatever its length, so stopping at `sweep_step` and going on changes nothing.

Processes write their runs to partial JSON files (`write_partial`); `merge` reads them back, picks each arm's best
learning rate the same way (mean score at the sweep step over the seeds that reached it) and returns the runs at
that learning rate. The choice, mean [min, max] over seeds and the joining of files are `_sweep_common`'s.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from _sweep_common import best_lr, join_runs, lr_key, seed_stats


def curve_value(record: dict, step: int, key: str) -> float | None:
    """The metric `key` recorded at `step`, or None when the run has no evaluation there."""
    for point in record["curve"]:
        if point["step"] == step:
            return point.get(key)
    return None


def sweep_score(record: dict, key: str) -> float:
    """The run's metric at its sweep step; +inf when missing or not finite (a diverged run never wins)."""
    value = curve_value(record, record["sweep_step"], key)
    return value if value is not None and math.isfinite(value) else math.inf


class Deadline:
    """Wall-clock budget of a process: `expired()` after `seconds` (None: never)."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


def sweep_arm(
    arm: str, lrs: list[float], seeds: list[int], start: Callable, score_key: str, log=print, deadline=None
) -> list[dict]:
    """The records of one arm's runs (see the module docstring). `start(arm, lr, seed)` builds a run, whose
    `train_to(step, deadline)` stops early once `deadline` expired (its record then has `steps_done <
    total_steps`); no run starts after the deadline."""
    deadline = deadline or Deadline(None)
    records: list[dict] = []
    best, rest = lrs[0], list(seeds)
    if len(lrs) > 1:
        runs = {}
        for lr in lrs:
            if deadline.expired():
                log(f"{arm}: deadline reached, lr {lr:g} not run")
                break
            runs[lr] = start(arm, lr, seeds[0])
            runs[lr].train_to(runs[lr].sweep_step, deadline)
        scores = {lr: sweep_score(run.record(), score_key) for lr, run in runs.items()}
        if scores:
            best = best_lr(scores)
            listed = ", ".join(f"lr {lr_key(lr)}: {s:.4g}" for lr, s in scores.items())
            log(f"{arm}: {score_key} at step {runs[best].sweep_step}: {listed} -> lr {lr_key(best)}")
        for lr, run in runs.items():
            if lr == best:
                run.train_to(run.total_steps, deadline)
            records.append(run.record())
            run.close()
        rest = list(seeds[1:])
    for seed in rest:
        if deadline.expired():
            log(f"{arm}: deadline reached, seed {seed} not run")
            break
        run = start(arm, best, seed)
        run.train_to(run.total_steps, deadline)
        records.append(run.record())
        run.close()
    return records


def write_partial(path: str | Path, meta: dict, records: list[dict]) -> None:
    Path(path).write_text(json.dumps({**meta, "runs": records}, indent=1) + "\n")


# what may differ between the processes of one protocol: their share of the rates and seeds, and where the corpus
# folder was (its `train_sha256`, compared, identifies the data)
SHARDED = ("lrs", "seeds", "corpus")


def load_partials(paths: list[str], same: tuple[str, ...]) -> tuple[dict, list[dict]]:
    """(meta of the first file, all runs). The `same` meta keys must agree across files (same protocol; the
    settings' `lrs` and `seeds` may differ: the merged meta lists those of all runs)."""
    payloads = [json.loads(Path(path).read_text()) for path in paths]
    meta, runs = join_runs(payloads, [str(p) for p in paths], same, sharded=SHARDED)
    meta["settings"] = {
        **meta["settings"],
        "lrs": sorted({r["lr"] for r in runs}),
        "seeds": sorted({r["seed"] for r in runs}),
    }
    return meta, runs


def best_lrs(runs: list[dict], score_key: str) -> dict[str, dict]:
    """Per arm: {"lr": best, "scores": {lr: mean score at the sweep step}}. Learning rates are compared on the seeds
    that reached the sweep step at every one of them (the sweep seed), else on all their runs; diverged runs score
    +inf."""
    out: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        reached = [r for r in runs if r["arm"] == arm and r["steps_done"] >= r["sweep_step"]]
        by_lr: dict[float, dict[int, float]] = {}
        for r in reached:
            by_lr.setdefault(r["lr"], {})[r["seed"]] = sweep_score(r, score_key)
        if not by_lr:
            continue
        common = set.intersection(*(set(v) for v in by_lr.values()))
        scores = {
            lr: statistics.mean(v for seed, v in per_seed.items() if not common or seed in common)
            for lr, per_seed in sorted(by_lr.items())
        }
        out[arm] = {"lr": best_lr(scores), "scores": scores}
    return out


def merge(runs: list[dict], score_key: str) -> dict[str, dict]:
    """Per arm: the best learning rate, the sweep scores and the runs at that learning rate (full or stopped)."""
    chosen = best_lrs(runs, score_key)
    for arm, entry in chosen.items():
        entry["runs"] = [r for r in runs if r["arm"] == arm and r["lr"] == entry["lr"]]
    return chosen


def values_at(runs: list[dict], step: int, key: str) -> list[float]:
    """`key` at `step` of every run that evaluated there."""
    return [v for r in runs if (v := curve_value(r, step, key)) is not None]


def spread(values: list[float]) -> dict:
    """mean, min, max and count of one metric over seeds (`_sweep_common.seed_stats`, values as they are)."""
    return seed_stats(values, as_is=True)


def plan_steps(total: int, sweep: int, n_lrs: int, n_seeds: int) -> int:
    """Optimizer steps `sweep_arm` takes for one arm: the sweep, the continuation and the other seeds."""
    if n_lrs <= 1:
        return n_seeds * total
    return n_lrs * sweep + (total - sweep) + (n_seeds - 1) * total


# ---- what both scripts' runs and command lines share ----


class TimedRun:
    """The step loop of a run: `train_to` calls `train_step()` (one optimizer step; returns the detached training
    loss) until the target step, the deadline or divergence, and `evaluate()` (appends a point to `curve`, sets
    `diverged` on a non-finite metric) at every step of `eval_steps`. Training time excludes evaluations."""

    def __init__(self, arm: str, lr: float, seed: int, total_steps: int, eval_steps: set[int], device):
        self.arm, self.lr, self.seed, self.total_steps = arm, lr, seed, total_steps
        self.eval_steps = set(eval_steps) | {total_steps}
        self.sweep_step = min(self.eval_steps)
        self.device, self.cuda = device, device.type == "cuda"
        self.step, self.curve, self.train_s, self.diverged = 0, [], 0.0, False
        self.loss_sum, self.loss_n = None, 0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def mean_train_loss(self) -> float:
        """Mean training loss since the previous call (no host sync during training)."""
        value = (self.loss_sum / max(1, self.loss_n)).item() if self.loss_n else math.nan
        self.loss_sum, self.loss_n = None, 0
        return value

    def train_to(self, target: int, deadline: Deadline) -> None:
        self._sync()
        t0 = time.perf_counter()
        while self.step < target and not self.diverged and not deadline.expired():
            loss = self.train_step()
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.loss_n += 1
            self.step += 1
            if self.step in self.eval_steps:
                self._sync()
                self.train_s += time.perf_counter() - t0
                self.evaluate()
                t0 = time.perf_counter()
        self._sync()
        self.train_s += time.perf_counter() - t0

    def base_record(self, tokens_per_step: int, label: str) -> dict:
        tokens = self.step * tokens_per_step
        return {
            "arm": self.arm,
            "label": label,
            "lr": self.lr,
            "seed": self.seed,
            "total_steps": self.total_steps,
            "sweep_step": self.sweep_step,
            "steps_done": self.step,
            "diverged": self.diverged,
            "tokens": tokens,
            "train_s": self.train_s,
            "tokens_per_s": tokens / self.train_s if self.train_s else math.nan,
            "curve": self.curve,
        }

    def free(self, *names: str) -> None:
        """Drop the named attributes (model, optimizer) and return their memory to the device."""
        import gc

        for name in names:
            delattr(self, name)
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()


def parser(doc: str, default_arms: list[str]) -> argparse.ArgumentParser:
    """The command line both scripts share (sharding, deadline, probe, merge, outputs); they add their own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--arms", nargs="+", default=default_arms, help=f"arms to run (default {default_arms})")
    p.add_argument("--lrs", nargs="+", type=float, help="learning rates to sweep")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default 0 1); the first one runs the sweep")
    p.add_argument("--steps", type=int, help="optimizer steps per run")
    p.add_argument("--batch", type=int, help="sequences per step")
    p.add_argument("--deadline-s", type=float, help="stop training after this many seconds; unfinished runs are kept")
    p.add_argument("--probe", type=int, metavar="N", help="time N steps per arm, print ms/step and the planned total")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge partial results instead of training")
    p.add_argument("--out", help="training: partial results JSON; --merge: rows and summary JSON")
    p.add_argument("--plot", help="write the plot here (needs matplotlib)")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    return p


def settings_from(args, smoke: dict, full: dict) -> dict:
    """The protocol settings with the command line's overrides."""
    s = dict(smoke if args.smoke else full)
    for key in ("lrs", "seeds", "steps", "batch"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    for key in ("steps", "batch"):
        if s[key] < 1:
            raise ValueError(f"--{key} must be >= 1, got {s[key]}")
    return s


def train(args, make_run, score_key: str, settings: dict, log=print) -> list[dict]:
    """`--probe N`: time N steps per arm (after 3 warm-up steps) and print the planned steps; else run every arm's
    sweep (`sweep_arm`) under `--deadline-s` and return the records."""
    if args.probe:
        for arm in args.arms:
            run = make_run(arm, settings["lrs"][0], settings["seeds"][0])
            run.eval_steps = set()
            run.train_to(3, Deadline(None))
            t0 = time.perf_counter()
            run.train_to(3 + args.probe, Deadline(None))
            ms = (time.perf_counter() - t0) / args.probe * 1e3
            steps = plan_steps(run.total_steps, run.sweep_step, len(settings["lrs"]), len(settings["seeds"]))
            log(f"probe {arm}: {ms:.1f} ms/step; plan {steps} steps -> ~{steps * ms / 1e3:.0f} s without evaluations")
            run.close()
        return []
    deadline = Deadline(args.deadline_s)
    records = []
    for arm in args.arms:
        records += sweep_arm(arm, settings["lrs"], settings["seeds"], make_run, score_key, log, deadline)
    return records


def run_meta(script: str, cuda: bool, smoke: bool, **fields) -> dict:
    """The partial file's header: script, date, device, torch / transformers, and the protocol `fields`."""
    import datetime

    import _results

    return {
        "script": script,
        "date": datetime.date.today().isoformat(),
        "device": _results.device_label(cuda, smoke),
        "stack": _results.stack(),
        **fields,
    }


def report(meta: dict, runs: list[dict], args, build, plot) -> list[dict]:
    """Rows of merged runs: `build(meta, runs)` -> (summary, rows, markdown table); prints the table and the rows,
    writes `--out` (with `--merge`), `--append` (not with `--smoke`) and `--plot` (`plot(summary, meta, path)`)."""
    import _results

    summary, rows, table = build(meta, runs)
    print(table)
    lines = _results.markdown_recorded(rows, meta["script"], meta["device"], meta["stack"], meta["date"])
    print("\n".join(lines))
    if args.append and args.smoke:
        print("--append ignored with --smoke: RESULTS.md holds full-size measurements only")
    payload = {"rows": rows, "raw": {"meta": meta, "summary": summary, "runs": runs}}
    _results.write_outputs(
        lines, out=args.out if args.merge else None, payload=payload, append=args.append and not args.smoke
    )
    if args.plot:
        try:
            plot(summary, meta, args.plot)
            print(f"plot: {args.plot}")
        except ImportError as exc:
            print(f"no plot ({exc}): run --merge where matplotlib is installed")
    return rows


def check_arms(arms: list[str], known) -> None:
    unknown = [a for a in arms if a not in known]
    if unknown:
        raise ValueError(f"--arms: unknown {unknown}; choose from {list(known)}")


def merge_and_report(args, same: tuple[str, ...], build, plot) -> int:
    """`--merge`: the partial files of one protocol (their `same` meta keys agree) through `report`."""
    meta, runs = load_partials(args.merge, same=same)
    report(meta, runs, args, build, plot)
    return 0


def train_and_report(args, script: str, make_run, score_key: str, settings: dict, device, t0: float, build, plot,
                     **fields) -> int:  # fmt: skip
    """Every arm's sweep (`train`), then, unless probing, its partial file (`--out`: `run_meta` with the protocol
    `fields`) and `report`. `t0`: the process's start, for the wall time."""
    runs = train(args, make_run, score_key, settings)
    if args.probe:
        return 0
    meta = run_meta(script, device.type == "cuda", args.smoke, settings=settings, **fields)
    meta["wall_s"] = time.perf_counter() - t0
    print(f"process wall {meta['wall_s']:.1f} s", flush=True)
    if args.out:
        write_partial(args.out, meta, runs)
    report(meta, runs, args, build, plot)
    return 0
