"""The released SoS1 evaluation file (340 rows, arXiv 2502.20545, github.com/Joe-2002/SoS1, Apache-2.0): loading,
and the checker's report against its labels (spec, "Reference results" and defects 1-4).

The file is not shipped with hf_plugins. It is looked up at `$HF_PLUGINS_SHARED_DIR/data/sos1/evaluation.jsonl`,
falling back to `<repo>/../shared/data/sos1/evaluation.jsonl`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from .checker import CheckerConfig, SosLabel, Verdict, check_polynomial


__all__ = ["check_sos1", "default_sos1_path", "load_sos1", "summarize_sos1"]


def default_sos1_path() -> Path:
    shared = os.environ.get("HF_PLUGINS_SHARED_DIR")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return base / "data" / "sos1" / "evaluation.jsonl"


def load_sos1(path: str | os.PathLike | None = None) -> list[dict]:
    """Rows of the file, each with an added `row` (0-based line number, as the spec's row numbers)."""
    path = Path(path) if path else default_sos1_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: set HF_PLUGINS_SHARED_DIR to the folder holding data/sos1/evaluation.jsonl"
        )
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if line.strip():
                row = json.loads(line)
                row["row"] = i
                rows.append(row)
    return rows


def check_sos1(
    rows: Iterable[dict],
    config: CheckerConfig | None = None,
    progress: Callable[[dict, Verdict], None] | None = None,
) -> list[dict]:
    """Run the checker on each row. Returns one record per row: row, subset, released label, verdict, and the
    outcome "consistent" / "inconsistent" (the checker proves the released label wrong) / "undecided" /
    "rejected"."""
    config = config or CheckerConfig()
    out = []
    for row in rows:
        verdict = check_polynomial(row["polynomial"], config)
        released = int(row["ans"])
        proved = verdict.proved_label
        if verdict.label == SosLabel.REJECTED:
            outcome = "rejected"
        elif proved is None:
            outcome = "undecided"
        else:
            outcome = "consistent" if proved == released else "inconsistent"
        rec = {
            "row": row.get("row"),
            "subset": row.get("label"),
            "released": released,
            "proved": proved,
            "outcome": outcome,
            "verdict": verdict,
        }
        out.append(rec)
        if progress:
            progress(rec, verdict)
    return out


def summarize_sos1(records: list[dict]) -> dict:
    """Per-subset counts of the outcomes and the checker's methods, totals, and the disproved rows with their
    evidence (exact points where there is one)."""
    per_subset: dict[str, Counter] = defaultdict(Counter)
    methods: dict[str, Counter] = defaultdict(Counter)
    disproved, rejected = [], []
    seconds = 0.0
    for rec in records:
        v: Verdict = rec["verdict"]
        per_subset[rec["subset"]][rec["outcome"]] += 1
        methods[rec["subset"]][v.method or v.label] += 1
        seconds += v.seconds
        if rec["outcome"] == "inconsistent":
            disproved.append(
                {
                    "row": rec["row"],
                    "subset": rec["subset"],
                    "released": rec["released"],
                    "proved": rec["proved"],
                    "method": v.method,
                    "evidence": None if v.evidence is None else v.evidence.to_dict(),
                }
            )
        if rec["outcome"] == "rejected":
            rejected.append({"row": rec["row"], "subset": rec["subset"], "reason": v.message})
    totals = Counter()
    for c in per_subset.values():
        totals.update(c)
    return {
        "per_subset": {k: dict(v) for k, v in sorted(per_subset.items())},
        "methods": {k: dict(v) for k, v in sorted(methods.items())},
        "totals": dict(totals),
        "disproved": disproved,
        "rejected": rejected,
        "seconds": seconds,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
