"""`benchmarks/scaling_bench.py --smoke`: tiny models in 1 and 2 CPU processes (gloo), every arm of the GPU run
(throughput repeats, scaling efficiency, parity with one process, a 2-process checkpoint resumed in one)."""

import json
import os
import sys

import pytest


BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def scaling(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(BENCH)
    import _results
    import scaling_bench

    monkeypatch.setattr(_results, "RESULTS", tmp_path / "RESULTS.md")

    def run(*extra):
        out = tmp_path / "out.json"
        code = scaling_bench.main(["--smoke", "--repeats", "2", "--append", "--out", str(out), *extra])
        assert not (tmp_path / "RESULTS.md").exists()  # smoke rows never reach RESULTS.md
        return code, json.loads(out.read_text())

    return run


def _check(payload, cases, modes):
    rows = {(r["case"].split(" (")[0], r["case"].split("(")[1].split(",")[0], r["metric"]): r for r in payload["rows"]}
    for case in cases:
        for mode in modes:
            eff = next(r for (c, m, metric), r in rows.items() if (c, m) == (case, mode) and "efficiency" in metric)
            assert "2 GPUs" in eff["case"] and ", 2 repeats" in eff["case"]
            ours, base, ratio = eff["ours"], eff["baseline"], eff["ratio"]
            assert ours["n"] == base["n"] == ratio["n"] == 2 and ratio["lo"] <= ratio["median"] <= ratio["hi"]
            assert ratio["lo"] > 0
            parity = [r for (c, m, metric), r in rows.items() if (c, m) == (case, mode) and "loss diff" in metric]
            assert len(parity) == 2 and all(r["ours"] < 1e-4 for r in parity), parity  # fp32: equal up to rounding
    runs = payload["raw"]["runs"]
    assert all(r["ok"] for r in runs)
    assert {r["world"] for r in runs if r["arm"] == "throughput"} == {1, 2}
    assert {r["arm"] for r in runs} == {"throughput", "parity", "single", "resumed"}


def test_smoke_one_case(scaling):
    code, payload = scaling("--cases", "stable_spam", "--modes", "fsdp2")
    assert code == 0
    _check(payload, ["stable_spam"], ["fsdp2"])


@pytest.mark.slow
def test_smoke_every_case(scaling):
    from _dist_harness import CASES

    code, payload = scaling()
    assert code == 0
    _check(payload, CASES, ["ddp", "fsdp2"])


def test_one_process_arm_alone(scaling):
    """`--nproc 1` (one GPU available): throughput rows only, no efficiency or parity."""
    code, payload = scaling("--nproc", "1", "--cases", "lora", "--modes", "ddp")
    assert code == 0
    metrics = {r["metric"] for r in payload["rows"]}
    assert metrics == {"tokens/s (all GPUs)", "peak memory per GPU, GiB"}
    assert sys.modules["scaling_bench"]  # imported from benchmarks/
