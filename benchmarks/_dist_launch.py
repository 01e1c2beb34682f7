"""Run jobs in `world` CPU processes (gloo) forked from the calling process, and collect rank 0's results.

Forked from the caller, the processes share its imports (transformers and torch load once); each child uses one
thread, as torch's DataLoader workers do, so a fork after OpenMP use is safe. Used by `tests/test_distributed.py`,
`comm_account.py` and the `--smoke` mode of `scaling_bench.py`; on GPUs the benchmark launches with torchrun.

A job function `job(item) -> (json_dict, tensors or None)` runs on every rank; rank 0's result is kept.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Callable

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file


__all__ = ["free_port", "launch", "run_job"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(cfg) -> tuple[dict, dict]:
    """The default job: `_dist_harness.run(cfg)`; its losses and its full final state."""
    from _dist_harness import run

    res = run(cfg)
    return {"losses": res["losses"]}, res["state"]


def _worker(local_rank: int, world: int, port: int, jobs: list, out_dir: str, job: Callable) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    for i, item in enumerate(jobs):
        try:
            meta, tensors = job(item)
            if local_rank == 0:
                if tensors is not None:
                    save_file(tensors, os.path.join(out_dir, f"{i}.safetensors"))
                with open(os.path.join(out_dir, f"{i}.json"), "w") as f:
                    json.dump({**meta, "ok": True, "tensors": tensors is not None}, f)
        except Exception:  # record and continue: the failures tested here are deterministic, alike on both ranks
            if local_rank == 0:
                with open(os.path.join(out_dir, f"{i}.json"), "w") as f:
                    json.dump({"ok": False, "error": traceback.format_exc()}, f)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def launch(jobs: list, out_dir: str, world: int = 2, timeout: float = 240.0, job: Callable = run_job) -> list[dict]:
    """Run `job` on every item of `jobs`, in order, in `world` processes; returns per item rank 0's JSON dict with
    `"ok": True` (and its tensors under `"state"`), or `{"ok": False, "error"}`."""
    ctx = mp.start_processes(
        _worker, args=(world, free_port(), jobs, out_dir, job), nprocs=world, start_method="fork", join=False
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:  # a hung collective: kill our children, report what finished
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            break
    results = []
    for i in range(len(jobs)):
        if not os.path.exists(os.path.join(out_dir, f"{i}.json")):
            results.append({"ok": False, "error": f"timed out after {timeout} s (hung collective?)"})
            continue
        with open(os.path.join(out_dir, f"{i}.json")) as f:
            res = json.load(f)
        if res.pop("tensors", False):
            res["state"] = load_file(os.path.join(out_dir, f"{i}.safetensors"))
        results.append(res)
    return results
