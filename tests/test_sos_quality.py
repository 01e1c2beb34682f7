"""benchmarks/sos_quality.py: balanced data, and the CPU smoke run end to end (rows, confusion, plot)."""

import json

import pytest
from _bench import load_bench  # tests/_bench.py


bench = load_bench("sos_quality")


def test_class_counts_balance_labels_and_classes():
    from hf_plugins.sos import CLASS_LABELS

    counts = bench.class_counts(2000)
    assert set(counts) == set(CLASS_LABELS)
    for label, n_classes in ((1, 10), (0, 12)):
        own = [counts[c] for c in counts if CLASS_LABELS[c] == label]
        assert len(own) == n_classes and sum(own) == 2000 and max(own) - min(own) <= 1


@pytest.mark.slow
def test_smoke_run(tmp_path):
    out, png = tmp_path / "sos_quality.json", tmp_path / "sos_quality.png"
    assert bench.main(["--smoke", "--out", str(out), "--plot", str(png)]) == 0
    payload = json.loads(out.read_text())
    raw = payload["raw"]
    assert len(raw["seeds"]) == 2 and raw["data"]["test_labels"] == {"1": 12, "0": 12}
    assert all(labels == {"1": 12, "0": 12} for labels in raw["data"]["train_labels"].values())
    summ = bench.summary(raw)
    held = summ["held_out"]
    assert len(held["per_class"]) == 22 and held["n"] == 24
    # the confusion matrix sums over seeds: every held-out item answered once per seed
    assert sum(sum(row.values()) for row in held["confusion"].values()) == 2 * 24
    # the SFT mean accuracy, recomputed from the stored answers and proved labels (invalid counts as wrong)
    truth = [it["proved_label"] for it in raw["sets"]["held_out"]]
    accs = [sum(a == t for a, t in zip(s["eval"]["held_out"]["answers"], truth)) / 24 for s in raw["seeds"].values()]
    assert held["sft"] == pytest.approx(sum(accs) / len(accs))
    metrics = [r["metric"] for r in payload["rows"]]
    assert any("surface rule" in m for m in metrics) and any("true SoS" in m for m in metrics)
    assert png.stat().st_size > 10_000
    assert bench.main(["--plot-only", str(out), "--plot", str(tmp_path / "again.png")]) == 0
