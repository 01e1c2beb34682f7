"""SoS-1K checker (CPU): time per polynomial by class and size, and the share of the SoS1 evaluation file it
decides with an exact proof, against the same pass without the Gram SDP.

"ours" is the full checker (exact cheap checks, point search, Newton polytope, Gram SDP with exact rounding, dual
moment SDP with exact rounding). For the "share decided" metrics, "baseline" counts the items the same pass decided
*without* the SDP (exact cheap checks, Newton polytope, point searches), i.e. what a solver-free screen proves; no
stock tool decides these polynomials to time against. The generated-class timings are repeated `--repeats` times
(median [min, max] of each repeat's median seconds per polynomial); the SoS1 pass runs once (its verdicts do not
change between repeats).

    python benchmarks/sos_bench.py --append                  # ~5 min on 2 CPU cores (SoS1 Gram bases up to N = 36)
    python benchmarks/sos_bench.py --smoke                   # a few generated items and SoS1 rows
    python benchmarks/sos_bench.py --sos1-max-basis 150      # the whole file (~8 min)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter, defaultdict

import _results

from hf_plugins.sos import CLASS_LABELS, CheckerConfig, GeneratorConfig, check_polynomial, generate_item
from hf_plugins.sos.sos1 import check_sos1, default_sos1_path, load_sos1


SCRIPT = "sos_bench.py"
SIZES = {
    "n2 d4": GeneratorConfig(num_vars=2, degree=4, num_terms=4),
    "n3 d6": GeneratorConfig(num_vars=3, degree=6, num_terms=8),
}


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


def bench_classes(per_class: int, sizes: dict, full: CheckerConfig, repeats: int) -> list[dict]:
    rows = []
    for size_name, gcfg in sizes.items():
        for cls in CLASS_LABELS:
            items = [generate_item(cls, seed=seed, config=gcfg) for seed in range(per_class)]
            medians, decided, free = [], 0, 0
            for rep in range(repeats):
                secs = []
                for item in items:
                    v = check_polynomial(item.text, full)
                    if v.proved_label not in (None, item.label):
                        raise AssertionError(f"the checker contradicts a proved label: {item.text}")
                    secs.append(v.seconds)
                    if rep == 0:
                        decided += v.proved_label == item.label
                        free += _sdp_free(v)
                medians.append(statistics.median(secs))
            case = f"generated {cls}, {size_name}, {per_class} items, {repeats} repeats"
            rows.append(_results.row(case, "checker s/poly (median)", medians, None))
            rows.append(_results.row(case, "share decided", decided / per_class, free / per_class))
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
    wall = time.perf_counter() - t0
    n = len(data)
    outcome = Counter(r["outcome"] for r in recs)
    free = [r for r in recs if _sdp_free(r["verdict"])]
    case = f"SoS1 file, {n} rows"
    rows = [
        _results.row(
            case, "share decided (exact proof)", (outcome["consistent"] + outcome["inconsistent"]) / n, len(free) / n
        ),
        _results.row(
            case,
            "released labels proved wrong",
            outcome["inconsistent"],
            sum(r["outcome"] == "inconsistent" for r in free),
        ),
        _results.row(case, "wall s (whole pass)", wall, None),
    ]
    buckets = defaultdict(list)
    for r in recs:
        v = r["verdict"]
        if v.basis_size is not None and "sdp_seconds" not in v.details:
            buckets[f"N>{full.max_basis}, SDP skipped"].append(v.seconds)
        else:
            buckets[_bucket(v.basis_size if "sdp_seconds" in v.details else None)].append(v.seconds)
    for name, secs in sorted(buckets.items()):
        case = f"SoS1 file, {name} ({len(secs)} rows)"
        rows.append(_results.row(case, "checker s/poly (median)", statistics.median(secs), None))
        rows.append(_results.row(case, "checker s/poly (max)", max(secs), None))
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


def main(argv=None) -> int:
    p = _results.parser(__doc__)
    p.add_argument("--per-class", type=int, default=None, help="generated items per class and size (2; smoke 1)")
    p.add_argument("--sos1-max-basis", type=int, default=None, help="largest Gram basis for the SoS1 pass (36)")
    args = p.parse_args(argv)
    per_class = args.per_class or (1 if args.smoke else 2)
    sizes = {"n2 d4": SIZES["n2 d4"]} if args.smoke else SIZES
    max_basis = args.sos1_max_basis or (21 if args.smoke else 36)
    limits = {"hard_point_time_limit": 0.2, "sdp_time_limit": 5.0} if args.smoke else {"hard_point_time_limit": 2.0, "sdp_time_limit": 30.0}  # fmt: skip
    t0 = time.perf_counter()
    rows = bench_classes(per_class, sizes, CheckerConfig(**limits), args.repeats)
    detail = {}
    if default_sos1_path().is_file():
        sos1 = CheckerConfig(**limits, max_basis=max_basis)
        sos1_rows, detail = bench_sos1(1 if args.smoke else None, sos1)
        rows += sos1_rows
    else:
        print(f"SoS1 file not found at {default_sos1_path()}; skipping that part", file=sys.stderr)
    device = f"{_results.cpu_name()}{' (smoke)' if args.smoke else ''}"
    _results.report(rows, detail, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
