"""Every plugin on 2 GPUs (FSDP2, bf16, NCCL) against 1 GPU on the same global batches: loss agreement, resuming a
2-GPU checkpoint on 1 GPU, and scaling efficiency.

One command runs everything (it launches its own workers):

    python benchmarks/multigpu_fsdp.py [--append] [--out FILE.json]     # 2 H200s, ~0.5B Qwen2-shaped model
    python benchmarks/multigpu_fsdp.py --smoke                          # tiny models, 2 CPU processes (gloo)

Phase 1: `accelerate launch --num_processes 2` trains each plugin for `--steps` steps under FSDP2 (falling back to
DDP, and saying so in the row, only if FSDP2 fails) and writes a full-state checkpoint at half time.
Phase 2: one process on 1 GPU trains the same steps on the same global batches, then resumes the 2-GPU checkpoint.
Rows (RESULTS.md format), per plugin: max |loss(2 GPU) - loss(1 GPU)| over the steps, final losses, max |loss
after resuming the 2-GPU checkpoint on 1 GPU - 2-GPU loss|, tokens/s on 1 and 2 GPUs and scaling efficiency
(tokens/s on 2 GPUs / (2 x tokens/s on 1 GPU)). Models are built in code (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
FSDP2_REFUSED: tuple[str, ...] = ()  # every plugin supports FSDP2 (docs/distributed.md)


def _settings(args) -> dict:
    """Model size, steps, global batch, sequence length and lr of the run: the defaults, then the command line's."""
    if args.smoke:
        st = {"size": "tiny", "steps": 4, "global_batch": 4, "seq_len": 16, "lr": 3e-3}
    else:
        st = {"size": "bench", "steps": 12, "global_batch": 8, "seq_len": 512, "lr": 3e-4}
    overrides = (("steps", args.steps), ("seq_len", args.seq_len), ("global_batch", args.global_batch))
    st.update({k: v for k, v in overrides if v})
    return st


def worker(args) -> None:
    """Runs inside each launched process."""
    import torch

    import hf_plugins  # noqa: F401  (registers the models)
    from hf_plugins.distributed.harness import PLUGINS, RunConfig, run

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    st = _settings(args)
    mp = "no" if args.smoke else "bf16"
    plugins = args.plugins.split(",") if args.plugins else PLUGINS
    world = int(os.environ.get("WORLD_SIZE", 1))
    out = {}
    for plugin in plugins:
        ck = os.path.join(args.workdir, f"ck-{plugin}")
        common = dict(plugin=plugin, mixed_precision=mp, return_state=False, **st)
        try:
            if world > 1:
                mode = "ddp" if plugin in FSDP2_REFUSED else "fsdp2"
                try:
                    res = run(RunConfig(mode=mode, save_at=st["steps"] // 2, save_dir=ck, **common))
                except Exception as exc:  # deterministic, alike on both ranks (e.g. optimizer without DTensor support)
                    if mode != "fsdp2":
                        raise
                    mode = f"ddp; FSDP2 failed: {type(exc).__name__}"
                    res = run(RunConfig(mode="ddp", save_at=st["steps"] // 2, save_dir=ck, **common))
                out[plugin] = {"mode": mode, "losses": res["losses"], "tokens_per_s": res["tokens_per_s"]}
            else:
                res = run(RunConfig(mode="single", **common))
                resumed = run(RunConfig(mode="single", resume_from=ck, **common))
                out[plugin] = {
                    "losses": res["losses"],
                    "tokens_per_s": res["tokens_per_s"],
                    "resumed_losses": resumed["losses"],
                }
                shutil.rmtree(ck, ignore_errors=True)
        except Exception as exc:  # one plugin failing must not hide the others' rows
            out[plugin] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if int(os.environ.get("RANK", 0)) == 0:
        Path(args.workdir, f"world{world}.json").write_text(json.dumps(out))


def _launch(args, workdir: str, world: int) -> None:
    me = [str(Path(__file__).resolve()), "--worker", "--workdir", workdir]
    if args.smoke:
        me.append("--smoke")
    if args.plugins:
        me += ["--plugins", args.plugins]
    for flag, value in (("--steps", args.steps), ("--seq-len", args.seq_len), ("--global-batch", args.global_batch)):
        if value:
            me += [flag, str(value)]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if world == 1:
        cmd = [sys.executable, *me]
    elif args.smoke:  # 2 CPU processes over gloo
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *me]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
            "--mixed_precision", "bf16", "--num_machines", "1", "--dynamo_backend", "no", *me,
        ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def rows(two: dict, one: dict, device: str) -> list[str]:
    import _results

    prefix = _results.row_prefix("multigpu_fsdp.py", device)
    out = []

    def row(case, metric, ours, base="-", ratio="-"):
        out.append(f"{prefix} {case} | {metric} | {ours} | {base} | {ratio} |")

    from hf_plugins.distributed.harness import PLUGINS

    for plugin in sorted(one.keys() | two.keys(), key=lambda p: PLUGINS.index(p) if p in PLUGINS else 99):
        a, b = two.get(plugin, {}), one.get(plugin, {})
        if "error" in a or "error" in b or not a or not b:
            row(plugin, "error", a.get("error", "") or "missing", b.get("error", "") or "missing")
            continue
        case = f"{plugin} ({a['mode']}, 2 vs 1 GPU)"
        diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
        row(case, "max abs loss diff, 2 GPU vs 1 GPU", f"{diff:.4f}")
        row(
            case,
            "final loss",
            f"{a['losses'][-1]:.4f}",
            f"{b['losses'][-1]:.4f}",
            f"{a['losses'][-1] / b['losses'][-1]:.4f}",
        )
        half = len(a["losses"]) - len(b["resumed_losses"])
        rdiff = max(abs(x - y) for x, y in zip(b["resumed_losses"], a["losses"][half:]))
        row(case, "max abs loss diff, 2-GPU ckpt resumed on 1 GPU vs 2-GPU run", f"{rdiff:.4f}")
        eff = a["tokens_per_s"] / (2 * b["tokens_per_s"])
        row(case, "tokens/s (2 GPU vs 1 GPU); ratio = scaling efficiency", f"{a['tokens_per_s']:.0f}",
            f"{b['tokens_per_s']:.0f}", f"{eff:.3f}")  # fmt: skip
        row(case, "loss curve 2GPU", " ".join(f"{x:.3f}" for x in a["losses"]))
        row(case, "loss curve 1GPU", " ".join(f"{x:.3f}" for x in b["losses"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU, 2 gloo processes")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    p.add_argument("--out", help="write all results as JSON")
    p.add_argument("--plugins", help="comma-separated subset of the plugins")
    p.add_argument("--steps", type=int, help="override the number of steps (default 12; smoke 4)")
    p.add_argument("--seq-len", type=int, help="override the sequence length (default 512; smoke 16)")
    p.add_argument("--global-batch", type=int, help="override the global batch in sequences (default 8; smoke 4)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import _results
    import torch

    workdir = tempfile.mkdtemp(prefix="multigpu_fsdp_")
    try:
        _launch(args, workdir, 2)
        _launch(args, workdir, 1)
        two = json.loads(Path(workdir, "world2.json").read_text())
        one = json.loads(Path(workdir, "world1.json").read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    st = _settings(args)
    shape = f"{st['size']} model, {st['steps']} steps, global batch {st['global_batch']}x{st['seq_len']}"
    device = f"cpu (2 gloo procs; {shape})" if args.smoke else f"2x {torch.cuda.get_device_name(0)} ({shape})"
    out = rows(two, one, device)
    print("\n".join(out))
    _results.write_outputs(out, out=args.out, payload={"two": two, "one": one, "rows": out}, append=args.append and not args.smoke)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
