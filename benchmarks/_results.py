"""The benchmark scripts' shared output: RESULTS.md rows and the `--out` / `--append` files.

A row is `| date | script | device | torch / transformers | case | metric | ours | baseline | ratio |`. Scripts build
their rows as dicts (`case`, `metric`, `ours`, `baseline`, `ratio`; text scripts put pre-formatted `ours_text` and
`base_text`) and call `report` (or `markdown` / `markdown_text`, then `write_outputs`). Imported as a sibling module
(`python benchmarks/x.py` puts this folder first on `sys.path`).
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path


RESULTS = Path(__file__).with_name("RESULTS.md")


def fmt(x) -> str:
    """A number for a row: floats to 4 significant digits (whole with thousands separators from 1e4 on), NaN as
    "n/a", ints with thousands separators."""
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return f"{x:,}"


def row_prefix(script: str, device: str) -> str:
    """`| date | script | device | torch / transformers |` of today's rows."""
    import torch
    import transformers

    date = datetime.date.today().isoformat()
    return f"| {date} | {script} | {device} | {torch.__version__} / {transformers.__version__} |"


def markdown(rows: list[dict], script: str, device: str) -> list[str]:
    """Rows with numeric `ours`, `baseline` and `ratio`, each through `fmt`."""
    prefix = row_prefix(script, device)
    return [
        f"{prefix} {r['case']} | {r['metric']} | {fmt(r['ours'])} | {fmt(r['baseline'])} | {fmt(r['ratio'])} |"
        for r in rows
    ]


def markdown_text(rows: list[dict], script: str, device: str, nan: str = "n/a") -> list[str]:
    """Rows with pre-formatted `ours_text` / `base_text` (e.g. "mean [min, max]") and a numeric `ratio` (3
    significant digits, `nan` when undefined)."""
    prefix = row_prefix(script, device)

    def ratio(x: float) -> str:
        return nan if math.isnan(x) else f"{x:.3g}"

    return [
        f"{prefix} {r['case']} | {r['metric']} | {r['ours_text']} | {r['base_text']} | {ratio(r['ratio'])} |"
        for r in rows
    ]


def write_outputs(lines: list[str], *, out: str | None = None, payload=None, append: bool = False, default=str):
    """`--out`: `payload` as JSON (non-JSON values through `default`); `--append`: `lines` appended to RESULTS.md."""
    if out:
        Path(out).write_text(json.dumps(payload, indent=1, default=default))
    if append:
        with RESULTS.open("a") as f:
            f.write("\n".join(lines) + "\n")


def device_label(cuda: bool, smoke: bool) -> str:
    """The rows' device: the GPU's name, else "cpu (smoke)" for a smoke run and "cpu" otherwise."""
    import torch

    return torch.cuda.get_device_name() if cuda else ("cpu (smoke)" if smoke else "cpu")


def report(
    rows: list[dict],
    raw,
    script: str,
    device: str,
    wall_s: float,
    *,
    out: str | None = None,
    append: bool = False,
    text: bool = False,
    nan: str = "n/a",
) -> list[str]:
    """The end of a benchmark's `main`: print the rows (`markdown`, or `markdown_text` with `text`) and the wall
    time, then write `--out` (rows and `raw`) and `--append`. Returns the row lines."""
    lines = markdown_text(rows, script, device, nan=nan) if text else markdown(rows, script, device)
    print("\n".join(lines))
    print(f"total wall {wall_s:.1f} s", flush=True)
    write_outputs(lines, out=out, payload={"rows": rows, "raw": raw}, append=append)
    return lines


def markdown_text_recorded(
    rows: list[dict], script: str, device: str, stack: str, date: str, nan: str = "n/a"
) -> list[str]:
    """`markdown_text` for rows measured elsewhere or earlier (e.g. merged from saved runs on another machine): the
    `date`, `device` and `stack` ("torch / transformers" versions) are the runs' own, not this process's."""
    prefix = f"| {date} | {script} | {device} | {stack} |"

    def ratio(x: float) -> str:
        return nan if math.isnan(x) else f"{x:.3g}"

    return [
        f"{prefix} {r['case']} | {r['metric']} | {r['ours_text']} | {r['base_text']} | {ratio(r['ratio'])} |"
        for r in rows
    ]
