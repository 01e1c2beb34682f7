"""Learning-rate sweeps with seeds for the quality checks: a method and its baselines, each at its own tuned rate.

Protocol, per comparison group (e.g. a model depth, a sparsity, a precision setting) and per arm (the method or a
baseline):
1. sweep: every learning rate of the arm's grid at the first seed (`--seeds`, default 0 1 2);
2. extend: while the best rate is the smallest or the largest one swept, add the next rate beyond it (the grid's
   ratio), at most `--extend` times, so a best rate at the edge of the range is either confirmed or moved;
3. seeds: the other seeds at the chosen rate (the sweep's run at that rate is the first seed's);
4. merge: mean [min, max] over the seeds of every reported metric, RESULTS.md rows (one per metric and baseline,
   plus the whole sweep), a JSON of every run with its curves, a markdown table for the docs and a plot.
"Best" is the lowest value of `Plan.select` on the validation split (highest for keys in `higher_is_better`), ties
broken by `Plan.tie_break` (`_sweep_common.best_lr`); a run whose selection value is not finite (diverged) is the
worst. Reported metrics are measured on a separate test split, so the selection does not flatter the reported
numbers.

Each run is one JSON file `<work-dir>/runs/<group>__<arm>__lr<lr>__s<seed>.json` written when the run ends. A run
whose file exists is not repeated, so a stopped job resumes where it stopped and several processes can share the
work on one device:
- `--jobs N`: N worker processes, one (group, arm) lane each (a lane needs no other lane: an arm's rate is chosen
  from its own sweep), the most expensive lanes first; the parent merges when all are done.
- by hand: `--groups G --arms A --no-merge` per process (or `--phase sweep --lrs ...` to split one sweep, then
  `--phase seeds`), and `--merge` at the end. `--merge` also re-draws the plot from copied runs elsewhere.
A run that raises is written to `<work-dir>/errors/` and the lane goes on; it is retried the next time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _results  # benchmarks/_results.py
import _sweep_common as common  # benchmarks/_sweep_common.py
from _sweep_common import lr_key, ratio, seed_stats, spread_text


@dataclass
class Plan:
    """What a quality script sweeps and reports.

    `groups` maps group -> arm -> learning-rate grid; `optional` holds arms run only when `--arms` names them.
    `ours` is the method's arm; each other arm of a group is a baseline it is compared with. `metrics(group)` lists
    the `(record key, label)` pairs reported as mean [min, max] over the seeds at the chosen rate.
    """

    script: str
    path: Path
    groups: dict[str, dict[str, list[float]]]
    ours: str
    select: str
    select_label: str
    metrics: Callable[[str], list[tuple[str, str]]]
    case: Callable[[str], str]
    higher_is_better: frozenset = frozenset()
    tie_break: str | None = None
    optional: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    curve_label: str = "validation loss"
    cost: Callable[[str, str], float] = lambda group, arm: 1.0
    prepare: Callable[[argparse.Namespace], None] | None = None
    extra_rows: Callable[[dict, argparse.Namespace], list[dict]] | None = None
    extra_plot: Callable[[dict, argparse.Namespace, str], list[str]] | None = None
    protocol: str = ""

    def label(self, arm: str) -> str:
        return self.labels.get(arm, arm)

    def grid(self, group: str, arm: str) -> list[float]:
        return self.groups[group].get(arm) or self.optional.get(group, {})[arm]


def add_arguments(p: argparse.ArgumentParser, plan: Plan) -> None:
    g = p.add_argument_group("sweep (benchmarks/_sweep.py)")
    g.add_argument(
        "--work-dir", default=None, help="runs, logs and outputs (default sweeps/<script>; smoke: a temp dir)"
    )
    g.add_argument(
        "--groups", nargs="+", default=None, help=f"comparison groups to run (default all: {list(plan.groups)})"
    )
    g.add_argument("--arms", nargs="+", default=None, help="arms to run (default all but the optional ones)")
    g.add_argument("--lrs", type=float, nargs="+", default=None, help="learning rates to sweep instead of the grids")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds; the first one is the sweep's")
    g.add_argument("--extend", type=int, default=1, help="rates added beyond a best rate at the edge of the sweep")
    g.add_argument(
        "--phase", default="all", choices=["all", "sweep", "seeds"], help="sweep: grid only; seeds: extend + seeds"
    )
    g.add_argument("--jobs", type=int, default=1, help="worker processes (one group/arm lane each), then merge")
    g.add_argument("--merge", action="store_true", help="only merge the runs found in --work-dir")
    g.add_argument("--no-merge", action="store_true", help="run, but leave the merge to a later --merge")
    g.add_argument("--out", default=None, help="JSON of rows, summary and every run (default <work-dir>/summary.json)")
    g.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    g.add_argument(
        "--plot", default=None, help='PNG of the sweep and the curves (default <work-dir>/<script>.png; "": none)'
    )
    g.add_argument("--snippet", default=None, help="markdown table for the docs (default <work-dir>/<script>.md)")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def work_dir(plan: Plan, args) -> Path:
    if args.work_dir is None:
        stem = Path(plan.script).stem
        smoke = getattr(args, "smoke", False)
        args.work_dir = tempfile.mkdtemp(prefix=f"{stem}-smoke-") if smoke else str(Path("sweeps") / stem)
    path = Path(args.work_dir)
    (path / "runs").mkdir(parents=True, exist_ok=True)
    return path


def lanes(plan: Plan, args) -> list[tuple[str, str]]:
    unknown = sorted(set(args.groups or []) - set(plan.groups))
    if unknown:
        raise SystemExit(f"--groups: unknown {unknown}; choose from {list(plan.groups)}")
    out = []
    for group in args.groups or plan.groups:
        arms = [a for a in plan.groups[group] if not args.arms or a in args.arms]
        arms += [a for a in plan.optional.get(group, {}) if args.arms and a in args.arms]
        out += [(group, arm) for arm in arms]
    known = {a for g in plan.groups for a in (*plan.groups[g], *plan.optional.get(g, {}))}
    if args.arms and set(args.arms) - known:
        raise SystemExit(f"--arms: unknown {sorted(set(args.arms) - known)}; choose from {sorted(known)}")
    return out


def _path(root: Path, group: str, arm: str, lr: float, seed: int, kind: str = "runs") -> Path:
    return root / kind / f"{slug(group)}__{slug(arm)}__lr{lr_key(lr)}__s{seed}.json"


def load_records(root: Path) -> list[dict]:
    records = []
    for path in sorted((root / "runs").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            print(f"skipping unreadable run {path}", flush=True)
    return records


def sweep_records(records: list[dict], group: str, arm: str, seed: int) -> list[dict]:
    """The first seed's runs of one lane, one per learning rate, by rate."""
    by_lr = {lr_key(r["lr"]): r for r in records if r["group"] == group and r["arm"] == arm and r["seed"] == seed}
    return sorted(by_lr.values(), key=lambda r: r["lr"])


def best_lr(plan: Plan, swept: list[dict]) -> float | None:
    """The chosen rate of a lane's sweep (`sweep_records`: by rate): see the module docstring."""
    scores = {r["lr"]: r.get(plan.select) for r in swept}
    ties = {r["lr"]: r.get(plan.tie_break) for r in swept} if plan.tie_break else None
    return common.best_lr(scores, higher=plan.select in plan.higher_is_better, ties=ties)


def _ensure(plan, args, root, group, arm, lr, seed, run_unit) -> dict | None:
    path = _path(root, group, arm, lr, seed)
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[{group} / {arm}] lr {lr_key(lr)} seed {seed}: start", flush=True)
    t0 = time.perf_counter()
    try:
        record = dict(run_unit(group, arm, lr, seed, args))
    except Exception as exc:  # one failed run (e.g. out of memory) must not stop the other lanes
        err = _path(root, group, arm, lr, seed, "errors")
        err.parent.mkdir(parents=True, exist_ok=True)
        err.write_text(json.dumps({"group": group, "arm": arm, "lr": lr, "seed": seed, "error": repr(exc),
                                   "traceback": traceback.format_exc()}, indent=1))  # fmt: skip
        print(f"[{group} / {arm}] lr {lr_key(lr)} seed {seed}: FAILED {exc!r} ({err})", flush=True)
        return None
    record.update(group=group, arm=arm, lr=lr, seed=seed, seconds=time.perf_counter() - t0)
    record.setdefault("date", datetime.date.today().isoformat())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=float))
    os.replace(tmp, path)
    shown = ", ".join(f"{k} {record[k]:.4g}" for k, _ in plan.metrics(group)[:2] if isinstance(record.get(k), float))
    print(f"[{group} / {arm}] lr {lr_key(lr)} seed {seed}: {plan.select} {record.get(plan.select)!r}, {shown} "
          f"({record['seconds']:.1f} s)", flush=True)  # fmt: skip
    return record


def run_lane(plan: Plan, args, root: Path, group: str, arm: str, run_unit) -> None:
    """Sweep, extend and seed one (group, arm) lane; see the module docstring."""
    grid = sorted(args.lrs or plan.grid(group, arm))
    first = args.seeds[0]
    if args.phase in ("all", "sweep"):
        for lr in grid:
            _ensure(plan, args, root, group, arm, lr, first, run_unit)
    if args.phase == "sweep":
        return
    up = grid[-1] / grid[-2] if len(grid) > 1 else 2.0
    down = grid[1] / grid[0] if len(grid) > 1 else 2.0
    for _ in range(args.extend):
        swept = sweep_records(load_records(root), group, arm, first)
        best = best_lr(plan, swept)
        if best is None or len(swept) < 2:
            break
        if best == swept[0]["lr"]:
            new = float(lr_key(best / down))
        elif best == swept[-1]["lr"]:
            new = float(lr_key(best * up))
        else:
            break
        print(f"[{group} / {arm}] best rate {lr_key(best)} is at the edge of the sweep: adding {lr_key(new)}")
        if _ensure(plan, args, root, group, arm, new, first, run_unit) is None:
            break
    best = best_lr(plan, sweep_records(load_records(root), group, arm, first))
    if best is None:
        print(f"[{group} / {arm}] no finished sweep run: no seeds to run", flush=True)
        return
    for seed in args.seeds[1:]:
        _ensure(plan, args, root, group, arm, best, seed, run_unit)


def _strip(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def spawn(plan: Plan, args, root: Path, argv: list[str], todo: list[tuple[str, str]]) -> int:
    """Run the lanes in `args.jobs` worker processes on this machine; returns the number of failed workers."""
    base = _strip(argv, ("--jobs", "--work-dir"))  # a later --groups / --arms overrides the user's (argparse)
    pending = sorted(todo, key=lambda lane: -plan.cost(*lane))
    running, failed = [], 0
    (root / "logs").mkdir(exist_ok=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            group, arm = pending.pop(0)
            cmd = [sys.executable, str(plan.path), *base, "--jobs", "1", "--no-merge", "--work-dir", str(root),
                   "--groups", group, "--arms", arm]  # fmt: skip
            log = open(root / "logs" / f"{slug(group)}__{slug(arm)}.log", "w")  # noqa: SIM115 (closed below)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), group, arm, log,
                            time.perf_counter()))  # fmt: skip
            print(f"worker for {group} / {arm} started (log {log.name})", flush=True)
        time.sleep(0.2)
        for item in list(running):
            proc, group, arm, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            failed += proc.returncode != 0
            print(
                f"worker for {group} / {arm}: exit {proc.returncode} after {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    return failed


def run(plan: Plan, args, run_unit: Callable[..., dict], argv: list[str]) -> int:
    """The sweep's `main`: run the selected lanes (here or in `--jobs` workers), then merge."""
    root = work_dir(plan, args)
    if args.merge:
        merge(plan, args, root)
        return 0
    todo = lanes(plan, args)
    if plan.prepare is not None:
        plan.prepare(args)
    t0 = time.perf_counter()
    failed = 0
    if args.jobs > 1:
        failed = spawn(plan, args, root, argv, todo)
    else:
        for group, arm in todo:
            run_lane(plan, args, root, group, arm, run_unit)
    print(f"runs done in {time.perf_counter() - t0:.0f} s; work dir {root}", flush=True)
    if not args.no_merge:
        merge(plan, args, root)
    errors = list((root / "errors").glob("*.json")) if (root / "errors").is_dir() else []
    errors = [e for e in errors if not (root / "runs" / e.name).is_file()]
    if errors:
        print(f"{len(errors)} run(s) failed: see {root / 'errors'}", flush=True)
    return 1 if failed or errors else 0


def summarize(plan: Plan, records: list[dict], seeds: list[int]) -> dict:
    """{group: {arm: {sweep, best_lr, edge, seeds, metrics: {key: mean/min/max/values/n}, best_runs}}}."""
    out: dict = {}
    first = seeds[0]
    for group in plan.groups:
        for arm in sorted({r["arm"] for r in records if r["group"] == group}, key=lambda a: (a != plan.ours, a)):
            swept = sweep_records(records, group, arm, first)
            best = best_lr(plan, swept)
            if best is None:
                continue
            runs = sorted(
                (r for r in records if r["group"] == group and r["arm"] == arm and lr_key(r["lr"]) == lr_key(best)
                 and r["seed"] in seeds),
                key=lambda r: seeds.index(r["seed"]),
            )  # fmt: skip
            out.setdefault(group, {})[arm] = {
                "sweep": [{"lr": r["lr"], "value": r.get(plan.select), "tie": r.get(plan.tie_break)} for r in swept],
                "best_lr": best,
                "edge": len(swept) > 1 and best in (swept[0]["lr"], swept[-1]["lr"]),
                "seeds": [r["seed"] for r in runs],
                "metrics": {
                    k: seed_stats([r.get(k, math.nan) for r in runs], keep_values=True) for k, _ in plan.metrics(group)
                },
                "best_runs": runs,
            }
    return out


def mmm(s: dict) -> str:
    """`mean [min, max]` of `seed_stats`, 4 significant digits (one value: the value alone)."""
    return spread_text(s, fmt=lambda x: _results.fmt(float(x)), one_value=True)


def sweep_text(lane: dict) -> str:
    """`lr: value` per swept rate, the chosen one starred."""
    value = lambda v: "n/a" if v is None else _results.fmt(float(v))  # noqa: E731
    return common.sweep_text({s["lr"]: s["value"] for s in lane["sweep"]}, lane["best_lr"], fmt=value)


def rows(plan: Plan, summary: dict, seeds: list[int]) -> list[dict]:
    out = []
    for group, arms in summary.items():
        ours = arms.get(plan.ours)
        if ours is None:
            continue
        for base_arm, base in arms.items():
            if base_arm == plan.ours:
                continue
            lo, lb = plan.label(plan.ours), plan.label(base_arm)
            case = (f"{plan.case(group)}; lr chosen on validation: {lo} {lr_key(ours['best_lr'])}, {lb} "
                    f"{lr_key(base['best_lr'])}; seeds {','.join(map(str, ours['seeds']))} / "
                    f"{','.join(map(str, base['seeds']))}")  # fmt: skip
            for key, label in plan.metrics(group):
                o, b = ours["metrics"][key], base["metrics"][key]
                out.append({"case": case, "metric": f"{label}, mean [min, max], {lo} vs {lb}",
                            "ours_text": mmm(o), "base_text": mmm(b), "ratio": ratio(o["mean"], b["mean"])})  # fmt: skip
            vo = next((s["value"] for s in ours["sweep"] if s["lr"] == ours["best_lr"]), None)
            vb = next((s["value"] for s in base["sweep"] if s["lr"] == base["best_lr"]), None)
            metric = f"{plan.select_label} per lr, seed {seeds[0]} (* chosen), {lo} vs {lb}"
            out.append({"case": case, "metric": metric, "ours_text": sweep_text(ours), "base_text": sweep_text(base),
                        "ratio": ratio(vo, vb)})  # fmt: skip
    return out


def _link(path: str) -> str:
    """A figure under docs/ as linked from the docs pages' folder; any other path as given."""
    parts = Path(path).parts
    return "/".join(parts[len(parts) - parts[::-1].index("docs") :]) if "docs" in parts else path


def snippet(plan: Plan, summary: dict, seeds: list[int], device: str, date: str, plots: list[str]) -> str:
    """A markdown block for the method's docs page: per group, each arm's sweep, chosen rate and reported metrics."""
    lines = [f"<!-- written by benchmarks/{plan.script} (merge of the saved runs); {device}, {date} -->", ""]
    if plan.protocol:
        lines += [plan.protocol, ""]
    for group, arms in summary.items():
        keys = plan.metrics(group)
        lines += [f"**{plan.case(group)}**", ""]
        head = ["arm", f"{plan.select_label} by learning rate (seed {seeds[0]}; * chosen)", "chosen lr", "seeds"]
        head += [f"{label}, mean [min, max]" for _, label in keys]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm, lane in arms.items():
            cells = [plan.label(arm), sweep_text(lane), lr_key(lane["best_lr"]), ", ".join(map(str, lane["seeds"]))]
            cells += [mmm(lane["metrics"][k]) for k, _ in keys]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"{plan.label(a)}: the chosen rate is at the edge of the rates swept" for a, ln in arms.items()
                 if ln["edge"]]  # fmt: skip
        notes += [f"{plan.label(a)}: {len(ln['seeds'])} of {len(seeds)} seeds finished" for a, ln in arms.items()
                  if len(ln["seeds"]) < len(seeds)]  # fmt: skip
        lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += [f"![{Path(p).stem}]({_link(p)})\n" for p in plots]
    return "\n".join(lines)


def plot_summary(plan: Plan, summary: dict, path: str) -> str | None:
    """Per group: the selection metric against the learning rate (seed 0, and the seeds' range at the chosen rate)
    and the curves of every seed at the chosen rate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (run --merge again where it is)", flush=True)
        return None
    groups = list(summary)
    if not groups:
        return None
    fig, axes = plt.subplots(2, len(groups), figsize=(5.2 * len(groups), 7.4), squeeze=False)
    for j, group in enumerate(groups):
        top, bottom = axes[0][j], axes[1][j]
        for k, (arm, lane) in enumerate(summary[group].items()):
            color = f"C{k}"
            pts = [
                (s["lr"], s["value"]) for s in lane["sweep"] if s["value"] is not None and math.isfinite(s["value"])
            ]
            if pts:
                top.plot(*zip(*pts), marker="o", color=color, label=plan.label(arm))
            sel = [r.get(plan.select) for r in lane["best_runs"]]
            sel = [v for v in sel if v is not None and math.isfinite(v)]
            if sel:
                top.vlines(lane["best_lr"], min(sel), max(sel), color=color, lw=3, alpha=0.5)
            for i, r in enumerate(lane["best_runs"]):
                curve = r.get("curve") or []
                if curve:
                    label = f"{plan.label(arm)} lr {lr_key(lane['best_lr'])}" if i == 0 else None
                    bottom.plot(*zip(*curve), color=color, ls=("-", "--", ":", "-.")[i % 4], lw=1.2, label=label)
        top.set(xscale="log", xlabel="learning rate", ylabel=plan.select_label)
        top.set_title(textwrap.fill(plan.case(group), 70), fontsize=7)
        bottom.set(xlabel="step", ylabel=plan.curve_label, title="chosen rate, every seed")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge(plan: Plan, args, root: Path) -> list[str]:
    """Rows, JSON, markdown and plot from every run saved under `root`."""
    records = load_records(root)
    if not records:
        print(f"no runs under {root / 'runs'}", flush=True)
        return []
    summary = summarize(plan, records, args.seeds)
    table = rows(plan, summary, args.seeds)
    if plan.extra_rows is not None:
        table += plan.extra_rows(summary, args)
    device = " + ".join(sorted({str(r.get("device", "n/a")) for r in records}))
    stack = " + ".join(sorted({str(r.get("stack", "n/a")) for r in records}))
    date = max(str(r.get("date", "")) for r in records)
    lines = _results.markdown_recorded(table, plan.script, device, stack, date)
    print("\n".join(lines), flush=True)
    stem = Path(plan.script).stem
    plots = []
    plot_path = str(root / f"{stem}.png") if args.plot is None else args.plot  # "": no plot
    if plot_path and plot_summary(plan, summary, plot_path):
        plots.append(plot_path)
    if plot_path and plan.extra_plot is not None:
        plots += plan.extra_plot(summary, args, plot_path)
    snippet_path = Path(args.snippet or root / f"{stem}.md")
    snippet_path.parent.mkdir(parents=True, exist_ok=True)
    snippet_path.write_text(snippet(plan, summary, args.seeds, device, date, plots))
    out = args.out or str(root / "summary.json")
    lean = {g: {a: {k: v for k, v in lane.items() if k != "best_runs"} for a, lane in arms.items()}
            for g, arms in summary.items()}  # fmt: skip
    payload = {"script": plan.script, "seeds": args.seeds, "rows": table, "lines": lines, "plots": plots,
               "summary": lean, "records": records}  # fmt: skip
    _results.write_outputs(lines, out=out, payload=payload, append=args.append, default=float)
    print(f"merged {len(records)} runs: {out}, {snippet_path}" + (f", {', '.join(plots)}" if plots else ""))
    return lines
