"""The tuned-baseline quality scripts (Stable-SPAM, LNS, AlphaDecay, SEFT) in their `--smoke` CPU mode: every run
of the protocol happens, the chosen rate is the best validation value, and the rows report the seeds' test values."""

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
from _bench import load_bench  # tests/_bench.py

from hf_plugins.testing import tiny_tokenizer


def _check(work: Path, select, metric: tuple[str, str], arms: dict, n_runs: int):
    """Every run happened, each arm's chosen rate is its best seed-0 run (lowest `select` key, or `select(record)`
    when callable), and the comparison rows of `metric` (key, label) show mean [min, max] over the seeds at the
    chosen rates (first arm = the method). Returns the records."""
    import _results

    out = json.loads((work / "summary.json").read_text())
    records = out["records"]
    assert len(records) == n_runs
    chosen = {}
    for group, names in arms.items():
        for arm in names:
            swept = [r for r in records if r["group"] == group and r["arm"] == arm and r["seed"] == 0]
            best = min(swept, key=select if callable(select) else lambda r: r[select])["lr"]
            values = [r[metric[0]] for r in records if r["group"] == group and r["arm"] == arm and r["lr"] == best]
            assert len(values) == 2  # seeds 0 and 1
            f = _results.fmt
            chosen[group, arm] = f"{f(statistics.fmean(values))} [{f(min(values))}, {f(max(values))}]"
            assert out["summary"][group][arm]["best_lr"] == best
    expected = {(chosen[g, names[0]], chosen[g, b]) for g, names in arms.items() for b in names[1:]}
    reported = {(r["ours_text"], r["base_text"]) for r in out["rows"] if r["metric"].startswith(f"{metric[1]}, mean")}
    assert reported == expected
    assert (work / f"{out['script'][:-3]}.md").read_text().count("| 0, 1 |") == sum(map(len, arms.values()))
    return records


def test_stable_spam_quality_smoke_int4(tmp_path):
    """The INT4 group's whole protocol: 3 rates (+ 1 at an edge) and 1 more seed per arm."""
    work = tmp_path / "w"
    mod = load_bench("stable_spam_quality")
    assert mod.main(["--smoke", "--groups", "int4", "--seeds", "0", "1", "--work-dir", str(work), "--plot", ""]) == 0
    arms = {"int4": ["stable_spam", "adamw"]}
    n = len(list((work / "runs").glob("*.json")))
    assert n in (8, 9, 10)  # 2 arms x (3 rates + at most 1 extension + 1 seed)
    records = _check(work, "val_loss", ("test_loss", "test loss"), arms, n)
    vocab = len(tiny_tokenizer())
    assert all(r["val_loss"] < math.log(vocab) for r in records)  # every run learned something
    assert all(len(r["train_loss"]) == r["steps"] == 6 and r["curve"][-1][0] == 6 for r in records)


def test_stable_spam_quality_smoke_corpus(tmp_path):
    work = tmp_path / "w"
    mod = load_bench("stable_spam_quality")
    argv = ["--smoke", "--groups", "corpus", "--lrs", "3e-3", "6e-3", "--seeds", "0", "1", "--extend", "0"]
    assert mod.main([*argv, "--work-dir", str(work), "--plot", ""]) == 0
    records = _check(work, "val_loss", ("test_ppl", "test perplexity"), {"corpus": ["stable_spam", "adamw"]}, 6)
    clip = {r["arm"]: r["max_grad_norm"] for r in records}
    assert clip == {"adamw": 1.0, "stable_spam": 0.0}  # AdamW clips at 1.0, Stable-SPAM does not (paper)
    assert all(r["test_ppl"] == pytest.approx(math.exp(r["test_loss"])) for r in records)


def test_lns_quality_smoke(tmp_path):
    work = tmp_path / "w"
    mod = load_bench("lns_quality")
    argv = ["--smoke", "--depths", "2", "--lrs", "1e-3", "4e-3", "--seeds", "0", "1", "--extend", "0"]
    assert mod.main([*argv, "--work-dir", str(work), "--plot", ""]) == 0
    records = _check(work, "val_ppl", ("test_ppl", "test perplexity"), {"2L": ["lns", "pre_ln"]}, 6)
    for r in records:
        assert len(r["pruning"]["without"]) == 2 and len(r["depth_trained"]["variance"]) == 3
        assert r["var_growth"] == pytest.approx(r["depth_trained"]["variance"][-1] / r["depth_trained"]["variance"][0])
        assert r["deep_drop"] == pytest.approx(r["pruning"]["without"][1] / r["pruning"]["full"])


def test_alphadecay_quality_smoke(tmp_path):
    work = tmp_path / "w"
    mod = load_bench("alphadecay_quality")
    argv = ["--smoke", "--lrs", "3e-3", "6e-3", "--seeds", "0", "1", "--extend", "0"]
    assert mod.main([*argv, "--work-dir", str(work), "--plot", ""]) == 0
    records = _check(work, "val_loss", ("test_ppl", "test perplexity"), {"60m": ["alphadecay", "uniform"]}, 6)
    for r in records:  # AlphaDecay assigned per-matrix decays; the uniform arm has none
        assert (r["alphadecay_end"] is not None) == (r["arm"] == "alphadecay")
    decays = {v["weight_decay"] for r in records if r["alphadecay_end"] for v in r["alphadecay_end"].values()}
    assert len(decays) > 1


def test_seft_quality_smoke(tmp_path):
    work = tmp_path / "w"
    mod = load_bench("seft_quality")
    argv = ["--smoke", "--sparsities", "50", "--lrs", "1e-3", "2e-3", "--seeds", "0", "1", "--extend", "0"]
    assert mod.main([*argv, "--work-dir", str(work), "--plot", ""]) == 0
    arms = {"50": ["seft", "lora_star", "sqft"]}
    # chosen: the highest validation accuracy, ties broken by the lower validation answer loss
    records = _check(work, lambda r: (-r["val_acc"], r["val_loss"]), ("test_acc", "test accuracy"), arms, 9)
    assert all(r["nnz_ok"] == 1.0 for r in records)  # every merged matrix kept the pruned base's non-zero count
    rows = json.loads((work / "summary.json").read_text())["rows"]
    assert [r["metric"] for r in rows[-3:]] == [
        "perplexity, wanda 50% vs dense",
        "perplexity, sparsegpt 50% vs wanda 50%",
        "perplexity, magnitude 50% vs wanda 50%",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stable_spam_quality", "lns_quality", "alphadecay_quality", "seft_quality"])
def test_full_smoke_protocol(name, tmp_path):
    """The whole `--smoke` protocol of each script (every group, 3 seeds, the edge extension, plots)."""
    work = tmp_path / "w"
    assert load_bench(name).main(["--smoke", "--work-dir", str(work)]) == 0
    out = json.loads((work / "summary.json").read_text())
    for arms in out["summary"].values():
        for lane in arms.values():
            assert lane["seeds"] == [0, 1, 2] and len(lane["sweep"]) in (3, 4)
    if importlib.util.find_spec("matplotlib"):
        assert all(Path(p).is_file() for p in out["plots"]) and out["plots"]


def test_gradient_accumulation_gives_the_same_step(tmp_path):
    """`--grad-accum 2` (two micro-batches per step, for memory) trains the same model as one batch: pretrain.py's
    Trainer path and lns_quality.py's own loop."""
    pretrain = load_bench("pretrain")
    corpus = pretrain.smoke_corpus()
    common = ["--corpus", corpus, "--size", "tiny", "--tokens", str(6 * 4 * 32), "--seq-len", "32", "--batch-size",
              "4", "--eval-tokens", "512", "--test-tokens", "512", "--lr", "1e-2", "--bf16", "no"]  # fmt: skip
    one, two = (pretrain.run(pretrain.parse_args([*common, "--grad-accum", k])) for k in ("1", "2"))
    assert one["steps"] == two["steps"] == 6
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=1e-4)
    assert two["final_test_loss"] == pytest.approx(one["final_test_loss"], abs=1e-4)
    with pytest.raises(ValueError, match="--grad-accum must divide"):
        pretrain.run(pretrain.parse_args([*common, "--grad-accum", "3"]))

    lns = load_bench("lns_quality")
    ppl = {}
    for k in ("1", "2"):
        argv = ["--smoke", "--depths", "2", "--arms", "pre_ln", "--lrs", "4e-3", "--seeds", "0", "--extend", "0"]
        assert lns.main([*argv, "--grad-accum", k, "--work-dir", str(tmp_path / k), "--plot", ""]) == 0
        (path,) = (tmp_path / k / "runs").glob("*.json")
        run = json.loads(path.read_text())
        ppl[k] = run["test_ppl"], run["final_train_loss"]
    assert ppl["2"] == pytest.approx(ppl["1"], rel=1e-4)
