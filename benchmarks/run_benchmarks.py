"""Run benchmarks on a GPU machine and collect their rows: the headline cases (the default) or command files.

What it runs:

- no arguments: every headline speed / memory case, whose rows the README's headline table is generated from
  (`benchmarks/headline.py`). Each case is one `benchmarks/*_bench.py` in its own process with `--repeats N` (median
  and [min, max] of N repeats, ours beside the stock alternative) and `--append`. Most important first:
  Stable-SPAM, AlphaDecay, LIFT, SEFT, then CoE, NeuroTrails, LNS and the MEAP collator (CPU). Every case has a
  time budget (on one H100); the run stops starting cases at `--deadline-s` (7 minutes) and keeps going after a
  case fails. A case whose peak memory does not fit the card's free memory is skipped with a line saying what it
  needs (every case fits an 80 GB H100 and a 141 GB H200).
- `--commands FILE [FILE ...]`: any commands, one per line (blank lines and `#` comments skipped), run from the
  repository root; file i runs on GPU i, the files in parallel, each file's commands one after another.
- `--smoke`: the headline cases with `--smoke` (tiny shapes on the CPU, seconds each); nothing is appended.

Where results go: the scripts append their rows to `benchmarks/RESULTS.md`; the runner also copies every row
the run printed to `<log-dir>/rows.md`, and all output to `<log-dir>/run.log` (one section per command with its
exit status and wall time). `--log-dir` defaults to `benchmarks/logs/<date>-<time>/` (not tracked by git). At the
end: one line per case (status, wall time, budget); the exit status is 1 when a case failed or timed out.

    python benchmarks/run_benchmarks.py                          # the headline cases, one GPU, <= 7 minutes
    python benchmarks/run_benchmarks.py --only lift,seft --repeats 5
    python benchmarks/run_benchmarks.py --commands a.txt b.txt   # two command files on GPUs 0 and 1
    python benchmarks/headline.py --write                        # then regenerate the README's headline table
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| \d{4}-\d\d-\d\d \|")


@dataclasses.dataclass(frozen=True)
class Case:
    """One headline case: a benchmark script (run with its defaults), its time budget on one H100 (process start
    included) and the free GPU memory it needs (its measured peak plus a margin; 0: runs on the CPU)."""

    name: str
    script: str
    budget_s: int = 60
    need_gib: int = 0


CASES = (
    Case("stable_spam", "stable_spam_bench.py", budget_s=45, need_gib=16),
    Case("alphadecay", "alphadecay_bench.py", budget_s=60, need_gib=50),
    Case("lift", "lift_bench.py", budget_s=65, need_gib=62),
    Case("seft", "seft_bench.py", budget_s=70, need_gib=63),
    Case("coe", "coe_bench.py", budget_s=40, need_gib=24),
    Case("neurotrails", "neurotrails_bench.py", budget_s=35, need_gib=56),
    Case("lns", "lns_bench.py", budget_s=50, need_gib=56),
    Case("meap", "meap_bench.py", budget_s=25),
)


@dataclasses.dataclass
class Result:
    name: str
    status: str  # "ok", "failed (exit N)", "timed out after N s", "skipped: ..."
    wall_s: float = 0.0
    budget_s: int = 0
    rows: list[str] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status.startswith(("failed", "timed out"))


def _env(gpu: int | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


class Log:
    """`run.log` and `rows.md` of one run; sections are written whole, so parallel commands do not interleave."""

    def __init__(self, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log, self.rows = log_dir / "run.log", log_dir / "rows.md"
        self.lock = threading.Lock()

    def section(self, title: str, output: str, status: str, wall_s: float) -> list[str]:
        rows = [line for line in output.splitlines() if ROW.match(line)]
        with self.lock, self.log.open("a") as log:
            log.write(f"### {title}\n{output}### {status}, {wall_s:.1f} s\n\n")
            if rows:
                with self.rows.open("a") as f:
                    f.write("\n".join(rows) + "\n")
        return rows


def run_command(cmd: list[str] | str, timeout_s: float, env: dict) -> tuple[str, str, float]:
    """(output, status, wall seconds) of one command in its own process group, killed whole at the timeout."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, shell=isinstance(cmd, str), start_new_session=True
        )  # fmt: skip
        try:
            code = proc.wait(timeout=timeout_s)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout_s:.0f} s"
        out.seek(0)
        return out.read(), status, time.perf_counter() - t0


def gpu_info() -> tuple[str, float] | None:
    """(name, free GiB) of the first visible GPU from nvidia-smi, or None without one."""
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    name, free_mib = text.splitlines()[0].rsplit(",", 1)
    return name.strip(), float(free_mib) / 1024


def run_cases(cases, log: Log, *, smoke: bool, repeats: int, deadline_s: float, gpu=None) -> list[Result]:
    """Run `cases` one after another; a failure does not stop the run; cases are not started past the deadline."""
    start = time.perf_counter()
    results = []
    for case in cases:
        left = deadline_s - (time.perf_counter() - start) if deadline_s else float("inf")
        res = Result(case.name, "ok", budget_s=case.budget_s)
        if not smoke and gpu is not None and gpu[1] < case.need_gib:
            res.status = f"skipped: needs {case.need_gib} GiB of free GPU memory (an 80 GB H100 or larger); {gpu[0]} has {gpu[1]:.0f} GiB free"  # fmt: skip
        elif left < case.budget_s:
            res.status = (
                f"skipped: {left:.0f} s left before the {deadline_s:.0f}-s deadline, it needs ~{case.budget_s} s"
            )
        else:
            mode = ["--smoke"] if smoke else ["--append"]
            cmd = [sys.executable, str(Path("benchmarks") / case.script), "--repeats", str(repeats), *mode]
            print(f"[{case.name}] {shlex.join(cmd[1:])}  (budget {case.budget_s} s)", flush=True)
            timeout = min(left, 2 * case.budget_s) if not smoke else 10 * case.budget_s
            output, res.status, res.wall_s = run_command(cmd, timeout, _env())
            res.rows = log.section(f"{case.name}: {shlex.join(cmd[1:])}", output, res.status, res.wall_s)
            if res.failed:
                print(output[-3000:], flush=True)
        print(f"[{case.name}] {res.status}, {res.wall_s:.1f} s (budget {case.budget_s} s), {len(res.rows)} rows", flush=True)  # fmt: skip
        results.append(res)
    return results


def run_command_files(files: list[str], log: Log, timeout_s: float) -> list[Result]:
    """File i on GPU i, the files in parallel, each file's commands in order."""
    results: list[Result] = []

    def worker(gpu: int, path: str):
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            cmd = line.strip()
            if not cmd or cmd.startswith("#"):
                continue
            output, status, wall = run_command(cmd, timeout_s, _env(gpu))
            name = f"{Path(path).name}:{n} (GPU {gpu})"
            res = Result(name, status, wall, rows=log.section(f"{name}: {cmd}", output, status, wall))
            print(f"[{name}] {status}, {wall:.1f} s, {len(res.rows)} rows: {cmd}", flush=True)
            results.append(res)

    threads = [threading.Thread(target=worker, args=(i, f)) for i, f in enumerate(files)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the headline cases with --smoke on the CPU; nothing appended")
    p.add_argument("--only", default=None, help=f"comma-separated headline cases ({', '.join(c.name for c in CASES)})")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (default 3)")
    p.add_argument("--deadline-s", type=float, default=420, help="start no case past this many seconds (0: none)")
    p.add_argument("--commands", nargs="+", default=None, help="command files instead of the headline cases")
    p.add_argument("--timeout-s", type=float, default=600, help="per command of --commands (default 600)")
    p.add_argument("--log-dir", default=None, help="run.log and rows.md go here (default benchmarks/logs/<time>/)")
    args = p.parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    log = Log(Path(args.log_dir) if args.log_dir else ROOT / "benchmarks" / "logs" / stamp)
    t0 = time.perf_counter()
    if args.commands:
        results = run_command_files(args.commands, log, args.timeout_s)
    else:
        names = {c.name: c for c in CASES}
        wanted = args.only.split(",") if args.only else list(names)
        unknown = [n for n in wanted if n not in names]
        if unknown:
            p.error(f"unknown case(s) {unknown}; the headline cases are {list(names)}")
        gpu = None if args.smoke else gpu_info()
        if not args.smoke:
            print(f"GPU: {gpu[0]}, {gpu[1]:.0f} GiB free" if gpu else "no GPU found: the cases run on the CPU", flush=True)  # fmt: skip
        deadline = 0 if args.smoke else args.deadline_s
        results = run_cases([names[n] for n in wanted], log, smoke=args.smoke, repeats=args.repeats, deadline_s=deadline, gpu=gpu)  # fmt: skip
    summary = [f"{r.name:34s} {r.status:34s} {r.wall_s:7.1f} s" + (f" (budget {r.budget_s} s)" if r.budget_s else "") for r in results]  # fmt: skip
    summary.append(f"total {time.perf_counter() - t0:.1f} s; rows in {log.rows}, output in {log.log}")
    print("\n".join(summary), flush=True)
    with log.log.open("a") as f:
        f.write("### summary\n" + "\n".join(summary) + "\n")
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
