"""benchmarks/alphadecay_plot.py: two pretrain.py-style JSONs -> per-module-type summary and a PNG."""

import json
import statistics

import pytest
from _bench import load_bench  # tests/_bench.py


def test_plot_from_two_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = load_bench("alphadecay_plot")
    runs = plot.synthetic_runs()
    runs[0]["esd_end"].append(  # a tied lm_head: not analysed, left out of the plot by default
        {"name": "lm_head", "module_type": "lm_head", "layer": None, "alpha": 40.0, "alphadecay": False}
    )
    paths = []
    for run, name in zip(runs, ("adamw", "alphadecay")):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    out = tmp_path / "plots" / "alphas.png"
    assert plot.main([*map(str, paths), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().out.splitlines()
    assert not any("lm_head" in line for line in lines)
    q = [r["alpha"] for r in runs[1]["esd_end"] if r["module_type"] == "q_proj"]
    (line,) = [x for x in lines if x.startswith("AlphaDecay") and " q_proj " in x]
    assert f"n=  8 median {statistics.median(q):.3f}" in line
    assert plot.module_types(runs)[:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_plot_refuses_a_json_without_alphas(tmp_path):
    plot = load_bench("alphadecay_plot")
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"config": {"optim": "adamw"}}))
    with pytest.raises(SystemExit, match="esd_end"):
        plot.main([str(path), "--out", str(tmp_path / "x.png")])
