"""benchmarks/optim_kernel_bench.py --smoke: every arm runs on the CPU and the rows come out."""

import json

from _bench import load_bench  # tests/_bench.py


def test_optim_kernel_bench_smoke(tmp_path, capsys):
    bench = load_bench("optim_kernel_bench")
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--repeats", "1", "--iters", "1", "--fwd-bwd-ms", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    res = json.loads(out.read_text())
    assert set(res["stable_spam"]["arms"]) == {"torch AdamW fused", "ours StableSPAM foreach"}
    assert res["alphadecay"]["n_analysed"] == 13  # 2 layers x 7 linears, minus the first one (lm_head is tied)
    assert all(v["ms"] > 0 for v in res["alphadecay"]["steps"].values())
    assert set(res["alphadecay"]["refresh"]) == {"overlapped", "synchronous"}
    assert len(res["rows"]) == 4 and all(r.startswith("| ") and "optim_kernel_bench.py" in r for r in res["rows"])
    assert "refresh update ms, overlapped vs synchronous" in capsys.readouterr().out
