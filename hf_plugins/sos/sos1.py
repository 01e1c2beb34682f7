"""The released SoS1 evaluation file (340 rows, arXiv 2502.20545, github.com/Joe-2002/SoS1, Apache-2.0): loading,
and the checker's report against its labels (docs/sos.md, "Results on the released SoS1 file"). The batch functions
take any rows of the same shape (or our generated items, `load_check_rows`) and never stop at a bad row: it gets
an `error` or `rejected` record and the batch goes on.

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


__all__ = [
    "SOS1_CORRECTED_LABELS",
    "SOS1_TRUNCATED_ROWS",
    "check_sos1",
    "default_sos1_path",
    "load_check_rows",
    "load_sos1",
    "read_jsonl_rows",
    "sos1_proved_labels",
    "summarize_sos1",
]

#: Rows (0-based) cut at 32,767 characters, the spreadsheet cell limit; the checker rejects them.
SOS1_TRUNCATED_ROWS = frozenset({39, 98, 218, 220, 247, 281})
#: Rows whose released label the whole-file run (`check_sos1` with the default `CheckerConfig`; docs/sos.md,
#: "Results on the released SoS1 file") proves wrong, with the proved label: exact points for 14 Test_Set_2 rows
#: and row 309 (Test_Set_3_1), exact rational Gram certificates for 11 Test_Set_5_2_negative rows. Every other
#: untruncated row was proved consistent with its released label by that run (308 rows, 0 undecided).
SOS1_CORRECTED_LABELS: dict[int, int] = {
    **dict.fromkeys((9, 20, 48, 55, 69, 73, 127, 150, 224, 238, 271, 277, 295, 333), 0),  # Test_Set_2
    309: 0,  # Test_Set_3_1
    **dict.fromkeys((54, 57, 96, 112, 137, 147, 157, 174, 235, 256, 327), 1),  # Test_Set_5_2_negative
}


def default_sos1_path() -> Path:
    shared = os.environ.get("HF_PLUGINS_SHARED_DIR")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return base / "data" / "sos1" / "evaluation.jsonl"


def load_sos1(path: str | os.PathLike | None = None) -> list[dict]:
    """Rows of the file, each with an added `row` (0-based line number, as in docs/sos.md)."""
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


def read_jsonl_rows(path: str | os.PathLike) -> list[dict]:
    """JSON lines as dicts with an added `row` (0-based line number). A line that is not a JSON object becomes
    `{"row": i, "error": "..."}` instead of stopping the read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append({"row": i, "error": f"line {i + 1} is not valid JSON: {exc}"})
                continue
            if not isinstance(row, dict):
                rows.append({"row": i, "error": f"line {i + 1} is a JSON {type(row).__name__}, not an object"})
                continue
            rows.append({**row, "row": i})
    return rows


def binary_label(value) -> int | None:
    """0 or 1 from an int-like label (`True`, `1`, `"1"` are not accepted: 0/1 integers only), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1) else None


def load_check_rows(path: str | os.PathLike) -> list[dict]:
    """Rows for `check_sos1` from a JSON-lines file: SoS1-shaped rows (`polynomial`, `ans`, subset in `label`) or
    our generated items (`polynomial`, 0/1 `label`, `class`)."""
    rows = read_jsonl_rows(path)
    for r in rows:
        if "ans" not in r and binary_label(r.get("label")) is not None:
            r["ans"] = r["label"]
        if not isinstance(r.get("label"), str):
            r["label"] = r.get("class", "all")
    return rows


def sos1_proved_labels(rows: Iterable[dict]) -> list[int | None]:
    """The proved label of each row of `load_sos1()` as recorded by the whole-file run, without running the checker
    (8 minutes on 2 cores, and it needs the `sos` extra): the released label, corrected where the checker proved it
    wrong (`SOS1_CORRECTED_LABELS`); None for the truncated rows (`SOS1_TRUNCATED_ROWS`). Rows need `row` (added by
    `load_sos1`), and are checked against the released file's shape so that another file is not silently
    relabelled."""
    out = []
    for r in rows:
        if "row" not in r:
            raise ValueError("each row needs its `row` number: load the file with `load_sos1`")
        i = r["row"]
        if i in SOS1_CORRECTED_LABELS and int(r["ans"]) == SOS1_CORRECTED_LABELS[i]:
            raise ValueError(
                f"row {i} is not the released SoS1 row this table was recorded on (its label already equals the "
                "correction); run `check_sos1` on this file instead"
            )
        out.append(None if i in SOS1_TRUNCATED_ROWS else SOS1_CORRECTED_LABELS.get(i, int(r["ans"])))
    return out


def check_sos1(
    rows: Iterable[dict],
    config: CheckerConfig | None = None,
    progress: Callable[[dict, Verdict], None] | None = None,
) -> list[dict]:
    """Run the checker on each row. Returns one record per row: row, subset, released label, verdict, and the
    outcome "consistent" / "inconsistent" (the checker proves the released label wrong) / "undecided" / "decided"
    (proved, but the row has no 0/1 label) / "rejected" (text the parser refuses) / "error" (a row without
    polynomial text, an unreadable line, or a check that failed; the message says which). A bad row never stops
    the batch."""
    config = config or CheckerConfig()
    out = []
    for row in rows:
        released = binary_label(row.get("ans"))
        text = row.get("polynomial")
        if "error" in row or not isinstance(text, str):
            why = row.get("error") or f"the row has no polynomial text (got {type(text).__name__})"
            verdict = Verdict(SosLabel.ERROR, method="input", message=why)
        else:
            verdict = check_polynomial(text, config)  # never raises on text
        proved = verdict.proved_label
        if verdict.label == SosLabel.REJECTED:
            outcome = "rejected"
        elif verdict.label == SosLabel.ERROR:
            outcome = "error"
        elif proved is None:
            outcome = "undecided"
        elif released is None:
            outcome = "decided"  # no released label to compare with
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
    disproved, rejected, errors = [], [], []
    seconds = 0.0
    for rec in records:
        v: Verdict = rec["verdict"]
        subset = str(rec["subset"] or "all")
        per_subset[subset][rec["outcome"]] += 1
        methods[subset][v.method or v.label] += 1
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
        if rec["outcome"] == "error":
            errors.append({"row": rec["row"], "subset": rec["subset"], "reason": v.message})
    totals = Counter()
    for c in per_subset.values():
        totals.update(c)
    return {
        "per_subset": {k: dict(v) for k, v in sorted(per_subset.items())},
        "methods": {k: dict(v) for k, v in sorted(methods.items())},
        "totals": dict(totals),
        "disproved": disproved,
        "rejected": rejected,
        "errors": errors,
        "seconds": seconds,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
