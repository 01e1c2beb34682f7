"""The report of benchmarks/srlm_quality.py: per-pipeline aggregation over seeds, the text table, the RESULTS.md
rows, and the per-update curves of the rl (GRPO) stages: one panel per diagnostic (reward mean, within-group
reward std, share of zero-variance groups, KL to the stage's starting policy, completion length and truncated
share, clip ratio), one line per pipeline (mean over seeds, the band spans min..max).

    python benchmarks/srlm_report.py srlm_quality.json --out docs/img/srlm_rl_curves.png
    python benchmarks/srlm_quality.py ... --plot docs/img/srlm_rl_curves.png     # the same, at the end of a run

Needs matplotlib (`pip install hf-plugins[plot]`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


# The paper's single stages and hybrids (RQ2, RQ3); "base" trains nothing.
PIPELINES = {
    "base": [],
    "SFT": ["sft"],
    "KD": ["kd"],
    "RL": ["rl"],
    "SFT->RL": ["sft", "rl"],
    "KD->RL": ["kd", "rl"],
    "SFT->KD->RL": ["sft", "kd", "rl"],
}
CURVE_KEYS = ("reward", "reward_std_in_group", "frac_reward_zero_std", "kl_start", "completion_length",
              "truncated", "clip_ratio", "correct", "answer_marked")  # fmt: skip


def rl_summary(rows: list[dict]) -> dict:
    """Per RL stage: the per-update curves (`steps`), each metric's mean over the updates that logged it, the
    reward over the first and last quarter of the generation rounds, and the final KL to the stage's start."""
    scored = [r for r in rows if r.get("reward") is not None]
    if not scored:
        return {}
    out: dict = {}
    for key in CURVE_KEYS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            out[key] = statistics.mean(vals)
    q = max(1, len(scored) // 4)
    out["reward_first_quarter"] = statistics.mean(r["reward"] for r in scored[:q])
    out["reward_last_quarter"] = statistics.mean(r["reward"] for r in scored[-q:])
    kls = [r["kl_start"] for r in rows if r.get("kl_start") is not None]
    out["kl_start_final"] = kls[-1] if kls else None
    out["steps"] = [{"step": r["step"], **{k: r.get(k) for k in CURVE_KEYS}} for r in rows]
    return out


def stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(results: list[dict]) -> dict:
    table = {}
    for name, stages in PIPELINES.items():
        ok = [r for r in results if r["pipeline"] == name and "error" not in r]
        errors = [r["error"] for r in results if r["pipeline"] == name and "error" in r]
        if not ok:
            if errors:
                table[name] = {"stages": stages, "errors": errors}
            continue
        entry = {
            "stages": stages,
            "steps_per_stage": ok[0]["steps"],
            "accuracy": stats([r["accuracy"] for r in ok]),
            "strict_accuracy": stats([r["strict_accuracy"] for r in ok]),
            "train_tokens": statistics.mean(r["train_tokens"] for r in ok),
            "train_seconds": statistics.mean(r["train_seconds"] for r in ok),
            "run_seconds": statistics.mean(r["seconds"] for r in ok),
            "peak_gpu_gib": max((r.get("peak_gpu_gib", 0.0) for r in ok), default=0.0),
            "seeds": sorted(r["seed"] for r in ok),
            "errors": errors,
        }
        # accuracy after each stage of the pipeline (mean over seeds), e.g. SFT->RL: after SFT, after RL
        entry["after_stage"] = [
            statistics.mean(r["stage_results"][i]["accuracy"] for r in ok) for i in range(len(stages))
        ]
        rl = [s["rl"] for r in ok for s in r["stage_results"] if s.get("rl")]
        if rl:
            keys = [k for k in rl[0] if k != "steps"]
            entry["rl"] = {
                k: statistics.mean(d[k] for d in rl if d.get(k) is not None)
                for k in keys
                if any(d.get(k) is not None for d in rl)
            }
        table[name] = entry
    return table


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} [{s['min']:.3f}, {s['max']:.3f}]" if s["n"] > 1 else f"{s['mean']:.3f}"


def text_table(table: dict) -> str:
    base = table.get("base", {}).get("accuracy", {}).get("mean")
    lines = [
        "| pipeline | updates per stage | accuracy mean [min, max] | strict | vs base | after each stage | "
        "RL reward first -> last quarter, frac zero-std, KL end | train tokens | train s | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in table.items():
        if "accuracy" not in e:
            lines.append(f"| {name} | failed: {e['errors'][0][:80]} | | | | | | | | |")
            continue
        delta = f"{100 * (e['accuracy']['mean'] - base):+.1f} pt" if base is not None and e["stages"] else ""
        after = " -> ".join(f"{a:.3f}" for a in e["after_stage"])
        rl = e.get("rl")
        rl_text = (
            f"{rl['reward_first_quarter']:.2f} -> {rl['reward_last_quarter']:.2f}, "
            f"{rl.get('frac_reward_zero_std', float('nan')):.2f}, {rl.get('kl_start_final', float('nan')):.3g}"
            if rl
            else ""
        )
        lines.append(
            f"| {name} | {e['steps_per_stage'] or ''} | {fmt(e['accuracy'])} | {fmt(e['strict_accuracy'])} | "
            f"{delta} | {after} | {rl_text} | {e['train_tokens']:.0f} | {e['train_seconds']:.0f} | "
            f"{len(e['seeds'])} |"
        )
    return "\n".join(lines)


def result_rows(table: dict, args, model_name: str) -> list[dict]:
    case = (
        f"{model_name} arithmetic (ops<=2, values<={args.arith_max_value}), {args.updates} updates x "
        f"{args.problems_per_step} problems per pipeline, RL G={args.num_generations}, {args.eval_size} held-out, "
        f"greedy, {args.seeds} seeds, lr SFT/KD {args.sft_lr:g} RL {args.rl_lr:g}, stock TRL (srlm recipe)"
    ).replace("ops<=2", f"ops<={args.arith_max_ops}")
    base = table.get("base", {}).get("accuracy")
    rows = []
    for name, e in table.items():
        if "accuracy" not in e:
            continue
        is_base = not e["stages"]
        rows.append(
            {
                "case": case,
                "metric": "held-out accuracy, base (no training)"
                if is_base
                else f"held-out accuracy mean [min, max], {name} vs base (strict {fmt(e['strict_accuracy'])})",
                "ours": e["accuracy"]["mean"],
                "baseline": None if is_base or base is None else base["mean"],
                "ours_text": fmt(e["accuracy"]),
                "base_text": "" if is_base or base is None else f"{base['mean']:.3f}",
            }
        )
    for r in rows:
        r["ratio"] = r["ours"] / r["baseline"] if r["baseline"] else float("nan")
    return rows


# (key in a run's rl steps, panel title); "truncated" is drawn dashed in the completion-length panel
PANELS = [
    ("reward", "reward mean (weighted sum of the reward functions)"),
    ("reward_std_in_group", "reward std within groups"),
    ("frac_reward_zero_std", "share of groups with zero reward variance"),
    ("kl_start", "KL(start || policy) per token, fixed probe"),
    ("completion_length", "completion length (tokens)"),
    ("clip_ratio", "clip ratio (PPO region)"),
]


def curves(runs: list[dict]) -> dict[str, dict[str, list[tuple[int, float, float, float]]]]:
    """pipeline -> key -> [(step, mean, min, max) over seeds]; steps where a seed logged nothing are skipped for
    that seed (reward metrics exist only on updates that generated)."""
    out: dict[str, dict[str, dict[int, list[float]]]] = {}
    for run in runs:
        for stage in run.get("stage_results", []):
            for row in (stage.get("rl") or {}).get("steps", []):
                for key, _ in [*PANELS, ("truncated", "")]:
                    if row.get(key) is not None:
                        out.setdefault(run["pipeline"], {}).setdefault(key, {}).setdefault(row["step"], [])
                        out[run["pipeline"]][key][row["step"]].append(float(row[key]))
    return {
        name: {
            key: [(s, statistics.mean(v), min(v), max(v)) for s, v in sorted(by_step.items())]
            for key, by_step in keys.items()
        }
        for name, keys in out.items()
    }


def plot_rl_curves(runs: list[dict], path: str | Path, title: str = "") -> Path:
    """Draw the panels for `runs` (the `runs` list of srlm_quality.py's JSON) into `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(runs)
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, (key, panel_title) in zip(axes.flat, PANELS):
        twin = ax.twinx() if key == "completion_length" else None
        for i, (name, keys) in enumerate(sorted(data.items())):
            for k, target, style in [(key, ax, "-"), ("truncated", twin, "--")] if twin else [(key, ax, "-")]:
                pts = keys.get(k, [])
                if not pts:
                    continue
                steps, mean, lo, hi = zip(*pts)
                label = name if target is ax else None
                target.plot(steps, mean, style, marker=".", color=f"C{i}", label=label, lw=1.4, ms=5)
                target.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.12, lw=0)
        if twin is not None:
            twin.set_ylim(0, 1)
            twin.set_ylabel("truncated share (dashed)")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("optimizer update of the rl stage")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", help="the --out file of benchmarks/srlm_quality.py")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    raw = json.loads(Path(args.json).read_text())["raw"]
    print(plot_rl_curves(raw["runs"], args.out, raw.get("title", "")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
