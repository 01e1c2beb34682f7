"""SoS-1K checker benchmark (CPU): time per polynomial by class and size, and the share of the SoS1 evaluation
file it decides.

"ours" is the full checker (exact cheap checks, point searches, Newton polytope, Gram SDP with exact rounding, dual
moment SDP with exact rounding).
For the "share decided" metrics, "baseline" counts the items the same pass decided *without* the SDP (exact cheap
checks, Newton polytope, point searches), i.e. what a solver-free screen proves. There is no stock tool to time
against. Rows: `| date | script | device | torch / transformers | case | metric | ours |
baseline | ratio |`.

    python benchmarks/sos_bench.py            # ~5 min on 2 CPU cores (SoS1 Gram bases up to N = 36)
    python benchmarks/sos_bench.py --smoke    # < 60 s
    python benchmarks/sos_bench.py --sos1-max-basis 150 --out sos.json   # the whole file (~8 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_plugins.sos import CLASS_LABELS, CheckerConfig, GeneratorConfig, check_polynomial, generate_item
from hf_plugins.sos.sos1 import check_sos1, default_sos1_path, load_sos1


SIZES = {
    "n2 d4": GeneratorConfig(num_vars=2, degree=4, num_terms=4),
    "n3 d6": GeneratorConfig(num_vars=3, degree=6, num_terms=8),
}


def _versions() -> str:
    try:
        import torch
        import transformers

        return f"{torch.__version__} / {transformers.__version__}"
    except ImportError:
        return "- / -"


def _bucket(n: int | None) -> str:
    if n is None:
        return "cheap (no SDP)"
    for hi, name in ((21, "N<=21"), (36, "N 28-36"), (56, "N 45-56"), (84, "N 70-84")):
        if n <= hi:
            return name
    return "N>84"


def _sdp_free(v) -> bool:
    """Decided without the Gram SDP (exact cheap checks, Newton polytope, or a point search)."""
    return v.proved_label is not None and not v.method.startswith("gram sdp")


def bench_classes(per_class: int, sizes: dict, full: CheckerConfig) -> list[dict]:
    rows = []
    for size_name, gcfg in sizes.items():
        for cls in CLASS_LABELS:
            secs, dec, dec_free = [], 0, 0
            for seed in range(per_class):
                item = generate_item(cls, seed=seed, config=gcfg)
                v = check_polynomial(item.text, full)
                assert v.proved_label in (None, item.label), f"checker contradicts a proved label: {item.text}"
                secs.append(v.seconds)
                dec += v.proved_label == item.label
                dec_free += _sdp_free(v)
            case = f"generated {cls}, {size_name}"
            rows.append(
                {"case": case, "metric": "checker s/poly (median)", "ours": statistics.median(secs), "baseline": None}
            )
            rows.append(
                {"case": case, "metric": "share decided", "ours": dec / per_class, "baseline": dec_free / per_class}
            )
    return rows


def bench_sos1(limit: int | None, full: CheckerConfig) -> tuple[list[dict], dict]:
    data = load_sos1()
    if limit:
        by_subset = defaultdict(list)
        for r in data:
            by_subset[r["label"]].append(r)
        data = [r for rs in by_subset.values() for r in rs[:limit]]
    t0 = time.perf_counter()
    recs = check_sos1(data, full)
    wall_full = time.perf_counter() - t0
    n = len(data)
    outcome = Counter(r["outcome"] for r in recs)
    decided = outcome["consistent"] + outcome["inconsistent"]
    free = [r for r in recs if _sdp_free(r["verdict"])]
    rows = [
        {
            "case": f"SoS1 file, {n} rows",
            "metric": "share decided (exact proof)",
            "ours": decided / n,
            "baseline": len(free) / n,
        },
        {
            "case": f"SoS1 file, {n} rows",
            "metric": "released labels proved wrong",
            "ours": outcome["inconsistent"],
            "baseline": sum(r["outcome"] == "inconsistent" for r in free),
        },
        {"case": f"SoS1 file, {n} rows", "metric": "wall s (whole pass)", "ours": wall_full, "baseline": None},
    ]
    buckets = defaultdict(list)
    for r in recs:
        v = r["verdict"]
        if v.basis_size is not None and "sdp_seconds" not in v.details:
            buckets[f"N>{full.max_basis}, SDP skipped"].append(v.seconds)
        else:
            buckets[_bucket(v.basis_size if "sdp_seconds" in v.details else None)].append(v.seconds)
    for name, secs in sorted(buckets.items()):
        rows.append(
            {
                "case": f"SoS1 file, {name} ({len(secs)} rows)",
                "metric": "checker s/poly (median)",
                "ours": statistics.median(secs),
                "baseline": None,
            }
        )
        rows.append(
            {
                "case": f"SoS1 file, {name} ({len(secs)} rows)",
                "metric": "checker s/poly (max)",
                "ours": max(secs),
                "baseline": None,
            }
        )
    per_subset = defaultdict(Counter)
    for r in recs:
        per_subset[r["subset"]][r["outcome"]] += 1
    detail = {
        "outcomes": dict(outcome),
        "per_subset": {k: dict(v) for k, v in sorted(per_subset.items())},
        "disproved_rows": sorted(r["row"] for r in recs if r["outcome"] == "inconsistent"),
        "undecided_rows": sorted(r["row"] for r in recs if r["outcome"] == "undecided"),
        "max_basis": full.max_basis,
    }
    return rows, detail


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (< 60 s)")
    ap.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    ap.add_argument("--out", default=None, help="write rows and details to this JSON file")
    ap.add_argument("--per-class", type=int, default=None, help="generated items per class and size")
    ap.add_argument("--sos1-max-basis", type=int, default=None, help="largest Gram basis for the SoS1 pass")
    args = ap.parse_args(argv)

    per_class = args.per_class or (1 if args.smoke else 2)
    sizes = {"n2 d4": SIZES["n2 d4"]} if args.smoke else SIZES
    max_basis = args.sos1_max_basis or (21 if args.smoke else 36)
    full = CheckerConfig(hard_point_time_limit=2.0, sdp_time_limit=30.0)
    t0 = time.perf_counter()
    rows = bench_classes(per_class, sizes, full)
    detail = {}
    if default_sos1_path().is_file():
        sos1_full = CheckerConfig(hard_point_time_limit=2.0, sdp_time_limit=30.0, max_basis=max_basis)
        sos1_rows, detail = bench_sos1(1 if args.smoke else None, sos1_full)
        rows += sos1_rows
    else:
        print(f"SoS1 file not found at {default_sos1_path()}; skipping that part", file=sys.stderr)
    wall = time.perf_counter() - t0

    device = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    date = time.strftime("%Y-%m-%d")
    lines = []
    for r in rows:
        ratio = "-"
        if isinstance(r["ours"], int | float) and isinstance(r["baseline"], int | float) and r["baseline"]:
            ratio = f"{r['ours'] / r['baseline']:.2f}"
        lines.append(
            f"| {date} | sos_bench.py{' --smoke' if args.smoke else ''} | {device} | {_versions()} | {r['case']} | "
            f"{r['metric']} | {_fmt(r['ours'])} | {_fmt(r['baseline'])} | {ratio} |"
        )
    print("| date | script | device | torch / transformers | case | metric | ours | baseline | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nwall time {wall:.0f} s; SoS1 detail: {json.dumps(detail)}")
    if args.append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write("\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "sos1": detail, "wall_s": wall}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
