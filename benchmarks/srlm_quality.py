"""SRLM quality check (arXiv 2506.13404 v3): SmolLM2-135M-Instruct on the arithmetic word problems trained by
base / SFT / KD / RL / SFT->RL / KD->RL / SFT->KD->RL at comparable compute, held-out accuracy over several seeds,
a table like the paper's (Qwen2.5-0.5B-Instruct on GSM8K: base 45.5%, RL 54.0%, SFT 30.9%), and per-update curves
of every RL stage (`--plot`).

Everything runs through the recipe: `hf_plugins.recipes.srlm.run_srlm` with `SrlmConfig` and its stage configs,
i.e. stock TRL 1.16 trainers (`SFTTrainer` for sft and for kd, `GRPOTrainer` without vLLM for rl).

Comparable compute. Every trained pipeline gets the same number of optimizer updates, `--updates` U (default 48),
split equally over its stages (SFT->KD->RL: U/3 each; SFT->RL: U/2 each), and every update sees the same number of
problems, `--problems-per-step` P (sft / kd: P worked solutions; rl: P prompts x G sampled completions). Tokens are
not equal: an RL update also generates G x P completions. Train tokens (TRL's `num_tokens`) and wall-clock per
pipeline are recorded next to the accuracy. The training problems are drawn once (`--num-problems` 400 >= U x P);
the seed changes the data order and the RL samples. Base is evaluated once (greedy decoding is seed-free).

Stages. sft: the task's own worked solutions (`... = 17.` lines, `#### 17`), lr 4e-5 (paper, full FT).
kd: sequence-level KD from the programmatic `ArithmeticTeacher` (exact step-by-step traces in another style,
`\\boxed{17}`), trained with `SFTTrainer` at the sft learning rate. rl: GRPO, G = `--num-generations` (8),
rewards = exact-answer correctness (1.0) + format (0.1), `loss_type="dapo"`, `scale_rewards="group"`, no KL
(TRL defaults), and these settings of ours (docs/srlm.md, "Why the RL stage did not learn"):
- sampling temperature `--rl-temperature` 0.7 (TRL: 1.0: the 135M model's samples are then mostly incoherent);
- completions of up to `--max-completion-length` 128 tokens (96 cut off 60% of the samples before any answer)
  with TRL's soft overlong punishment from `--overlong-cache` (32) tokens below the cap (DAPO Eq. 13): a signal
  that differs within most groups, where the correctness reward alone is equal in three groups of four;
- lr `--rl-lr` 3e-5 (TRL: 1e-6; at 1e-5 the clip ratio stayed 0 and greedy accuracy at base);
- one generate call of 8 x P prompts serves `--rl-updates-per-generation` (8) updates, each of
  `--rl-micro-batches` (4) accumulated micro-batches (GRPOConfig `steps_per_generation`; DAPO takes 16 updates
  per rollout batch; TRL's importance ratio and clipping correct for the lag, and the clip ratio is logged).
Full fine-tuning everywhere, fp32 weights with bf16 autocast on CUDA (TRL `bf16=True`).

Per RL update the recipe logs (its report's `rl_steps`): reward mean, reward std within groups, share of groups
with zero reward variance (no gradient), exact per-token KL from the stage's starting policy on a fixed probe,
completion length, truncated share and clip ratio; `--plot` draws them (benchmarks/srlm_report.py).

Evaluation: `--eval-size` (200) held-out problems, zero-shot, chat template, greedy, `--eval-max-new-tokens` (128).
Accuracy is lenient (any answer, down to the last number) and strict (a `####` or `\\boxed{}` answer), graded by
the rewards' extractor (`hf_plugins.rewards.answers`). Every stage of a hybrid is evaluated too.

Speed. The grid (6 trained pipelines x `--seeds` (3) + base = 19 runs) runs as `--jobs` (8) worker processes on
the one GPU, one CPU thread each; each loads the model once from a `save_pretrained` directory (the GGUF is
dequantised once by the parent) and runs its share of the runs, seeds 0-1 first, then the third seed.
`--deadline-s` (190) stops the workers and reports what finished (the JSON lists what was cut). `--jobs 0` runs
everything in this process (the smoke test).

    python benchmarks/srlm_quality.py --gguf-dir DIR --out srlm.json --plot docs/img/srlm_rl_curves.png
    python benchmarks/srlm_quality.py --model-dir DIR    # a save_pretrained directory of SmolLM2-135M-Instruct
    python benchmarks/srlm_quality.py --smoke            # tiny random Llama + tiny tokenizer on the CPU
    python benchmarks/srlm_quality.py --pipelines sft,kd --first-seed 2 --out s2.json     # a shard of the grid
    python benchmarks/srlm_quality.py --merge run.json s2.json WORK_DIR --out srlm.json   # one table of the shards
`--merge` takes `--out` files and the work folders (`srlm-quality-*`, printed at the start) of runs stopped before
they wrote one; the shards must share every setting but the pipelines, seeds and process layout.
Needs trl and datasets (carry wheels to the GPU image), `gguf` for a GGUF, matplotlib for `--plot` (else plot later
with `python benchmarks/srlm_report.py OUT.json --out PNG`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when a test loads this file
import _results  # noqa: E402
from _sweep_common import join_runs  # noqa: E402
from srlm_report import PIPELINES, aggregate, plot_rl_curves, result_rows, rl_summary, text_table  # noqa: E402


SCRIPT = "srlm_quality.py"


# ------------------------------------------------------------------------------------------------ the model
def _save_tiny(model_dir: Path) -> None:
    from hf_plugins.testing import tiny_llama, tiny_tokenizer

    model, tok = tiny_llama(), tiny_tokenizer()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)


def _save_smollm2(gguf: str | None, model_dir: Path) -> None:
    """Dequantise the GGUF once (fp32) and save it where the workers load it from."""
    from hf_plugins.models.smollm2 import SMOLLM2_GGUF, drop_gguf_quantizer, load_smollm2

    if gguf and Path(gguf).is_file() and Path(gguf).name != SMOLLM2_GGUF:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(gguf)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = drop_gguf_quantizer(AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        if gguf:
            os.environ["HF_PLUGINS_SMOLLM2_DIR"] = str(Path(gguf).parent if Path(gguf).is_file() else gguf)
        model, tok = load_smollm2()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)


def _load_dir(model_dir: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # fp32 master weights; TRL's bf16=True autocasts on CUDA (pure bf16 weights would round lr ~1e-5 updates away)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return model, tok


# ------------------------------------------------------------------------------------------------ the runs
def _split(updates: int, n_stages: int) -> int:
    return updates // n_stages if n_stages else 0


def _key(name: str) -> str:
    """ "SFT->KD->RL", "sft-kd-rl" and "sft+kd+rl" name the same pipeline (">" is awkward in a shell)."""
    return name.lower().replace(">", "").replace("+", "-")


def _plan(args) -> list[dict]:
    """One run per (pipeline, seed); base once. Each run lists its stages and the updates per stage."""
    known = {_key(name): name for name in PIPELINES}
    given = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    bad = [n for n in given if _key(n) not in known]
    if bad:
        raise SystemExit(f"unknown pipeline(s) {bad}; known: {', '.join(PIPELINES)} (or e.g. sft-kd-rl)")
    names = [known[_key(n)] for n in given]
    runs = []
    for name in names:
        stages = PIPELINES[name]
        seeds = range(args.first_seed, args.seeds) if stages else [0] if args.first_seed == 0 else []
        for seed in seeds:  # base is seed-free (greedy): it runs once, in the shard of the first seed
            runs.append({"pipeline": name, "stages": stages, "seed": seed, "steps": _split(args.updates, len(stages))})
    return runs


def _cost(run: dict) -> float:
    """Rough relative cost for scheduling (an RL update generates, ~10x an SFT update; an eval ~ 10 updates)."""
    per = {"sft": 1.0, "kd": 1.0, "rl": 10.0}
    return sum(per[s] * run["steps"] for s in run["stages"]) + 10.0 * max(len(run["stages"]), 1)


def _srlm_config(run: dict, args, output_dir: str, cuda: bool):
    from hf_plugins.recipes.srlm import KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig

    steps = max(run["steps"], 1)
    sft = {"max_steps": steps, "per_device_train_batch_size": args.problems_per_step, "max_length": args.max_length}
    return SrlmConfig(
        stages=run["stages"],
        sft=SftStageConfig(**sft, learning_rate=args.sft_lr),
        kd=KdStageConfig(**sft, learning_rate=args.sft_lr, kind="sequence", teacher="arithmetic"),
        rl=RlStageConfig(
            max_steps=steps,
            learning_rate=args.rl_lr,
            num_generations=args.num_generations,
            # one update = rl_micro_batches micro-batches of (P / micro) prompts x G completions (memory: several
            # processes share the GPU); one generate call serves rl_updates_per_generation updates
            prompts_per_step=args.problems_per_step // args.rl_micro_batches,
            max_completion_length=args.max_completion_length,
            temperature=args.rl_temperature,
            probe_size=args.probe_size,
            overlong_punishment=(args.max_completion_length, args.overlong_cache) if args.overlong_cache else None,
            trainer_kwargs={
                "gradient_accumulation_steps": args.rl_micro_batches,
                "steps_per_generation": args.rl_micro_batches * args.rl_updates_per_generation,
            },
        ),
        num_problems=args.num_problems,
        eval_size=args.eval_size,
        eval_max_new_tokens=args.eval_max_new_tokens,
        eval_batch_size=args.eval_batch_size,
        eval_before=not run["stages"],  # base is its own run; trained runs score only after each stage
        arith_max_ops=args.arith_max_ops,
        arith_max_value=args.arith_max_value,
        arith_seed=0,
        output_dir=output_dir,
        seed=run["seed"],
        bf16=cuda,
    )


def _summarise(run: dict, report: dict, seconds: float) -> dict:
    stages = []
    for s in report["stages"]:
        entry = {
            "stage": s["stage"],
            "steps": s["steps"],
            "seconds": s["seconds"],
            "train_tokens": s.get("train_tokens"),
            "accuracy": s.get("eval", {}).get("accuracy"),
            "strict_accuracy": s.get("eval", {}).get("strict_accuracy"),
        }
        if s["stage"] == "rl":
            entry["rl"] = rl_summary(s.get("rl_steps", []))
        if s["stage"] == "kd":
            entry["teacher_data"] = s.get("teacher_data")
        stages.append(entry)
    final = report["stages"][-1]["eval"] if report["stages"] else report["eval_before"]
    return {
        **run,
        "accuracy": final["accuracy"],
        "strict_accuracy": final["strict_accuracy"],
        "n_eval": final["n"],
        "examples": final["examples"],
        "train_tokens": sum(s["train_tokens"] or 0 for s in stages),
        "train_seconds": sum(s["seconds"] for s in stages),
        "seconds": seconds,
        "stage_results": stages,
    }


def _worker(job_file: str) -> int:
    """Load the model once, then run this worker's share of the runs; one result file per run."""
    import copy

    import torch
    import transformers

    from hf_plugins.recipes.srlm import run_srlm

    job = json.loads(Path(job_file).read_text())
    args = argparse.Namespace(**job["args"])
    torch.set_num_threads(args.threads_per_job)
    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available() and not args.smoke
    pristine, tok = _load_dir(job["model_dir"], "cuda" if cuda else "cpu")
    for run in job["runs"]:
        tag = f"{_key(run['pipeline'])}-{run['seed']}"
        t0, model = time.perf_counter(), None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            model = copy.deepcopy(pristine)
            cfg = _srlm_config(run, args, str(Path(job["work_dir"]) / tag), cuda)
            model, report = run_srlm(model, tok, cfg)
            result = _summarise(run, report, time.perf_counter() - t0)
            if cuda:
                result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except Exception as e:  # recorded, the other runs go on
            import traceback

            traceback.print_exc()
            result = {**run, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        del model
        if cuda:
            torch.cuda.empty_cache()
        (Path(job["result_dir"]) / f"{tag}.json").write_text(json.dumps(result, default=str))
        print(f"[worker] {tag}: {result.get('accuracy', result.get('error'))} in {time.perf_counter() - t0:.0f} s")
    return 0


def _assign(runs: list[dict], jobs: int) -> list[list[dict]]:
    """Longest-processing-time-first: the costliest run goes to the least loaded worker. Seeds 0 and 1 of every
    pipeline come first (base, the reference, before them), so that a `--deadline-s` stop cuts third and later
    seeds before anything else."""
    loads = [[0.0, []] for _ in range(min(jobs, len(runs)))]
    for run in sorted(runs, key=lambda r: (r["seed"] >= 2, bool(r["stages"]), -_cost(r))):
        slot = min(loads, key=lambda s: s[0])
        slot[0] += _cost(run)
        slot[1].append(run)
    return [s[1] for s in loads]


def _write_job(path: Path, args, model_dir: Path, work: Path, runs: list[dict]) -> str:
    """A worker's job file: the arguments, where the model is, where runs and results go, and its runs."""
    job = {"args": vars(args), "model_dir": str(model_dir), "work_dir": str(work / "runs"),
           "result_dir": str(work / "results"), "runs": runs}  # fmt: skip
    path.write_text(json.dumps(job))
    return str(path)


def _launch(args, model_dir: Path, work: Path) -> tuple[list[dict], list[str]]:
    runs = _plan(args)
    result_dir = work / "results"
    result_dir.mkdir()
    if args.jobs == 0:  # in this process, one run after another (the smoke test)
        _worker(_write_job(work / "inline.json", args, model_dir, work, runs))
        return [json.loads(f.read_text()) for f in sorted(result_dir.glob("*.json"))], []
    procs = []
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads_per_job)}
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # many processes share one GPU
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")])
    )
    for i, share in enumerate(_assign(runs, args.jobs)):
        job_file = _write_job(work / f"worker{i}.json", args, model_dir, work, share)
        log = (work / f"worker{i}.log").open("w")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job_file]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, share))
    print(f"{len(runs)} runs on {len(procs)} workers; logs in {work}", flush=True)
    deadline = time.perf_counter() + args.deadline_s
    t0, reported = time.perf_counter(), set()
    while any(p.poll() is None for p, _, _ in procs) and time.perf_counter() < deadline:
        time.sleep(2)
        for f in sorted(set(result_dir.glob("*.json")) - reported):
            reported.add(f)
            r = json.loads(f.read_text())
            acc = f"accuracy {r['accuracy']:.3f}" if "accuracy" in r else r.get("traceback", r.get("error"))
            print(f"[{time.perf_counter() - t0:5.0f} s] {r['pipeline']} seed {r['seed']}: {acc}", flush=True)
    notes = []
    for i, (p, log, _share) in enumerate(procs):
        if p.poll() is None:
            p.kill()
            p.wait()
            notes.append(f"worker {i} stopped at the deadline ({args.deadline_s:.0f} s)")
        log.close()
        if p.returncode not in (0, None):
            tail = (work / f"worker{i}.log").read_text()[-3000:]
            print(f"--- worker {i} exited {p.returncode}; log tail:\n{tail}", flush=True)
    results = [json.loads(f.read_text()) for f in sorted(result_dir.glob("*.json"))]
    done = {(r["pipeline"], r["seed"]) for r in results}
    notes += [
        f"{r['pipeline']} seed {r['seed']}: not finished" for r in runs if (r["pipeline"], r["seed"]) not in done
    ]
    return results, notes


# ------------------------------------------------------------------------------------------------ merge
SHARD_ARGS = ("pipelines", "seeds", "first_seed", "jobs", "threads_per_job", "deadline_s", "out", "plot", "append",
              "model_dir", "gguf_dir", "worker", "merge", "device", "model_name")  # fmt: skip


def _read_shard(path: Path) -> dict:
    """{"args", "runs"[, "device"]} of an `--out` JSON, or of the work folder of a run stopped before it wrote one
    (its `worker0.json` holds the arguments, `results/` the finished runs; the device is not recorded there)."""
    if path.is_dir():
        workers = sorted(path.glob("worker*.json")) or sorted(path.glob("inline.json"))
        if not workers:
            raise SystemExit(f"{path}: no worker*.json: not a work folder of srlm_quality.py")
        runs = [json.loads(f.read_text()) for f in sorted((path / "results").glob("*.json"))]
        return {"args": json.loads(workers[0].read_text())["args"], "runs": runs}
    raw = json.loads(path.read_text())["raw"]
    return {"args": raw["args"], "runs": raw["runs"], "device": raw["device"]}


def _load_shards(paths: list[str]) -> tuple[dict, list[dict]]:
    """(the shards' common arguments, every finished run). The shards must share every argument but SHARD_ARGS,
    the device where it is recorded, and no (pipeline, seed) may finish in two of them."""
    shards = [_read_shard(Path(p)) for p in paths]
    try:
        first, _ = join_runs(shards, paths, same=("args",), sharded=SHARD_ARGS)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    runs, seen = [], {}
    for path, shard in zip(paths, shards):
        for run in shard["runs"]:
            if "accuracy" not in run:
                continue
            key = (run["pipeline"], run["seed"])
            if key in seen:
                raise SystemExit(f"{path}: {key[0]} seed {key[1]} is also in {seen[key]}; drop one of the two")
            seen[key] = path
            runs.append(run)
    devices = {shard["device"] for shard in shards if "device" in shard}
    if len(devices) > 1:
        raise SystemExit(f"the shards ran on different devices ({sorted(devices)}); merge like with like")
    args = first["args"]
    return {
        **args,
        "seeds": len({r["seed"] for r in runs if r["stages"]}) or 1,
        "device": devices.pop() if devices else "unknown device",
        "model_name": "tiny random Llama" if args["smoke"] else "SmolLM2-135M-Instruct",
    }, runs


# ------------------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny random Llama + tiny tokenizer on the CPU")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write rows, the table and every run's results as JSON here")
    p.add_argument("--model-dir", default=None, help="save_pretrained directory of SmolLM2-135M-Instruct")
    p.add_argument("--gguf-dir", default=None, help="directory holding SmolLM2-135M-Instruct.Q4_1.gguf, or a .gguf")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help="comma list of " + ", ".join(PIPELINES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. seeds-1 (shard the seeds)")
    p.add_argument("--updates", type=int, default=48, help="optimizer updates per pipeline, split over its stages")
    p.add_argument("--problems-per-step", type=int, default=8, help="sft/kd batch; rl prompts per update")
    p.add_argument("--num-generations", type=int, default=8, help="GRPO completions per prompt (G)")
    p.add_argument("--rl-updates-per-generation", type=int, default=8, help="updates per GRPO generate call")
    p.add_argument("--rl-micro-batches", type=int, default=4, help="GRPO gradient accumulation per update")
    p.add_argument("--max-completion-length", type=int, default=128, help="GRPO completion cap (tokens)")
    p.add_argument("--rl-temperature", type=float, default=0.7, help="GRPO sampling temperature (TRL: 1.0)")
    p.add_argument("--probe-size", type=int, default=8, help="prompts of the KL probe per RL stage (0: off)")
    p.add_argument(
        "--overlong-cache", type=int, default=32,
        help="TRL's soft overlong punishment: from max-completion-length minus this many tokens on (0: off)",
    )  # fmt: skip
    p.add_argument("--sft-lr", type=float, default=4e-5, help="sft and kd (paper: full FT 4e-5)")
    p.add_argument("--rl-lr", type=float, default=3e-5)
    p.add_argument("--max-length", type=int, default=256, help="sft/kd truncation (solutions are < 100 tokens)")
    p.add_argument("--num-problems", type=int, default=400, help="training problems (>= updates x problems)")
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--eval-batch-size", type=int, default=200)
    p.add_argument("--eval-max-new-tokens", type=int, default=128)
    p.add_argument("--arith-max-ops", type=int, default=2)
    p.add_argument("--arith-max-value", type=int, default=30)
    p.add_argument("--jobs", type=int, default=8, help="worker processes (each loads the model once); 0: in-process")
    p.add_argument("--threads-per-job", type=int, default=1, help="torch CPU threads per worker")
    p.add_argument("--deadline-s", type=float, default=190.0, help="stop the workers after this many seconds")
    p.add_argument("--plot", default=None, help="PNG of the per-update RL curves (needs matplotlib)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PATH", help="one table of --out files/work folders")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def _smoke(args) -> None:
    args.seeds, args.updates, args.problems_per_step, args.num_generations = 2, 3, 2, 2
    args.rl_micro_batches, args.rl_updates_per_generation, args.max_completion_length, args.max_length = 1, 2, 8, 96
    args.num_problems, args.eval_size, args.eval_batch_size, args.eval_max_new_tokens = 16, 4, 4, 8
    args.sft_lr, args.rl_lr, args.probe_size, args.overlong_cache, args.jobs = 1e-3, 1e-3, 2, 2, 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    if args.merge:
        return _report(args, *_load_shards(args.merge), notes=[], t0=time.perf_counter())
    if args.smoke:
        _smoke(args)
    if not 0 <= args.first_seed < args.seeds:
        raise SystemExit(f"--first-seed must be in [0, --seeds={args.seeds}), got {args.first_seed}")
    if args.problems_per_step % args.rl_micro_batches:
        raise SystemExit("--problems-per-step must be a multiple of --rl-micro-batches")
    if args.updates % 6 and not args.smoke:
        print(f"note: --updates {args.updates} is not a multiple of 6; 2- and 3-stage pipelines get fewer updates")
    t0 = time.perf_counter()
    import torch

    work = Path(tempfile.mkdtemp(prefix="srlm-quality-"))
    if args.model_dir:
        model_dir, model_name = Path(args.model_dir), "SmolLM2-135M-Instruct"
    else:
        model_dir = work / "model"
        if args.smoke:
            _save_tiny(model_dir)
            model_name = "tiny random Llama"
        else:
            _save_smollm2(args.gguf_dir, model_dir)
            model_name = "SmolLM2-135M-Instruct"
        print(f"model saved to {model_dir} in {time.perf_counter() - t0:.1f} s", flush=True)
    results, notes = _launch(args, model_dir, work)
    if not args.model_dir:
        shutil.rmtree(model_dir, ignore_errors=True)  # the fp32 copy (~0.5 GB); worker logs stay in `work`
    cuda = torch.cuda.is_available() and not args.smoke
    run_args = {**vars(args), "device": _results.device_label(cuda, args.smoke), "model_name": model_name}
    return _report(args, run_args, results, notes, t0)


def _report(args, run_args: dict, results: list[dict], notes: list[str], t0: float) -> int:
    """Table, rows, JSON and plot of `results`, run under `run_args` (this run's, or the merged shards')."""
    table = aggregate(results)
    device, model_name = run_args["device"], run_args["model_name"]
    rows = result_rows(table, argparse.Namespace(**run_args), model_name)
    lines = _results.markdown_text(rows, SCRIPT, device, nan="")
    print(text_table(table))
    print("\n".join(lines))
    for note in notes:
        print("note:", note)
    wall = time.perf_counter() - t0
    print(f"total wall {wall:.1f} s")
    title = rows[0]["case"] if rows else model_name
    raw = {"args": run_args, "device": device, "wall_s": wall, "notes": notes, "title": title, "table": table,
           "runs": results}  # fmt: skip
    _results.write_outputs(lines, out=args.out, payload={"rows": rows, "raw": raw}, append=args.append)
    if args.plot:
        try:
            print("RL curves:", plot_rl_curves(results, args.plot, f"{title}; {device}"))
        except ImportError as e:  # e.g. no matplotlib on the GPU image: plot later from --out
            print(f"note: no plot ({e}); run `python benchmarks/srlm_report.py {args.out} --out {args.plot}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
