"""benchmarks/optim_kernel_bench.py --smoke: every arm runs on the CPU and the rows come out."""

import importlib.util
import json
from pathlib import Path


def test_optim_kernel_bench_smoke(tmp_path, capsys):
    path = Path(__file__).parents[1] / "benchmarks" / "optim_kernel_bench.py"
    loader = importlib.util.spec_from_file_location("optim_kernel_bench", path)
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)
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
