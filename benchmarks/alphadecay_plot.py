"""Plot the per-module power-law alphas at the end of two (or more) pre-training runs of benchmarks/pretrain.py, e.g.
uniform weight decay (AdamW) vs AlphaDecay: the alpha distributions at the end of training.

One panel of alphas per module type (attention q/k/v/o, then MLP gate/up/down, then anything else), one box + the
individual matrices per run; dotted, the same at the start of each run when the JSON has it (`esd_start`); a second
panel with the weight decays AlphaDecay assigned at the end (`alphadecay_end`) when a run has them.

    python benchmarks/alphadecay_plot.py runs/pretrain_60m_adamw.json runs/pretrain_60m_alphadecay.json \\
        --out alphadecay_alphas_60m.png
    python benchmarks/alphadecay_plot.py --smoke --out /tmp/alphadecay_plot.png   # two synthetic runs, CPU, ~5 s

Each JSON needs `esd_end` (pretrain.py writes it, `--esd-min-eigs` sets the matrix size threshold); a JSON of
benchmarks/alphadecay_quality.py also works (its seed-0 run of each arm, all linears). Paper
(project page): attention Q/K end heavier-tailed (lower alpha) than the MLP matrices.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path


ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def label(run: dict, path: str) -> str:
    """`adamw (uniform decay), ppl 31.9` from the run's config; the file name when there is none."""
    cfg = run.get("config", {})
    optim = cfg.get("optim")
    name = {"adamw": "AdamW, uniform decay", "alphadecay": "AlphaDecay(AdamW)"}.get(optim, optim or Path(path).stem)
    if "weight_decay" in cfg:
        name += f", wd {cfg['weight_decay']:g}"
    if "final_eval_perplexity" in run:
        name += f": ppl {run['final_eval_perplexity']:.2f}"
    return name


ALL_LINEARS = False  # --all-linears: also the first linear and lm_head (not analysed by AlphaDecay's defaults)


def by_type(rows: list[dict]) -> dict[str, list[float]]:
    """Finite alphas grouped by module type (the last part of the module name), of the matrices AlphaDecay analyses
    unless --all-linears (a tied lm_head is the embedding matrix: its alpha is off the scale of the others)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if not (ALL_LINEARS or r.get("alphadecay", True)):
            continue
        if r.get("alpha") is not None and math.isfinite(r["alpha"]):
            out.setdefault(r.get("module_type") or r["name"].rsplit(".", 1)[-1], []).append(float(r["alpha"]))
    return out


def module_types(runs: list[dict]) -> list[str]:
    seen = {t for run in runs for t in by_type(run["esd_end"])}
    return [t for t in ORDER if t in seen] + sorted(seen - set(ORDER))


def summary(runs: list[dict], labels: list[str]) -> list[str]:
    """One line per run and module type: count, median and range of the final alphas."""
    lines = []
    for run, name in zip(runs, labels):
        groups = by_type(run["esd_end"])
        for t in module_types(runs):
            if t in groups:
                a = groups[t]
                lines.append(f"{name:45s} {t:10s} n={len(a):3d} median {statistics.median(a):.3f} "
                             f"[{min(a):.3f}, {max(a):.3f}]")  # fmt: skip
    return lines


def plot(runs: list[dict], labels: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = module_types(runs)
    decays = [r.get("alphadecay_end") for r in runs]
    panels = 2 if any(decays) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(7.0, 1.3 * len(types) * len(runs)), 4.2 * panels), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(runs)
    rng = random.Random(0)
    for k, (run, name) in enumerate(zip(runs, labels)):
        color = f"C{k}"
        end, start = by_type(run["esd_end"]), by_type(run.get("esd_start") or [])
        pos = [j + (k - (len(runs) - 1) / 2) * width for j, t in enumerate(types) if t in end]
        data = [end[t] for t in types if t in end]
        ax.boxplot(data, positions=pos, widths=width * 0.8, showfliers=False, manage_ticks=False,
                   boxprops={"color": color}, medianprops={"color": color}, whiskerprops={"color": color},
                   capprops={"color": color})  # fmt: skip
        for x, values in zip(pos, data):
            xs = [x + rng.uniform(-0.25, 0.25) * width for _ in values]
            ax.scatter(xs, values, s=9, color=color, alpha=0.7, label=name if x == pos[0] else None)
        for j, t in enumerate(types):
            if t in start:
                x = j + (k - (len(runs) - 1) / 2) * width
                ax.plot([x - width / 3, x + width / 3], [statistics.median(start[t])] * 2, ":", color=color)
    ax.set_xticks(range(len(types)), types)
    ax.set_ylabel("alpha (Hill, median xmin) at the end")
    ax.set_title("Per-module power-law alpha at the end (dotted: median at the start)")
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[1][0]
        for k, (table, name) in enumerate(zip(decays, labels)):
            if not table:
                continue
            for j, t in enumerate(types):
                wd = [v["weight_decay"] for m, v in table.items() if m.rsplit(".", 1)[-1] == t]
                xs = [j + rng.uniform(-0.2, 0.2) for _ in wd]
                ax.scatter(xs, wd, s=9, color=f"C{k}", label=name if j == 0 else None)
        ax.set_xticks(range(len(types)), types)
        ax.set_ylabel("weight decay assigned at the end")
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def runs_from_json(data: dict, path: str) -> list[tuple[dict, str]]:
    """`(run, name)` pairs: a pretrain.py result is one run; an alphadecay_quality.py result (`results` = {arm: [one
    dict per seed]}, alphas as `alphas_end` {module: alpha}) gives its seed-0 run of each arm."""
    if "results" not in data:
        return [(data, path)]
    out = []
    for arm, seeds in data["results"].items():
        r = seeds[0]
        rows = [{"name": n, "module_type": n.rsplit(".", 1)[-1], "alpha": a} for n, a in r["alphas_end"].items()]
        run = {"config": {"optim": "adamw" if arm == "uniform" else arm}, "esd_end": rows}
        run["final_eval_perplexity"] = math.exp(r["eval_loss"])
        run["alphadecay_end"] = r.get("decays_end") or None
        out.append((run, f"{path}:{arm}"))
    return out


def synthetic_runs() -> list[dict]:
    """Two fake runs in pretrain.py's format (8 layers): AlphaDecay with lower attention alphas."""
    rng = random.Random(0)
    runs = []
    for optim, shift in (("adamw", 0.0), ("alphadecay", -0.3)):
        rows, table = [], {}
        for layer in range(8):
            for t in ORDER:
                attn = t in ("q_proj", "k_proj")
                alpha = (3.0 if attn else 4.0) + (shift if attn else 0.0) + rng.gauss(0, 0.2)
                name = f"model.layers.{layer}.{'self_attn' if t in ORDER[:4] else 'mlp'}.{t}"
                rows.append({"name": name, "module_type": t, "layer": layer, "alpha": alpha, "alphadecay": True})
                table[name] = {"alpha": alpha, "weight_decay": 0.1 * (1 + (alpha - 3) / 2)}
        runs.append({"config": {"optim": optim, "weight_decay": 0.1}, "final_eval_perplexity": 30.0 + shift,
                     "esd_start": [dict(r, alpha=2.0 + rng.gauss(0, 0.01)) for r in rows], "esd_end": rows,
                     "alphadecay_end": table if optim == "alphadecay" else None})  # fmt: skip
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "runs", nargs="*", help="JSON results of benchmarks/pretrain.py (with `esd_end`) or of alphadecay_quality.py"
    )
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--smoke", action="store_true", help="plot two synthetic runs (no JSON needed)")
    ap.add_argument("--all-linears", action="store_true", help="also the first linear and lm_head")
    args = ap.parse_args(argv)
    global ALL_LINEARS
    ALL_LINEARS = args.all_linears
    if args.smoke:
        runs, paths = synthetic_runs(), ["synthetic-adamw", "synthetic-alphadecay"]
    else:
        if not args.runs:
            ap.error("give the JSON files of the runs to compare (or --smoke)")
        pairs = [pair for p in args.runs for pair in runs_from_json(json.loads(Path(p).read_text()), p)]
        runs, paths = [r for r, _ in pairs], [p for _, p in pairs]
        for run, path in zip(runs, paths):
            if not run.get("esd_end"):
                raise SystemExit(
                    f"{path} has no `esd_end` alphas: rerun benchmarks/pretrain.py (it writes them), or lower "
                    "--esd-min-eigs if the model's matrices have fewer eigenvalues than the threshold."
                )
    labels = [label(r, p) for r, p in zip(runs, paths)]
    print("\n".join(summary(runs, labels)))
    plot(runs, labels, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
