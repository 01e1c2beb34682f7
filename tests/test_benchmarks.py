"""benchmarks/: the shared repeats summary and row format, the RESULTS.md reader and its superseded-rows table, the
README's generated headline table, every `*_bench.py --smoke`, and the headline runner."""

import importlib
import json
import math
import shutil
import statistics
import sys
import textwrap
from pathlib import Path

import pytest


BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Imports a module of benchmarks/ as the scripts see each other (the folder first on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


# ------------------------------------------------------------------------------------------ repeats and cells


def test_spread_is_the_median_and_range_of_the_repeats(bench):
    r = bench("_results")
    s = r.spread([3.0, 1.0, 10.0, 2.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        r.spread([])


def test_row_ratio_pairs_the_repeats(bench):
    """Two repeat lists give the spread of the per-repeat ratios, not the ratio of the medians (here 4/3)."""
    r = bench("_results")
    row = r.row("c", "m", [2.0, 4.0, 6.0], [1.0, 4.0, 3.0])
    assert (row["ratio"].median, row["ratio"].lo, row["ratio"].hi) == (2.0, 1.0, 2.0)
    assert row["ours"].median == 4.0 and row["baseline"].median == 3.0
    assert r.row("c", "m", [1.0, 2.0, 3.0], 4.0)["ratio"] == 0.5  # a fixed baseline (a goal): medians
    assert math.isnan(r.row("c", "m", [1.0], [0.0])["ratio"])  # undefined, never a division error
    assert math.isnan(r.row("c", "m", 1.0, None)["ratio"])


def test_cells_read_back_what_rows_write(bench):
    r = bench("_results")
    assert r.fmt(r.Spread(187.5, 185.0, 190.12, 3)) == "187.5 [185, 190.1]"
    assert r.fmt(r.Spread(0.5, 0.5, 0.5, 1)) == "0.5"
    assert (r.fmt(12345.6), r.fmt(8798208), r.fmt(None), r.fmt(math.nan)) == ("12,346", "8,798,208", "-", "-")
    assert r.cell_value(r.fmt(r.spread([1.0e5, 2.5e5, 1.5e5]))) == (150000.0, (100000.0, 250000.0))
    assert r.cell_value("0.92 [0.86, 0.97]") == (0.92, (0.86, 0.97))
    assert r.cell_value("1.276e+05") == (127600.0, None)
    assert r.cell_value("-") is None and r.cell_value("n/a") is None


# ------------------------------------------------------------------------------------- RESULTS.md, superseded


RESULTS = """\
# results

## Superseded rows

| date | script | case | metric | ours | superseded by | reason |
| --- | --- | --- | --- | --- | --- | --- |
| 2026-01-02 | x_bench.py | case A | * | 3.0 | 2026-01-03 | a bug |
| 2026-01-01 | y_bench.py | * | * | * | 2026-01-03 | old code |

## Rows

| date | script | device | torch / transformers | case | metric | ours | baseline | ratio |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| 2026-01-01 | x_bench.py | GPU | 2 / 5 | case A | ms, ours vs stock | 1.0 | 2.0 | 0.5 |
| 2026-01-02 | x_bench.py | GPU | 2 / 5 | case A, 3 repeats | ms, ours vs stock | 2.0 [1.9, 2.2] | 2.0 | 1.0 [0.9, 1.1] |
| 2026-01-02 | x_bench.py | GPU | 2 / 5 | case A | ms, ours vs stock | 3.0 | 2.0 | 1.5 |
| 2026-01-02 | x_bench.py | GPU | 2 / 5 | case AB | ms, ours vs stock | 4.0 | 2.0 | 2.0 |
| 2026-01-01 | y_bench.py | GPU | 2 / 5 | case A | ms, ours vs stock | 5.0 | 2.0 | 2.5 |
"""


def test_superseded_entries_retire_the_rows_they_name(bench, tmp_path):
    r = bench("_results")
    path = tmp_path / "RESULTS.md"
    path.write_text(RESULTS)
    rows, superseded = r.read_results(path)
    assert len(rows) == 5 and len(superseded) == 2
    assert [x.ours for x in r.current_rows(path)] == ["1.0", "2.0 [1.9, 2.2]", "4.0"]


def test_results_md_parses_and_every_superseded_entry_names_a_row(bench):
    r = bench("_results")
    rows, superseded = r.read_results()
    assert len(rows) > 500
    for s in superseded:
        assert any(s.matches(x) for x in rows), f"RESULTS.md:{s.line} names no row"
        assert s.by >= s.date and s.reason


def test_headline_takes_the_latest_current_row_of_a_case(bench, tmp_path):
    r, h = bench("_results"), bench("headline")
    path = tmp_path / "RESULTS.md"
    path.write_text(RESULTS)
    fig = h.Figure("X", "x_bench.py", "case A", r"ms, ours vs stock", "{ratio:.2f}x stock")
    picked = h.pick(fig, r.current_rows(path))
    # the superseded 1.5 row is later but retired; "case AB" starts with the pattern too but comes later still
    assert picked.ours == "4.0"
    fig = h.Figure("X", "x_bench.py", r"case A(, \d+ repeats)?$", r"ms, ours vs stock", "{ratio:.2f}x stock")
    picked = h.pick(fig, r.current_rows(path))
    assert picked.ours == "2.0 [1.9, 2.2]"
    assert h.line(fig, picked) == "| X | 1.00x stock | 3 repeats: [0.9, 1.1] | case A, 3 repeats | GPU | 2026-01-02 |"
    with pytest.raises(LookupError):
        h.pick(h.Figure("X", "z_bench.py", "case A", "ms", "{ratio}"), r.current_rows(path))


def test_readme_headline_table_is_generated_from_results(bench):
    """The README's headline table is the one headline.py generates from RESULTS.md: edit RESULTS.md, then run
    `python benchmarks/headline.py --write`."""
    assert bench("headline").main(["--check"]) == 0


def test_headline_check_fails_when_a_newer_row_arrives(bench, tmp_path, monkeypatch, capsys):
    r, h = bench("_results"), bench("headline")
    readme, results = tmp_path / "README.md", tmp_path / "RESULTS.md"
    shutil.copy(h.README, readme)
    shutil.copy(r.RESULTS, results)
    monkeypatch.setattr(h, "README", readme)
    monkeypatch.setattr(r, "RESULTS", results)
    newer = "| 2099-01-01 | coe_bench.py | NVIDIA H100 80GB HBM3 | 2.13 / 5.25 | same compute: CoE C=2 K=4 vs Qwen3-MoE K=8; 64 experts x 512, H=1024, 8 layers, B=8, T=2048, bfloat16, grouped_mm, fwd+bwd, 3 repeats | tokens/s, CoE vs Qwen3-MoE | 1.3e+05 [1.2e+05, 1.4e+05] | 1.2e+05 [1.1e+05, 1.3e+05] | 1.083 [1.05, 1.1] |\n"  # fmt: skip
    with results.open("a") as f:
        f.write(newer)
    assert h.main(["--check"]) == 1
    assert "headline.py --write" in capsys.readouterr().err
    assert h.main(["--write"]) == 0 and h.main(["--check"]) == 0
    assert "| CoE | C=2 K=4: 1.08x the tokens/s of transformers' Qwen3-MoE K=8 | 3 repeats: [1.05, 1.1] |" in readme.read_text()  # fmt: skip


# ------------------------------------------------------------------------------------------ the smoke runs

SMOKES = ["stable_spam_bench", "lift_bench", "seft_bench", "alphadecay_bench", "coe_bench", "coe_autocast_bench", "lns_bench", "neurotrails_bench", "meap_bench"]  # fmt: skip
EXTRAS = {  # the optional arms, in the slow test
    "lift_bench": ["--shapes", "1x16,2x32"],
    "seft_bench": ["--pruning", "--cache-off"],
    "alphadecay_bench": ["--refresh-variants", "--checkpointing", "on"],
    "coe_bench": ["--memory-pair"],
    "neurotrails_bench": ["--all-arms"],
    "meap_bench": ["--all-cases"],
}


def _smoke(name, bench, tmp_path, monkeypatch, extra=()) -> list[dict]:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)  # meap_bench sets them at import; restored after the test
    r = bench("_results")
    monkeypatch.setattr(r, "RESULTS", tmp_path / "RESULTS.md")
    module = bench(name)
    assert module.main(["--smoke", "--repeats", "2", "--append", "--out", str(tmp_path / "out.json"), *extra]) == 0
    assert not (tmp_path / "RESULTS.md").exists()
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert rows and all(", 2 repeats" in row["case"] for row in rows)
    repeated = [row for row in rows if isinstance(row["ours"], dict)]
    assert repeated and all(row["ours"]["n"] == 2 for row in repeated)
    for row in repeated:
        assert row["ours"]["lo"] <= row["ours"]["median"] <= row["ours"]["hi"]
    return rows


@pytest.mark.parametrize("name", SMOKES)
def test_bench_smoke_writes_rows_of_repeats(name, bench, tmp_path, monkeypatch, one_thread):
    """Every benchmark runs on the CPU with --smoke; its rows carry the repeat count; --append is refused for a
    smoke run (RESULTS.md holds full-size measurements only)."""
    _smoke(name, bench, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXTRAS))
def test_bench_smoke_optional_arms(name, bench, tmp_path, monkeypatch, one_thread):
    """The optional arms add rows to the default ones."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    default = _smoke(name, bench, tmp_path / "a", monkeypatch)
    extra = _smoke(name, bench, tmp_path / "b", monkeypatch, EXTRAS[name])
    assert {r["metric"] for r in default} <= {r["metric"] for r in extra} and len(default) < len(extra)


def test_lift_smoke_ratio_is_the_median_of_paired_repeats(bench, tmp_path, one_thread):
    bench("_results")
    assert bench("lift_bench").main(["--smoke", "--repeats", "3", "--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    lift, full = out["raw"]["lift"]["B2xT32"]["ms"], out["raw"]["full"]["B2xT32"]["ms"]
    row = next(x for x in out["rows"] if x["metric"] == "ms/step, LIFT vs full FT")
    assert row["ratio"]["median"] == pytest.approx(statistics.median(a / b for a, b in zip(lift, full)))
    assert row["ours"]["median"] == pytest.approx(statistics.median(lift))


@pytest.mark.slow
def test_sos_bench_smoke(bench, tmp_path):
    bench("_results")
    assert bench("sos_bench").main(["--smoke", "--repeats", "2", "--out", str(tmp_path / "o.json")]) == 0
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert any(r["metric"] == "checker s/poly (median)" and r["ours"]["n"] == 2 for r in rows)


# ------------------------------------------------------------------------------------------- the runner


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_runner_keeps_going_after_a_failure_and_collects_rows(bench, tmp_path):
    rb = bench("run_benchmarks")
    ok = _script(tmp_path, "ok_bench.py", """\
        import sys
        print("some output")
        print("| 2026-01-01 | ok_bench.py | CPU | - | args " + " ".join(sys.argv[1:]) + " | m | 1 | 2 | 0.5 |")
    """)  # fmt: skip
    crash = _script(tmp_path, "crash_bench.py", "raise SystemExit('boom')\n")
    cases = [rb.Case("crash", crash, budget_s=30), rb.Case("ok", ok, budget_s=30)]
    log = rb.Log(tmp_path / "logs")
    results = rb.run_cases(cases, log, smoke=True, repeats=3, deadline_s=0)
    assert [r.status for r in results] == ["failed (exit 1)", "ok"]
    assert results[1].rows == ["| 2026-01-01 | ok_bench.py | CPU | - | args --repeats 3 --smoke | m | 1 | 2 | 0.5 |"]
    assert (tmp_path / "logs" / "rows.md").read_text() == results[1].rows[0] + "\n"
    text = (tmp_path / "logs" / "run.log").read_text()
    assert "boom" in text and "### failed (exit 1)" in text and "some output" in text


def test_runner_skips_what_does_not_fit_and_kills_what_overruns(bench, tmp_path):
    rb = bench("run_benchmarks")
    sleep = _script(tmp_path, "sleep_bench.py", "import time\ntime.sleep(60)\n")
    ok = _script(tmp_path, "ok_bench.py", "pass\n")
    cases = [
        rb.Case("big", ok, budget_s=5, need_gib=62),
        rb.Case("slow", sleep, budget_s=1),
        rb.Case("late", ok, budget_s=500),
    ]
    results = rb.run_cases(cases, rb.Log(tmp_path), smoke=False, repeats=3, deadline_s=400, gpu=("NVIDIA H100 80GB HBM3", 40.0))  # fmt: skip
    big, slow, late = results
    assert big.status.startswith("skipped: needs 62 GiB") and "NVIDIA H100 80GB HBM3 has 40 GiB free" in big.status
    assert slow.status == "timed out after 2 s" and slow.failed and slow.wall_s < 30
    assert late.status.startswith("skipped:") and "400-s deadline" in late.status and not late.failed


def test_runner_cases_are_the_headline_scripts_most_important_first(bench):
    rb = bench("run_benchmarks")
    assert [c.name for c in rb.CASES[:4]] == ["stable_spam", "alphadecay", "lift", "seft"]
    assert {c.script for c in rb.CASES} == {f.script for f in bench("headline").FIGURES}
    assert sum(c.budget_s for c in rb.CASES) <= 420  # one H100, 7 minutes
    assert all((BENCH / c.script).is_file() for c in rb.CASES)


@pytest.mark.slow
def test_runner_smoke_runs_every_headline_case(bench, tmp_path):
    rb = bench("run_benchmarks")
    assert rb.main(["--smoke", "--repeats", "2", "--log-dir", str(tmp_path)]) == 0
    scripts = {line.split(" | ")[1] for line in (tmp_path / "rows.md").read_text().splitlines()}
    assert scripts == {c.script for c in rb.CASES}


def test_runner_command_files_run_in_parallel_per_gpu(bench, tmp_path):
    rb = bench("run_benchmarks")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(f"# comment\n{sys.executable} -c \"import os; print('| 2026-01-01 | a | GPU ' + os.environ['CUDA_VISIBLE_DEVICES'] + ' | - | c | m | 1 | 1 | 1 |')\"\n\n")  # fmt: skip
    b.write_text("exit 3\n")
    assert rb.main(["--commands", str(a), str(b), "--log-dir", str(tmp_path / "logs")]) == 1
    assert (tmp_path / "logs" / "rows.md").read_text() == "| 2026-01-01 | a | GPU 0 | - | c | m | 1 | 1 | 1 |\n"
    assert "failed (exit 3)" in (tmp_path / "logs" / "run.log").read_text()


def test_full_size_rows_of_lift_and_seft_replace_the_headline_figures(bench, tmp_path):
    """Rows the GPU run will append (full-size case names, with repeats) are what the README's figures pick next."""
    r, h = bench("_results"), bench("headline")
    arm = {"B8xT2048": {"ms": [200.0, 210.0, 205.0], "peak_gib": 50.0}, "state_bytes": 2**26, "trainable": 8798208}
    full = {**arm, "B8xT2048": {"ms": [200.0] * 3, "peak_gib": 52.0}}
    lift = {
        **arm,
        "B8xT2048": {"ms": [204.0, 210.0, 206.0], "peak_gib": 50.0},
        "first_selection_s": 1.5,
        "eigh_s": [1.4, 1.5, 1.6],
        "randomized_s": [0.8] * 3,
    }
    lift.update(overlap_randomized_vs_eigh=0.2, overlap_eigh_vs_exact_svd_block0=1.0)
    res = {
        "device": "cuda",
        "r": 16,
        "shapes": [(8, 2048)],
        "lift": lift,
        "lift_cache": arm,
        "lora": arm,
        "full": full,
    }
    rows = r.markdown(bench("lift_bench")._rows(res, smoke=False, repeats=3), "lift_bench.py", "NVIDIA H100 80GB HBM3")
    cyc = {"step_ms": [190.0] * 3, "full_ms": [200.0] * 3, "plain_ms": [180.0] * 3, "window_ms": [185.0] * 3}
    seft = {**cyc, "last_and_cycle_ms": [400.0] * 3, "first": {"last_and_cycle_ms": 450.0}, "peak_gib": 49.0}
    base = {"ms": [200.0] * 3, "peak_gib": 52.0, "trainable": 8798208}
    raw = {"device": "cuda", "batch": [8, 2048], "calib": [16, 512], "r": 16, "pruning_s": {"wanda": [0.3]}}
    raw.update(seft={**seft, "trainable": 8798208}, full=base, lora=base)
    rows += r.markdown(
        bench("seft_bench")._rows(raw, smoke=False, repeats=3), "seft_bench.py", "NVIDIA H100 80GB HBM3"
    )
    results = tmp_path / "RESULTS.md"
    results.write_text(r.RESULTS.read_text() + "\n".join(rows) + "\n")
    current = r.current_rows(results)
    new = {row.line for row in current if row.device == "NVIDIA H100 80GB HBM3"}
    for fig in h.FIGURES:
        if fig.script in ("lift_bench.py", "seft_bench.py"):
            assert h.pick(fig, current).line in new, fig
    step = h.line(h.FIGURES[0], h.pick(h.FIGURES[0], current))
    assert step.startswith("| LIFT r=16 | step time 1.03x full FT's (default settings) | 3 repeats: [1.02, 1.05] |")
