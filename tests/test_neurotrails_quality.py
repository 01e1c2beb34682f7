"""benchmarks/neurotrails_quality.py: its evaluation against the model's own outputs, the paper's step scaling and
schedule, the sparsity it trains with, and the CPU smoke run on a corpus directory, sharded and merged."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bench import load_bench  # tests/_bench.py


bench = load_bench("neurotrails_quality")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _ctx(**overrides):
    s = {**bench.SMOKE, **overrides}
    data = bench.load_data(None, True, s)
    return {"settings": s, "shape": bench.SMOKE_SHAPE, "data": data, "arms": bench.ARMS, "device": torch.device("cpu")}


NEVER = bench.sweep.Deadline(None)


def test_trail_evaluation_equals_the_models_own_losses_and_diversity():
    ctx = _ctx(eval_batch=64)  # the whole validation set in one batch, as the reference forward below
    run = bench.Run(ctx, "neurotrails", 3e-3, 0)
    run.train_to(4, NEVER)  # two topology updates (every 2 steps in the smoke settings)
    run.evaluate()
    got = run.curve[-1]
    model, ids = run.models[0], ctx["data"]["val"].long()
    model.eval()
    model.config.diversity_tokens = ids[:, 1:].numel()  # the model's KL diagnostic over every position
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert got["head_ppl"] == pytest.approx([math.exp(v) for v in out.trail_losses.tolist()], rel=1e-5)
    avg = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())  # mean of raw logits
    assert got["ppl"] == pytest.approx(math.exp(avg.item()), rel=1e-5)
    assert got["kl"] == pytest.approx(out.trail_kl.item(), rel=1e-4)
    assert got["disagreement"] == pytest.approx(out.trail_disagreement.item(), rel=1e-6)


def test_ensemble_evaluation_averages_the_members_logits():
    ctx = _ctx(eval_batch=3)  # several batches: token-weighted accumulation
    run = bench.Run(ctx, "ensemble", 3e-3, 1)
    run.train_to(2, NEVER)
    run.evaluate()
    ids = ctx["data"]["val"].long()
    with torch.no_grad():
        logits = [m.eval()(input_ids=ids).logits[:, :-1].flatten(0, 1) for m in run.models]
    target = ids[:, 1:].flatten()
    mean_nll = F.cross_entropy(sum(logits) / 3, target)
    assert run.curve[-1]["ppl"] == pytest.approx(math.exp(mean_nll.item()), rel=1e-5)
    heads = [math.exp(F.cross_entropy(lg, target).item()) for lg in logits]
    assert run.curve[-1]["head_ppl"] == pytest.approx(heads, rel=1e-5)
    p = [torch.softmax(lg, -1) for lg in logits]
    kl = [(p[a] * (p[a].log() - p[b].log())).sum(-1).mean() for a in range(3) for b in range(3) if a != b]
    assert run.curve[-1]["kl"] == pytest.approx(sum(kl).item() / 6, rel=1e-4)
    members = {tuple(m.model.embed_tokens.weight[0, :4].tolist()) for m in run.models}
    assert len(members) == 3  # independently initialised


def test_step_scaling_schedule_and_sparsity():
    ctx = _ctx(steps=9)
    nt = bench.Run(ctx, "neurotrails", 1e-3, 0)
    assert nt.total_steps == 10 and nt.sweep_step == 3  # 9 / 0.9 steps; the sweep at 1/3 of them
    assert (
        bench.Run(ctx, "treenet", 1e-3, 0).total_steps == 9 == bench.Run(ctx, "neurotrails_equal", 1e-3, 0).total_steps
    )
    # warm-up round(0.1 x 10) = 1 step, then cosine from 1 to 0.1 over the remaining 9
    assert [nt.lr_factor(k) for k in (0, 1, 10)] == pytest.approx([1.0, 1.0, 0.1])
    assert nt.lr_factor(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))
    nt.train_to(10, NEVER)
    model = nt.models[0]
    for _, m in model.sparse_modules():
        assert int(m.weight_mask.sum()) == m.nt_num_active
        assert torch.all(m.weight[~m.weight_mask] == 0)  # pruned weights stay zero through the steps
    record = nt.record()
    dense = sum(p.numel() for p in model.parameters())
    inactive = sum(m.weight.numel() - m.nt_num_active for _, m in model.sparse_modules())
    assert record["params"] == dense and record["nonzero"] == dense - inactive > 0
    assert [p["step"] for p in record["curve"]] == [3, 7, 10]


def _fake_corpus(root: Path, vocab: int = 50):
    rng = np.random.default_rng(0)
    for split, n in (("train", 2000), ("validation", 300)):
        rng.integers(0, vocab, n).astype(np.uint16).tofile(root / f"{split}.bin")
    manifest = {"tokenizer": {"vocab_size": vocab}, "splits": {"train": {"sha256": "x"}}}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_smoke_single_process(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert (
        bench.main(["--smoke", "--arms", "single", "neurotrails", "--lrs", "3e-3", "--seeds", "0", "--out", str(out)])
        == 0
    )
    runs = json.loads(out.read_text())["runs"]
    assert [(r["arm"], r["steps_done"]) for r in runs] == [("single", 6), ("neurotrails", 7)]
    assert "val ppl of the averaged logits, NeuroTrails vs single model" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_on_a_corpus_sharded_then_merged(tmp_path):
    _fake_corpus(tmp_path)
    corpus, parts = str(tmp_path), []
    for i, arms in enumerate((["single", "ensemble"], ["treenet", "neurotrails"])):
        parts.append(str(tmp_path / f"part{i}.json"))
        assert bench.main(["--smoke", "--corpus", corpus, "--arms", *arms, "--out", parts[-1]]) == 0
    out, png = tmp_path / "m.json", tmp_path / "m.png"
    assert bench.main(["--merge", *parts, "--smoke", "--out", str(out), "--plot", str(png)]) == 0
    payload = json.loads(out.read_text())
    summary, runs = payload["raw"]["summary"], payload["raw"]["runs"]
    assert set(summary) == {"single", "ensemble", "treenet", "neurotrails"}
    for arm, entry in summary.items():
        at_sweep = {r["lr"]: r["curve"][0]["ppl"] for r in runs if r["arm"] == arm and r["seed"] == 0}
        assert entry["lr"] == min(at_sweep, key=at_sweep.get) and entry["seeds"] == [0, 1]
    row = next(
        r for r in payload["rows"] if r["metric"].startswith("val ppl of the averaged logits, NeuroTrails vs single")
    )
    finals = [
        r["curve"][-1]["ppl"] for r in runs if r["arm"] == "neurotrails" and r["lr"] == summary["neurotrails"]["lr"]
    ]
    assert row["ours"] == pytest.approx(sum(finals) / len(finals)) and "20.7 vs 22.8" in row["metric"]
    assert row["case"].startswith("project corpus")
    assert png.stat().st_size > 10_000
