"""benchmarks/_sweep.py: learning-rate sweeps with seeds, on a synthetic objective whose best rate is known."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from _bench import load_file  # tests/_bench.py


BENCH = Path(__file__).parents[1] / "benchmarks"

# A quality script in miniature: validation value (log2(lr / center))^2 + 0.01 * seed^2, so the best rate is the
# grid point nearest `center`; the test metric is the validation value + 1. Run as a script by the --jobs workers.
SCRIPT = f"""
import argparse, math, os, sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import _sweep

CENTER = {{"ours": 4e-3, "base": 1e-3}}
FAIL = os.environ.get("SWEEP_TEST_FAIL")  # "arm:lr" raises once per process


def run_unit(group, arm, lr, seed, args):
    if FAIL == f"{{arm}}:{{_sweep.lr_key(lr)}}":
        raise RuntimeError("out of memory (synthetic)")
    with open(Path(args.work_dir) / "calls.txt", "a") as f:
        f.write(f"{{group}} {{arm}} {{_sweep.lr_key(lr)}} {{seed}}\\n")
    v = math.log2(lr / CENTER[arm]) ** 2 + 0.01 * seed**2
    return {{"val": v, "test": v + 1.0, "curve": [[1, v + 2.0], [2, v]], "device": "synthetic", "stack": "none"}}


PLAN = _sweep.Plan(
    script="synthetic.py", path=Path(__file__).resolve(),
    groups={{"g": {{"ours": [1e-3, 2e-3, 4e-3], "base": [1e-3, 2e-3, 4e-3]}}}},
    ours="ours", select="val", select_label="validation value", metrics=lambda g: [("test", "test value")],
    case=lambda g: f"synthetic group {{g}}",
)


def main(argv):
    p = argparse.ArgumentParser()
    _sweep.add_arguments(p, PLAN)
    return _sweep.run(PLAN, p.parse_args(argv), run_unit, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture
def synthetic(tmp_path):
    path = tmp_path / "synthetic.py"
    path.write_text(SCRIPT)
    return load_file(path, "synthetic_sweep")


def _calls(work):
    return (work / "calls.txt").read_text().split("\n")[:-1]


def test_edge_optimum_is_extended_then_seeded_at_the_chosen_rate(synthetic, tmp_path):
    """ours' best grid rate (4e-3) is the top edge: 8e-3 is added, 4e-3 stays best; base's (1e-3) is the bottom
    edge: 5e-4 is added. Seeds 1 and 2 then run at the chosen rates, and nothing else runs."""
    work = tmp_path / "w"
    assert synthetic.main(["--work-dir", str(work), "--no-merge"]) == 0
    assert sorted(_calls(work)) == sorted(
        [f"g ours {lr} 0" for lr in ("0.001", "0.002", "0.004", "0.008")] + ["g ours 0.004 1", "g ours 0.004 2"]
        + [f"g base {lr} 0" for lr in ("0.001", "0.002", "0.004", "0.0005")] + ["g base 0.001 1", "g base 0.001 2"]
    )  # fmt: skip
    assert synthetic.main(["--work-dir", str(work), "--no-merge"]) == 0  # a finished run is not repeated
    assert len(_calls(work)) == 12


def test_merge_reports_mean_min_max_over_the_seeds_and_the_whole_sweep(synthetic, tmp_path):
    work = tmp_path / "w"
    plot = tmp_path / "docs" / "img" / "synthetic.png"
    argv = ["--work-dir", str(work), "--plot", str(plot), "--snippet", str(tmp_path / "s.md")]
    assert synthetic.main(argv) == 0
    out = json.loads((work / "summary.json").read_text())
    comparison, sweep = out["rows"]
    # test value at the chosen rate = 1 + 0.01 * seed^2 for both arms: 1, 1.01, 1.04
    assert comparison["ours_text"] == comparison["base_text"] == "1.017 [1, 1.04]"
    assert comparison["ratio"] == pytest.approx(1.0)
    assert comparison["metric"] == "test value, mean [min, max], ours vs base"
    assert "lr chosen on validation: ours 0.004, base 0.001; seeds 0,1,2 / 0,1,2" in comparison["case"]
    assert sweep["ours_text"] == "0.001: 4; 0.002: 1; 0.004: 0*; 0.008: 1"
    assert sweep["base_text"] == "0.0005: 1; 0.001: 0*; 0.002: 1; 0.004: 4"
    assert len(out["records"]) == 12 and all(r["curve"] for r in out["records"])
    assert out["lines"][0].startswith("| ") and "| synthetic.py | synthetic | none |" in out["lines"][0]
    text = (tmp_path / "s.md").read_text()
    assert "| ours | 0.001: 4; 0.002: 1; 0.004: 0*; 0.008: 1 | 0.004 | 0, 1, 2 | 1.017 [1, 1.04] |" in text
    assert "edge" not in text  # both optima are interior after the extension
    if importlib.util.find_spec("matplotlib"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "](img/synthetic.png)" in text  # linked from the docs pages' folder


def test_without_extension_an_edge_optimum_is_flagged(synthetic, tmp_path):
    work = tmp_path / "w"
    assert synthetic.main(["--work-dir", str(work), "--extend", "0", "--seeds", "0", "1", "--plot", ""]) == 0
    text = (work / "synthetic.md").read_text()
    assert "- ours: the chosen rate is at the edge of the rates swept" in text
    assert "- base: the chosen rate is at the edge of the rates swept" in text
    assert len(_calls(work)) == 8  # 2 arms x (3 rates + 1 seed)


def test_a_failed_run_is_recorded_skipped_and_retried(synthetic, tmp_path, monkeypatch):
    work = tmp_path / "w"
    monkeypatch.setattr(synthetic, "FAIL", "base:0.002")
    assert synthetic.main(["--work-dir", str(work), "--no-merge"]) == 1
    errors = list((work / "errors").glob("*.json"))
    assert len(errors) == 1 and "out of memory" in json.loads(errors[0].read_text())["error"]
    assert "g base 0.002 0" not in _calls(work) and "g base 0.001 2" in _calls(work)  # the lane went on
    monkeypatch.setattr(synthetic, "FAIL", None)
    before = len(_calls(work))
    assert synthetic.main(["--work-dir", str(work), "--no-merge"]) == 0
    assert _calls(work)[before:] == ["g base 0.002 0"]


def test_jobs_workers_write_the_same_runs_as_one_process(synthetic, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    assert synthetic.main(["--work-dir", str(one), "--no-merge"]) == 0
    res = subprocess.run(
        [sys.executable, str(tmp_path / "synthetic.py"), "--arms", "ours", "base", "--work-dir", str(many), "--jobs", "2",
         "--plot", ""],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in (many / "logs").iterdir()) == ["g__base.log", "g__ours.log"]

    def load(root):
        return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in ("seconds", "date")}
                for p in (root / "runs").glob("*.json")}  # fmt: skip

    assert load(one) == load(many) and len(load(one)) == 12
    assert json.loads((many / "summary.json").read_text())["rows"][0]["ours_text"] == "1.017 [1, 1.04]"


def test_selection_prefers_higher_when_asked_breaks_ties_and_never_picks_a_diverged_run():
    sys.path.insert(0, str(BENCH))
    import _sweep

    plan = _sweep.Plan(script="x.py", path=BENCH, groups={}, ours="a", select="acc", select_label="accuracy",
                       metrics=lambda g: [], case=str, higher_is_better=frozenset({"acc"}),
                       tie_break="loss")  # fmt: skip
    runs = [{"lr": 1e-3, "acc": 0.5, "loss": 2.0}, {"lr": 2e-3, "acc": 0.5, "loss": 1.0},
            {"lr": 4e-3, "acc": math.nan, "loss": 0.1}, {"lr": 8e-3, "acc": 0.25, "loss": 0.5}]  # fmt: skip
    assert _sweep.best_lr(plan, runs) == 2e-3
    plan.higher_is_better = frozenset()
    assert _sweep.best_lr(plan, runs) == 8e-3  # lowest accuracy now; the NaN run is still last
