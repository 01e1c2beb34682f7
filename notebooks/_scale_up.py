"""The "Scale it up" cell shared by the walkthrough notebooks (imported from the notebooks' folder).

`print_scale_up(scripts, keyword)` prints the description (module docstring) of each GPU benchmark script in
`benchmarks/` and every row of `benchmarks/RESULTS.md` that one of those scripts wrote, plus the rows of the shared
pre-training harness (`pretrain.py`) whose case names `keyword`.
"""

from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
HEADER = "| date | script | device | torch / transformers | case | metric | ours | baseline | ratio |"


def results_rows(results: Path, scripts: list[str], keyword: str) -> list[str]:
    """The table rows of `results` (a RESULTS.md) measured by `scripts`, or naming `keyword` in the script column,
    or pre-training rows whose case names `keyword`."""
    stems, rows = {Path(s).stem for s in scripts}, []
    for line in results.read_text().splitlines() if results.exists() else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 9 or cells[0] == "date" or set(cells[0]) <= set("-: "):
            continue
        script = Path(cells[1].split()[0]).stem if cells[1] else ""
        named = script in stems or keyword in cells[1].lower()
        if named or (script == "pretrain" and keyword in cells[4].lower()):
            rows.append(line)
    return rows


def print_scale_up(scripts: list[str], keyword: str, root: Path = REPO) -> None:
    for script in scripts:
        path = root / "benchmarks" / script
        if path.exists():
            print(f"=== python benchmarks/{script}\n")
            print(ast.get_docstring(ast.parse(path.read_text())), "\n")
        else:
            print(f"benchmarks/{script} is not in this checkout")
    rows = results_rows(root / "benchmarks" / "RESULTS.md", scripts, keyword)
    if rows:
        print(f"{len(rows)} measured row(s) in benchmarks/RESULTS.md:\n")
        print(HEADER)
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))
    else:
        print(f"No measured rows for {', '.join(scripts) or keyword} are recorded in benchmarks/RESULTS.md yet.")
