"""benchmarks/srlm_quality.py: equal budgets per pipeline, the worker schedule, and the aggregated table."""

import json

import pytest
from _bench import load_bench  # tests/_bench.py


def test_every_pipeline_gets_the_same_updates_and_problems_per_update(tmp_path):
    """Comparable compute: with the defaults every trained pipeline takes 48 optimizer updates in all, and every
    update of every stage sees 8 problems (sft/kd: batch 8; rl: 4 accumulated micro-batches of 2 prompts x 8)."""
    bench = load_bench("srlm_quality")
    args = bench._parser().parse_args([])
    runs = bench._plan(args)
    assert len(runs) == 1 + 6 * 3 and sum(not r["stages"] for r in runs) == 1
    for run in runs:
        if not run["stages"]:
            continue
        cfg = bench._srlm_config(run, args, str(tmp_path), cuda=False)
        total = sum(getattr(cfg, kind).max_steps for kind in run["stages"])
        assert total == 48, run["pipeline"]
        for kind in run["stages"]:
            stage = getattr(cfg, kind)
            if kind == "rl":
                accum = stage.trainer_kwargs["gradient_accumulation_steps"]
                assert stage.prompts_per_step * accum == 8
                assert stage.per_device_train_batch_size == 2 * 8  # prompts x G per micro-batch
                # one generate call = 8 updates = 64 prompts x 8 completions
                gen_batch = stage.per_device_train_batch_size * stage.trainer_kwargs["steps_per_generation"]
                assert gen_batch == 512
                assert stage.temperature == 0.7 and stage.max_completion_length == 128 and stage.probe_size == 8
                assert stage.overlong_punishment == (128, 32) and stage.learning_rate == 3e-5
            else:
                assert stage.per_device_train_batch_size == 8
        assert cfg.eval_before is False and cfg.eval_size == 200


def test_pipeline_names_accept_shell_friendly_spellings():
    bench = load_bench("srlm_quality")
    args = bench._parser().parse_args(["--pipelines", "base,sft-kd-rl,KD+RL", "--seeds", "2"])
    assert [(r["pipeline"], r["seed"]) for r in bench._plan(args)] == [
        ("base", 0),
        ("SFT->KD->RL", 0),
        ("SFT->KD->RL", 1),
        ("KD->RL", 0),
        ("KD->RL", 1),
    ]


def test_schedule_runs_the_first_two_seeds_before_any_third_seed():
    """Every run goes to exactly one worker; in each worker no seed-2 run precedes a seed-0/1 run, so a deadline
    cuts third seeds first; with 13 workers for 13 first-two-seed runs, each of those starts at once."""
    bench = load_bench("srlm_quality")
    runs = bench._plan(bench._parser().parse_args([]))
    shares = bench._assign(runs, 13)
    assert sorted((r["pipeline"], r["seed"]) for s in shares for r in s) == sorted(
        (r["pipeline"], r["seed"]) for r in runs
    )
    for share in shares:
        seeds = [r["seed"] >= 2 for r in share]
        assert seeds == sorted(seeds)
        assert share[0]["seed"] < 2
    assert any(share[0]["pipeline"] == "base" for share in shares)  # the reference never waits


def _result(bench, name, seed, acc, stage_accs, steps, strict):
    """A finished run's record as a worker writes it."""
    return {"pipeline": name, "stages": bench.PIPELINES[name], "seed": seed, "steps": steps, "accuracy": acc,
            "strict_accuracy": strict, "train_tokens": 100.0, "train_seconds": 1.0, "seconds": 2.0,
            "stage_results": [{"accuracy": a} for a in stage_accs]}  # fmt: skip


def test_aggregate_means_spreads_and_rows():
    bench = load_bench("srlm_quality")
    results = [
        _result(bench, "base", 0, 0.2, [], steps=0, strict=0.1),
        _result(bench, "SFT->RL", 0, 0.3, [0.1, 0.3], steps=24, strict=0.15),
        _result(bench, "SFT->RL", 1, 0.5, [0.3, 0.5], steps=24, strict=0.25),
        {"pipeline": "RL", "stages": ["rl"], "seed": 0, "steps": 48, "error": "RuntimeError: boom"},
    ]
    table = bench.aggregate(results)
    e = table["SFT->RL"]
    assert e["accuracy"] == {"mean": 0.4, "min": 0.3, "max": 0.5, "n": 2}
    assert e["after_stage"] == [0.2, 0.4]
    assert table["RL"]["errors"] == ["RuntimeError: boom"] and "accuracy" not in table["RL"]
    rows = bench.result_rows(table, bench._parser().parse_args([]), "SmolLM2-135M-Instruct")
    assert [r["ours_text"] for r in rows] == ["0.200", "0.400 [0.300, 0.500]"]
    assert abs(rows[1]["ratio"] - 2.0) < 1e-12 and rows[1]["base_text"] == "0.200"
    assert "failed: RuntimeError: boom" in bench.text_table(table)


def _shard_run(bench, name, seed, acc):
    trained = name != "base"
    return _result(bench, name, seed, acc, [acc] if trained else [], steps=48 if trained else 0, strict=acc)


def test_merge_joins_shards_and_stopped_work_folders_of_one_protocol(tmp_path, capsys):
    """A stopped run's work folder (worker job file + per-run results) and a seed shard's --out file give one table: SFT
    over seeds 0, 1 (folder) and 2 (file) = mean of the three; unfinished (error) runs are left out."""
    bench = load_bench("srlm_quality")
    args = vars(bench._parser().parse_args([]))
    folder = tmp_path / "srlm-quality-x"
    (folder / "results").mkdir(parents=True)
    (folder / "worker0.json").write_text(json.dumps({"args": {**args, "jobs": 3}, "runs": []}))
    for name, seed, acc in (("base", 0, 0.125), ("SFT", 0, 0.6), ("SFT", 1, 0.7)):
        (folder / "results" / f"{name}-{seed}.json").write_text(json.dumps(_shard_run(bench, name, seed, acc)))
    (folder / "results" / "rl-0.json").write_text(json.dumps({"pipeline": "RL", "seed": 0, "error": "stopped"}))
    shard = {"args": {**args, "first_seed": 2, "pipelines": "SFT"}, "device": "GPU X", "runs": [
        _shard_run(bench, "SFT", 2, 0.8)]}  # fmt: skip
    (tmp_path / "s2.json").write_text(json.dumps({"rows": [], "raw": shard}))
    out = tmp_path / "merged.json"
    assert bench.main(["--merge", str(folder), str(tmp_path / "s2.json"), "--out", str(out)]) == 0
    raw = json.loads(out.read_text())["raw"]
    sft = raw["table"]["SFT"]["accuracy"]
    assert sft["n"] == 3 and sft["min"] == 0.6 and sft["max"] == 0.8 and abs(sft["mean"] - 0.7) < 1e-12
    assert raw["device"] == "GPU X" and raw["args"]["seeds"] == 3 and "3 seeds" in raw["title"]
    assert "| SFT | 48 | 0.700 [0.600, 0.800] |" in capsys.readouterr().out

    dup = {**shard, "runs": [_shard_run(bench, "SFT", 1, 0.5)]}
    (tmp_path / "dup.json").write_text(json.dumps({"rows": [], "raw": dup}))
    with pytest.raises(SystemExit, match="SFT seed 1 is also in"):
        bench.main(["--merge", str(folder), str(tmp_path / "dup.json")])
    other = {**shard, "args": {**shard["args"], "rl_lr": 1e-4}}
    (tmp_path / "other.json").write_text(json.dumps({"rows": [], "raw": other}))
    with pytest.raises(SystemExit, match="`args` differs .*rl_lr"):
        bench.main(["--merge", str(folder), str(tmp_path / "other.json")])


def test_first_seed_shards_the_seeds():
    bench = load_bench("srlm_quality")
    runs = bench._plan(bench._parser().parse_args(["--pipelines", "base,SFT", "--first-seed", "2"]))
    assert [(r["pipeline"], r["seed"]) for r in runs] == [("SFT", 2)]  # base is seed-free: in the first shard
    with pytest.raises(SystemExit, match="--first-seed must be in"):
        bench.main(["--first-seed", "3", "--smoke"])


@pytest.mark.slow
def test_smoke_run_writes_table_rows_and_rl_curves(tmp_path):
    """`--smoke`: every pipeline on a tiny random Llama in this process; the JSON has the table, the rows, and
    per-update RL curves (reward, within-group std, zero-variance share, KL to the start, ...); the plot is written."""
    pytest.importorskip("matplotlib")
    bench = load_bench("srlm_quality")
    out, plot = tmp_path / "srlm.json", tmp_path / "curves.png"
    assert bench.main(["--smoke", "--out", str(out), "--plot", str(plot)]) == 0
    payload = json.loads(out.read_text())
    table = payload["raw"]["table"]
    assert set(table) == set(bench.PIPELINES) and all("accuracy" in e for e in table.values())
    assert table["RL"]["accuracy"]["n"] == 2 and len(payload["rows"]) == len(bench.PIPELINES)
    rl_runs = [r for r in payload["raw"]["runs"] if "rl" in r["stages"]]
    for run in rl_runs:
        steps = run["stage_results"][-1]["rl"]["steps"]
        assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
        assert all(s["kl_start"] is not None and s["kl_start"] >= 0 for s in steps)
        assert any(s["reward"] is not None and s["frac_reward_zero_std"] is not None for s in steps)
    assert plot.stat().st_size > 10_000
