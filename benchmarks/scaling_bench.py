"""Scaling of every plugin and stock baseline from 1 to N GPUs under DDP and FSDP2: steady-state tokens/s, scaling
efficiency, peak memory per GPU, loss parity with one GPU over the same global batches, and a checkpoint written by N
GPUs resumed on 1.

    python benchmarks/scaling_bench.py --nproc 1,2 [--cases lift,lora] [--append] [--out FILE.json]
    python benchmarks/scaling_bench.py --nproc 1                         # the 1-GPU arm alone
    python benchmarks/scaling_bench.py --smoke                           # tiny models, 1 and 2 CPU processes (gloo)

Throughput arm, per case (`_dist_harness.CASES`), mode (DDP, FSDP2) and process count N: the model of the
Qwen2-0.5B shape (`_results.QWEN2_05B`; CoE and NeuroTrails: 12 layers), bf16 (DDP: autocast over fp32 weights;
FSDP2: bf16 parameters, fp32 gradient reduction; the same code for N = 1), a per-GPU batch of `--batch` x `--seq-len`
(default 8 x 2048) of random tokens, `--warmup` untimed steps then `--steps` timed ones, each plugin at its default
refresh interval (LIFT 400, SEFT 20 with its 5-step grow window, AlphaDecay 500, NeuroTrails 50: the refreshes
falling in the timed window are in the number, amortised as in training). Every batch is on the device before the
first step, the host waits for the device only before and after the timed steps (no per-step synchronisation, so the
host runs ahead as in training), and the losses are read after the last step. tokens/s = timed tokens (all ranks) /
timed seconds, `--repeats` independent runs (median [min, max]). Scaling efficiency = tokens/s on N GPUs / (N x tokens/s
on 1 GPU), per repeat pair. Peak memory: `max_memory_allocated` of rank 0.

Parity arm (N > 1): `--parity-steps` steps (a refresh at half time) on a global batch of N x `--parity-batch` rows
on N GPUs, writing a full-state checkpoint at half time; then one process on one GPU trains the same global batches
and resumes the N-GPU checkpoint. Rows: max |loss(N GPUs) - loss(1 GPU)| and max |loss(resumed on 1) - loss(N)| (fp32
losses of bf16 training).

Each process count runs in its own `torchrun` (GPU) or forked gloo group (`--smoke`). Runtime on one H100, per case
and mode, about 25 s per repeat at the defaults (model build, mask / decay set-up, 35 steps).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (HERE, ROOT):  # the harness beside this file; the repository's hf_plugins before an installed one
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import _results  # noqa: E402
from _dist_harness import CASES, RunConfig  # noqa: E402


SCRIPT = "scaling_bench.py"
MODES = ("ddp", "fsdp2")
INTERVALS = {"lift": 400, "seft": 20, "alphadecay": 500, "neurotrails": 50}  # the methods' default intervals


def _settings(args) -> dict:
    if args.smoke:
        return {
            "size": "tiny",
            "batch": 2,
            "seq_len": 16,
            "warmup": 1,
            "steps": 3,
            "parity_steps": 4,
            "parity_batch": 2,
        }
    return {
        "size": args.size,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "warmup": args.warmup,
        "steps": args.steps,
        "parity_steps": args.parity_steps,
        "parity_batch": args.parity_batch,
    }


def _jobs(args, st: dict, world: int, workdir: str) -> list[dict]:
    """Every run of one process count: the throughput repeats, then (N > 1) the parity runs."""
    mp = "no" if args.smoke else "bf16"
    cases = args.cases.split(",") if args.cases else list(CASES)
    modes = args.modes.split(",")
    jobs = []
    for case in cases:
        for mode in modes:
            for rep in range(args.repeats):
                cfg = RunConfig(
                    case,
                    mode=mode,
                    size=st["size"],
                    steps=st["warmup"] + st["steps"],
                    global_batch=st["batch"] * world,
                    seq_len=st["seq_len"],
                    lr=3e-3 if args.smoke else 3e-4,
                    interval=None if args.smoke else INTERVALS.get(case),
                    mixed_precision=mp,
                    return_state=False,
                    timed_from=st["warmup"],
                    sync_each_step=False,  # the device runs ahead as in training; waited for around the window only
                )
                jobs.append({"arm": "throughput", "case": case, "mode": mode, "repeat": rep, "cfg": asdict(cfg)})
            if world > 1 and not args.no_parity:
                cfg = _parity_cfg(args, st, case, mode, world, workdir)
                jobs.append({"arm": "parity", "case": case, "mode": mode, "cfg": asdict(cfg)})
    return jobs


def _parity_cfg(args, st, case, mode, world, workdir) -> RunConfig:
    half = st["parity_steps"] // 2
    return RunConfig(
        case,
        mode=mode,
        size=st["size"],
        steps=st["parity_steps"],
        global_batch=st["parity_batch"] * world,
        seq_len=st["seq_len"],
        lr=3e-3 if args.smoke else 3e-4,
        interval=max(2, half),
        mixed_precision="no" if args.smoke else "bf16",
        save_at=half,
        save_dir=os.path.join(workdir, f"ck-{case}-{mode}-{world}"),
        return_state=False,
    )


def bench_job(job: dict) -> tuple[dict, None]:
    """One run on every rank; rank 0 reports its losses, step times and peak memory."""
    from _dist_harness import run

    res = run(RunConfig(**job["cfg"]))
    keep = ("losses", "step_kinds", "tokens_per_s", "window_s", "peak_gib", "world")
    return {**{k: job[k] for k in job if k != "cfg"}, **{k: res[k] for k in keep}, "cfg": job["cfg"]}, None


def _single_jobs(parity: list[dict]) -> list[dict]:
    """The 1-GPU references of the parity runs: the same global batches in one process, and the N-GPU checkpoint
    resumed there."""
    out = []
    for p in parity:
        cfg = dict(p["cfg"], mode="single", save_at=None, save_dir=None)
        out.append({"arm": "single", "case": p["case"], "mode": p["mode"], "world": p["world"], "cfg": cfg})
        resume = dict(cfg, resume_from=p["cfg"]["save_dir"])
        out.append({"arm": "resumed", "case": p["case"], "mode": p["mode"], "world": p["world"], "cfg": resume})
    return out


# ------------------------------------------------------------------------------------------------- launching


def worker(jobs_file: str, out_file: str) -> None:
    """Inside each torchrun process: every job in order; rank 0 writes the results."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    results = []
    for job in json.loads(Path(jobs_file).read_text()):
        try:
            results.append(bench_job(job)[0] | {"ok": True})
        except Exception as exc:  # one case failing must not hide the others' rows (deterministic: alike on ranks)
            results.append({**{k: job[k] for k in job if k != "cfg"}, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]})  # fmt: skip
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if int(os.environ.get("RANK", 0)) == 0:
        Path(out_file).write_text(json.dumps(results))


def _run_jobs(args, jobs: list[dict], world: int, workdir: str) -> list[dict]:
    if not jobs:
        return []
    if args.smoke:  # forked gloo processes (the imports of this process are reused)
        from _dist_launch import launch

        sub = tempfile.mkdtemp(dir=workdir)
        res = launch(jobs, sub, world=world, timeout=900, job=bench_job)
        return [r if r["ok"] else {**{k: j[k] for k in j if k != "cfg"}, **r} for r, j in zip(res, jobs)]
    jobs_file, out_file = (
        os.path.join(workdir, f"{name}-{world}-{time.monotonic_ns()}.json") for name in ("jobs", "out")
    )
    Path(jobs_file).write_text(json.dumps(jobs))
    me = [str(Path(__file__).resolve()), "--worker", jobs_file, out_file]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), *me]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(Path(out_file).read_text())


# ------------------------------------------------------------------------------------------------------ rows


def _tokens_per_s(res: dict, st: dict) -> float:
    return res["tokens_per_s"]  # tokens of the timed steps (all ranks) / their wall time


def rows(results: list[dict], st: dict, repeats: int) -> list[dict]:
    """RESULTS.md rows (`_results.row`) of all runs."""
    out = []
    shape = "tiny" if st["size"] == "tiny" else "Qwen2-0.5B shape"
    per_gpu = f"{st['batch']}x{st['seq_len']} per GPU"
    by = {}
    for r in results:
        by.setdefault((r["arm"], r["case"], r["mode"], r.get("world")), []).append(r)
    worlds = sorted({r["world"] for r in results if r["arm"] == "throughput" and r.get("ok")})
    for case in dict.fromkeys(r["case"] for r in results):
        for mode in MODES:
            base = [r for r in by.get(("throughput", case, mode, 1), []) if r["ok"]]
            for n in worlds:
                runs = [r for r in by.get(("throughput", case, mode, n), []) if r["ok"]]
                errors = [r["error"] for r in by.get(("throughput", case, mode, n), []) if not r["ok"]]
                label = f"{case} ({mode}, {n} GPU{'s' if n > 1 else ''}, {shape}, {per_gpu}, {st['steps']} timed steps, {repeats} repeats)"  # fmt: skip
                if errors:
                    out.append(_results.row(label, "error", errors[0], "-"))
                    continue
                if not runs:
                    continue
                tps = [_tokens_per_s(r, st) for r in runs]
                if n > 1 and len(base) == len(runs):  # ratio: the scaling efficiency, per repeat pair
                    one = [n * _tokens_per_s(r, st) for r in base]
                    metric = f"tokens/s on {n} GPUs vs {n} x tokens/s on 1 GPU; ratio = scaling efficiency"
                    out.append(_results.row(label, metric, tps, one))
                else:
                    out.append(_results.row(label, "tokens/s (all GPUs)", tps, "-"))
                out.append(_results.row(label, "peak memory per GPU, GiB", [r["peak_gib"] for r in runs], "-"))
            for n in worlds:
                par = [r for r in by.get(("parity", case, mode, n), []) if r["ok"]]
                one = [r for r in by.get(("single", case, mode, n), []) if r["ok"]]
                again = [r for r in by.get(("resumed", case, mode, n), []) if r["ok"]]
                if not (par and one and again):
                    continue
                label = f"{case} ({mode}, {n} GPUs vs 1, {shape}, global batch {par[0]['cfg']['global_batch']}x{st['seq_len']}, {st['parity_steps']} steps)"  # fmt: skip
                a, b, c = par[0]["losses"], one[0]["losses"], again[0]["losses"]
                out.append(_results.row(label, "max abs loss diff, N GPUs vs 1 GPU", max(abs(x - y) for x, y in zip(a, b)), "-"))  # fmt: skip
                tail = a[len(a) - len(c) :]
                out.append(_results.row(label, "max abs loss diff, N-GPU checkpoint resumed on 1 GPU vs N GPUs", max(abs(x - y) for x, y in zip(c, tail)), "-"))  # fmt: skip
    return out


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return 0
    p = _results.parser(__doc__)
    p.add_argument("--nproc", default="1,2", help="process (GPU) counts, comma-separated (default 1,2)")
    p.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--modes", default="ddp,fsdp2", help="ddp, fsdp2 or both (default)")
    p.add_argument("--batch", type=int, default=8, help="sequences per GPU (default 8)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--parity-steps", type=int, default=8, help="steps of the parity arm (default 8)")
    p.add_argument("--parity-batch", type=int, default=4, help="sequences per GPU in the parity arm (default 4)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity arm")
    p.add_argument("--size", default="bench", choices=("bench", "tiny"), help="model size (tiny: check the launch)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    if args.smoke:
        torch.set_num_threads(1)
    st = _settings(args)
    worlds = sorted(int(n) for n in args.nproc.split(","))
    if not args.smoke and torch.cuda.is_available() and worlds[-1] > torch.cuda.device_count():
        raise SystemExit(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPU(s) here")
    workdir = tempfile.mkdtemp(prefix="scaling_bench_")
    results = []
    try:
        for n in worlds:
            res = _run_jobs(args, _jobs(args, st, n, workdir), n, workdir)
            results += [dict(r, world=n) for r in res]
        parity = [r for r in results if r["arm"] == "parity" and r.get("ok")]
        results += [dict(r, world=j["world"]) for r, j in zip(_run_jobs(args, _single_jobs(parity), 1, workdir), _single_jobs(parity))]  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.smoke or not torch.cuda.is_available():
        device = f"{_results.cpu_name()} ({'smoke, ' if args.smoke else ''}gloo)"
    else:
        device = (
            f"{max(worlds)}x {torch.cuda.get_device_name(0)}" if max(worlds) > 1 else torch.cuda.get_device_name(0)
        )
    out = rows(results, st, args.repeats)
    raw = {"settings": st, "runs": [{k: v for k, v in r.items() if k != "step_kinds"} for r in results]}
    _results.report(out, raw, SCRIPT, device, time.perf_counter() - t0, args)
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
