"""benchmarks/coe_quality.py: its tokenisation, the paper's schedule, sweep continuation, and the CPU smoke run
sharded into two processes' files and merged."""

import json

import pytest
import torch
from _bench import load_bench  # tests/_bench.py


bench = load_bench("coe_quality")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


_DATA = {}


def _ctx(**overrides):
    s = {**bench.SMOKE, **overrides}
    key = (s["steps"], s["batch"])
    if key not in _DATA:
        _DATA[key] = bench.make_data(s)
    return {
        "settings": s,
        "model": bench.SMOKE_MODEL,
        "data": _DATA[key],
        "arms": bench.arms(4),
        "device": torch.device("cpu"),
    }


def test_encode_gives_the_tiny_tokenizers_ids(tiny_tok):
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    cfg = ArithmeticConfig(seed=3, num_train=200, num_test=0, **bench.DATA)
    texts = [p.plain_text() for p in generate_problems(cfg)]
    expected = [i for t in texts for i in tiny_tok(t)["input_ids"] + [tiny_tok.eos_token_id]]
    assert bench.encode(texts, tiny_tok.get_vocab(), tiny_tok.unk_token_id, tiny_tok.eos_token_id) == expected
    assert tiny_tok.unk_token_id not in expected


def test_data_covers_every_step_once_and_validation_is_held_out():
    ctx = _ctx()
    s, data = ctx["settings"], ctx["data"]
    assert data["train"].shape == (s["steps"] * s["batch"], s["seq"])
    assert data["val"].shape == (s["val_blocks"], s["seq"])
    assert data["meta"]["train_tokens_per_run"] == data["train"].numel()
    assert int(data["train"].max()) < data["meta"]["vocab_size"]


def test_warmup_then_constant_lr_and_continuation_equals_an_uninterrupted_run():
    ctx = _ctx()
    never = bench.sweep.Deadline(None)
    lrs = []
    split = bench.Run(ctx, "coe_official", 3e-3, 0)
    for step in range(1, 9):  # warm-up is round(0.1 x 8) = 1 step here; check the rule on a longer run below
        split.train_to(step, never)
        lrs.append(split.opt.param_groups[0]["lr"])
    whole = bench.Run(ctx, "coe_official", 3e-3, 0)
    whole.train_to(8, never)
    assert [p["val_loss"] for p in split.curve] == [p["val_loss"] for p in whole.curve]
    assert lrs == [3e-3] * 8
    other_seed = bench.Run(ctx, "coe_official", 3e-3, 1)
    assert not torch.equal(other_seed.order, whole.order)  # the seed changes the data order (and the init)
    long = bench.Run(_ctx(steps=40), "moe", 1e-3, 0)
    seen = []
    for step in range(1, 9):
        long.train_to(step, never)
        seen.append(long.opt.param_groups[0]["lr"])
    assert seen == pytest.approx([1e-3 * min(1.0, k / 4) for k in range(1, 9)])  # 10% of 40 = 4 warm-up steps


def test_arms_have_the_papers_compute_accounting():
    a = bench.arms(8)
    assert a["moe"]["fields"] == {"residual_mode": "pre_ln", "num_iterations": 1, "num_experts_per_tok": 8}
    assert a["coe_official"]["fields"] == {"residual_mode": "official", "num_iterations": 2, "num_experts_per_tok": 4}
    run = bench.Run(_ctx(), "coe_shared_once", 1e-3, 0)
    assert run.info["expert_ffns_per_token_layer"] == 2 * 2 + 1
    assert bench.Run(_ctx(), "coe", 1e-3, 0).info["expert_ffns_per_token_layer"] == 2 * 2 + 2


def test_smoke_single_process(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert bench.main(["--smoke", "--arms", "moe", "coe", "--lrs", "3e-3", "--seeds", "0", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["arm"], r["steps_done"], [p["step"] for p in r["curve"]]) for r in runs] == [
        ("moe", 8, [2, 4, 8]),
        ("coe", 8, [2, 4, 8]),
    ]
    assert all(len(p["balance"]) == (1 if r["arm"] == "moe" else 2) for r in runs for p in r["curve"])
    assert "val loss @ step 8, CoE C=2 K=2, ours (pre-LN)" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_sharded_then_merged(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert bench.main(["--smoke", "--arms", "moe", "coe", "--out", str(a)]) == 0
    assert bench.main(["--smoke", "--arms", "moe_official", "coe_official", "--seeds", "0", "--out", str(b)]) == 0
    out, png = tmp_path / "m.json", tmp_path / "m.png"
    assert bench.main(["--merge", str(a), str(b), "--smoke", "--out", str(out), "--plot", str(png)]) == 0
    payload = json.loads(out.read_text())
    runs = payload["raw"]["runs"]
    # each arm's lr: the lowest seed-0 validation loss at the sweep step, recomputed from the runs
    for arm in ("moe", "coe", "moe_official", "coe_official"):
        at_sweep = {r["lr"]: r["curve"][0]["val_loss"] for r in runs if r["arm"] == arm and r["seed"] == 0}
        assert [p["step"] for r in runs if r["arm"] == arm for p in r["curve"]][0] == 2  # first checkpoint
        sweep_pts = {r["lr"]: next(p["val_loss"] for p in r["curve"] if p["step"] == 4) for r in runs
                     if r["arm"] == arm and r["seed"] == 0}  # fmt: skip
        assert payload["raw"]["summary"][arm]["lr"] == min(sweep_pts, key=sweep_pts.get)
        assert len(at_sweep) == 2
    # the final-step row is the seed mean of the runs' last validation losses at the chosen lr
    row = next(r for r in payload["rows"] if r["metric"].startswith("val loss @ step 8, CoE C=2 K=2, ours"))
    coe = payload["raw"]["summary"]["coe"]
    finals = [r["curve"][-1]["val_loss"] for r in runs if r["arm"] == "coe" and r["lr"] == coe["lr"]]
    assert len(finals) == 2 and row["ours"] == pytest.approx(sum(finals) / 2)
    assert "paper (official, MetaMathQA) 1.1211 vs 1.1958" in next(
        r["metric"] for r in payload["rows"] if "step 8, CoE C=2 K=2, official" in r["metric"]
    )
    assert png.stat().st_size > 10_000
    assert "| paper (official layout" in capsys.readouterr().out
