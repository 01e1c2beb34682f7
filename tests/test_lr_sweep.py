"""benchmarks/_lr_sweep.py: the sweep driver of the pre-training quality checks, with scripted runs (and the
mean [min, max] over seeds of benchmarks/_sweep_common.py that it reports)."""

import json
import math
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import _lr_sweep as sweep  # noqa: E402
import _sweep_common as common  # noqa: E402


SCORE = {1e-3: 3.0, 3e-3: 2.0, 1e-2: math.nan}  # the loss every run of an lr reports (1e-2 diverges)


class ScriptedRun:
    """A run whose validation loss is SCORE[lr] + seed / 100 at every evaluation; counts the steps it takes."""

    taken: list = []

    def __init__(self, arm, lr, seed, total=10, sweep_step=4):
        self.arm, self.lr, self.seed, self.total_steps, self.sweep_step = arm, lr, seed, total, sweep_step
        self.step, self.curve, self.closed = 0, [], False

    def train_to(self, target, deadline):
        while self.step < target and not deadline.expired():
            self.step += 1
            ScriptedRun.taken.append((self.arm, self.lr, self.seed, self.step))
            if self.step in (self.sweep_step, self.total_steps):
                self.curve.append({"step": self.step, "loss": SCORE[self.lr] + self.seed / 100})

    def record(self):
        return {"arm": self.arm, "lr": self.lr, "seed": self.seed, "steps_done": self.step, "diverged": False,
                "total_steps": self.total_steps, "sweep_step": self.sweep_step, "curve": list(self.curve)}  # fmt: skip

    def close(self):
        self.closed = True


@pytest.fixture(autouse=True)
def _reset():
    ScriptedRun.taken = []


def test_sweep_continues_only_the_best_lr_and_runs_the_other_seeds_at_it():
    lrs, seeds = [1e-3, 3e-3, 1e-2], [0, 1, 2]
    records = sweep.sweep_arm("a", lrs, seeds, ScriptedRun, "loss", log=lambda *_: None)
    by = {(r["lr"], r["seed"]): r["steps_done"] for r in records}
    # every lr to the sweep step with seed 0; the best (3e-3; NaN never wins) to the end; seeds 1, 2 at 3e-3
    assert by == {(1e-3, 0): 4, (3e-3, 0): 10, (1e-2, 0): 4, (3e-3, 1): 10, (3e-3, 2): 10}
    assert len(ScriptedRun.taken) == sweep.plan_steps(10, 4, len(lrs), len(seeds)) == 3 * 4 + 6 + 2 * 10
    # the continued run stepped 1..10 once each (no restart)
    assert [s for a, lr, seed, s in ScriptedRun.taken if (lr, seed) == (3e-3, 0)] == list(range(1, 11))


def test_one_lr_runs_every_seed_in_full():
    records = sweep.sweep_arm("a", [1e-3], [0, 1], ScriptedRun, "loss", log=lambda *_: None)
    assert [(r["seed"], r["steps_done"]) for r in records] == [(0, 10), (1, 10)]
    assert sweep.plan_steps(10, 4, 1, 2) == len(ScriptedRun.taken) == 20


def test_expired_deadline_starts_nothing():
    records = sweep.sweep_arm("a", [1e-3, 3e-3], [0, 1], ScriptedRun, "loss", lambda *_: None, sweep.Deadline(-1.0))
    assert records == [] and ScriptedRun.taken == []


def test_merge_compares_lrs_on_the_sweep_seed_only():
    """The chosen lr also has seeds the others lack; comparing all runs would mix seeds (here seed 1 scores 2.5 at
    3e-3, which would make 3e-3 lose to 1e-3 on a mean over seeds 0-1 against seed 0 alone)."""
    runs = [
        {"arm": "a", "lr": 1e-3, "seed": 0, "steps_done": 4, "sweep_step": 4, "curve": [{"step": 4, "loss": 2.2}]},
        {"arm": "a", "lr": 3e-3, "seed": 0, "steps_done": 9, "sweep_step": 4, "curve": [{"step": 4, "loss": 2.0}]},
        {"arm": "a", "lr": 3e-3, "seed": 1, "steps_done": 9, "sweep_step": 4, "curve": [{"step": 4, "loss": 2.5}]},
    ]
    chosen = sweep.merge(runs, "loss")["a"]
    assert chosen["lr"] == 3e-3 and chosen["scores"] == {1e-3: 2.2, 3e-3: 2.0}
    assert [r["seed"] for r in chosen["runs"]] == [0, 1]


def test_partials_merge_across_lr_and_seed_shards_but_not_across_protocols(tmp_path):
    meta = {"script": "x", "settings": {"steps": 10, "lrs": [1e-3], "seeds": [0]}, "model": {"h": 8}}
    run = {"arm": "a", "lr": 1e-3, "seed": 0, "steps_done": 10, "sweep_step": 4, "curve": []}
    sweep.write_partial(tmp_path / "a.json", meta, [run])
    other = {**meta, "settings": {"steps": 10, "lrs": [3e-3], "seeds": [1]}}
    sweep.write_partial(tmp_path / "b.json", other, [{**run, "lr": 3e-3, "seed": 1}])
    merged, runs = sweep.load_partials(
        [str(tmp_path / "a.json"), str(tmp_path / "b.json")], same=("settings", "model")
    )
    assert len(runs) == 2 and merged["settings"] == {"steps": 10, "lrs": [1e-3, 3e-3], "seeds": [0, 1]}
    json.dumps(merged)
    sweep.write_partial(tmp_path / "c.json", {**meta, "model": {"h": 16}}, [run])
    with pytest.raises(ValueError, match="`model` differs"):
        sweep.load_partials([str(tmp_path / "a.json"), str(tmp_path / "c.json")], same=("settings", "model"))


def test_spread_text():
    s = sweep.spread([1.0, 2.0, 4.5])
    assert s == {"mean": 2.5, "min": 1.0, "max": 4.5, "n": 3}
    assert common.spread_text(s, 2) == "2.50 [1.00, 4.50]" and common.spread_text(sweep.spread([])) == "n/a"


def test_best_lr_and_seed_stats_rules():
    """The choice and the seed summary every sweep shares (benchmarks/_sweep_common.py), on hand-derived cases."""
    nan = math.nan
    assert common.best_lr({1e-3: nan, 3e-3: 2.0, 1e-2: 3.0}) == 3e-3  # a diverged rate never wins, even listed first
    assert common.best_lr({1e-3: 0.5, 3e-3: nan, 1e-2: 0.7}, higher=True) == 1e-2
    assert common.best_lr({1e-3: 2.0, 3e-3: 2.0}, ties={1e-3: 5.0, 3e-3: 4.0}) == 3e-3
    assert common.best_lr({1e-3: 2.0, 3e-3: 2.0}) == 1e-3 and common.best_lr({}) is None
    strict = common.seed_stats([1.0, nan], keep_values=True)
    assert all(math.isnan(strict[k]) for k in ("mean", "min", "max")) and strict["n"] == 2
    assert strict["values"][0] == 1.0 and list(strict) == ["mean", "min", "max", "values", "n"]
    as_is = sweep.spread([2.0, nan])
    assert math.isnan(as_is["mean"]) and as_is["min"] == 2.0 and as_is["n"] == 2
    assert common.spread_text(common.seed_stats([0.25]), fmt=str, one_value=True) == "0.25"
    assert common.sweep_text({1e-3: 1.5, 3e-3: 1.25}, 3e-3, fmt=str) == "0.001: 1.5; 0.003: 1.25*"


def test_partials_of_one_corpus_merge_wherever_its_folder_was(tmp_path):
    """The corpus folder is where a process found the data; the data's hash is what must agree."""
    data = {"corpus": "/a/corpus", "train_sha256": "ab12", "val_tokens": 64}
    meta = {"script": "x", "settings": {"steps": 10, "lrs": [1e-3], "seeds": [0]}, "data": data}
    run = {"arm": "a", "lr": 1e-3, "seed": 0, "steps_done": 10, "sweep_step": 4, "curve": []}
    sweep.write_partial(tmp_path / "a.json", meta, [run])
    sweep.write_partial(tmp_path / "b.json", {**meta, "data": {**data, "corpus": "/b/c"}}, [{**run, "seed": 1}])
    _, runs = sweep.load_partials([str(tmp_path / "a.json"), str(tmp_path / "b.json")], same=("settings", "data"))
    assert [r["seed"] for r in runs] == [0, 1]
    sweep.write_partial(tmp_path / "c.json", {**meta, "data": {**data, "train_sha256": "cd34"}}, [run])
    with pytest.raises(ValueError, match="`data` differs"):
        sweep.load_partials([str(tmp_path / "a.json"), str(tmp_path / "c.json")], same=("settings", "data"))
