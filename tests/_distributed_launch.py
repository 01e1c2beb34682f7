"""Launch `hf_plugins.distributed.harness.run` in 2 CPU processes (gloo) and collect rank 0's results.

Processes are forked from the test process (the imports are already paid for; each child uses one thread, as
torch's DataLoader workers do, so a fork after OpenMP use is safe)."""

from __future__ import annotations

import os
import socket
import traceback

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, world: int, port: int, jobs: list, out_dir: str) -> None:
    import json

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    from hf_plugins.distributed.harness import run

    for i, cfg in enumerate(jobs):
        try:
            res = run(cfg)
            if local_rank == 0:
                save_file(res["state"], os.path.join(out_dir, f"{i}.safetensors"))
                with open(os.path.join(out_dir, f"{i}.json"), "w") as f:
                    json.dump({"losses": res["losses"], "ok": True}, f)
        except Exception:  # record and continue: the failures tested here are deterministic, alike on both ranks
            if local_rank == 0:
                with open(os.path.join(out_dir, f"{i}.json"), "w") as f:
                    json.dump({"ok": False, "error": traceback.format_exc()}, f)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def launch(jobs: list, out_dir: str, world: int = 2, timeout: float = 240.0) -> list[dict]:
    """Run every `RunConfig` in `jobs` in order in `world` processes; returns per job `{"ok", "losses", "state"}` or
    `{"ok": False, "error"}`."""
    import json
    import time

    ctx = mp.start_processes(
        _worker, args=(world, free_port(), jobs, out_dir), nprocs=world, start_method="fork", join=False
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
        if res["ok"]:
            res["state"] = load_file(os.path.join(out_dir, f"{i}.safetensors"))
        results.append(res)
    return results
