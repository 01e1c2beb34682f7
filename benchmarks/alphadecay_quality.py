"""AlphaDecay vs uniform weight decay, each at its own tuned learning rate (arXiv 2506.14562, AdamW table: 60M
31.95 -> 31.20 perplexity at decay 0.1).

The project's 60M Llama (benchmarks/pretrain.py, stock Trainer, 50.5M parameters) pre-trained from scratch on the
project corpus, bf16 autocast, B=32 x T=512, cosine schedule, betas (0.9, 0.95), gradient clipping 1.0 (the
Trainer's default, both arms), base decay 0.1 (decoupled): AdamW with that decay on every matrix ("uniform") vs
AdamW with AlphaDecay's per-matrix decays (refreshed every `--interval` updates; the paper's 500 is for 10K-step
runs, these runs are ~120 steps). A learning-rate sweep per arm, the best rate chosen on validation loss, then three
seeds at it (benchmarks/_sweep.py); reported: test-split perplexity, mean [min, max] over the seeds. Seeds change the
initialisation; the data order is the corpus order in every run. A second figure shows the per-module alphas at the
end and the decays AlphaDecay assigned (benchmarks/alphadecay_plot.py) at the chosen rates, seed 0.

    python benchmarks/alphadecay_quality.py --corpus .gpu_corpus --jobs 2 --work-dir W     # GPU
    python benchmarks/alphadecay_quality.py --smoke                                       # tiny, CPU
    python benchmarks/alphadecay_quality.py --merge --work-dir W --append --plot docs/img/alphadecay_quality.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _sweep  # noqa: E402


SCRIPT = "alphadecay_quality.py"
FULL = {"size": "60m", "tokens": 2_000_000, "batch": 32, "seq": 512, "eval_tokens": 262_144, "test_tokens": 524_288,
        "interval": 10, "min_eigs": 50}  # fmt: skip
SMOKE = {"size": "tiny", "tokens": 6 * 4 * 32, "batch": 4, "seq": 32, "eval_tokens": 1024, "test_tokens": 1024,
         "interval": 2, "min_eigs": 16}  # fmt: skip
GRID = [7.5e-4, 1.5e-3, 3e-3]  # the earlier single-rate runs used 1.5e-3 for both arms


def run_unit(group: str, arm: str, lr: float, seed: int, args) -> dict:
    import pretrain

    cfg = SMOKE if args.smoke else FULL
    options = ["--weight-decay", str(args.weight_decay), "--esd-min-eigs", str(cfg["min_eigs"])]
    if arm == "alphadecay":
        interval = args.interval or cfg["interval"]
        options += ["--optim", "alphadecay", "--optim-arg", f"interval={interval}", "--optim-arg",
                    f"min_eigs={cfg['min_eigs']}"]  # fmt: skip
    else:
        options += ["--optim", "adamw"]
    return pretrain.sweep_run(args, cfg, lr, seed, options, lambda res: {
        # what benchmarks/alphadecay_plot.py reads
        "config": {"optim": res["config"]["optim"], "weight_decay": args.weight_decay},
        "final_eval_perplexity": res["final_eval_perplexity"],
        "esd_start": res["esd_start"],
        "esd_end": res["esd_end"],
        "alphadecay_end": res["alphadecay_end"],
    })  # fmt: skip


def alpha_plot(summary: dict, args, plot_path: str) -> list[str]:
    """Per-module alphas at the end and AlphaDecay's decays, each arm at its chosen rate, seed 0."""
    try:
        import alphadecay_plot

        runs, labels = [], []
        for arms in summary.values():
            for arm, lane in arms.items():
                if lane["best_runs"] and lane["best_runs"][0].get("esd_end"):
                    runs.append(lane["best_runs"][0])
                    labels.append(f"{alphadecay_plot.label(runs[-1], arm)}, lr {_sweep.lr_key(lane['best_lr'])}")
        if not runs or not any(alphadecay_plot.by_type(r["esd_end"]) for r in runs):
            return []
        path = str(Path(plot_path).with_name(Path(plot_path).stem + "_alphas.png"))
        alphadecay_plot.plot(runs, labels, path)
        return [path]
    except ImportError as exc:
        print(f"no alpha plot: {exc}", flush=True)
        return []


def make_plan(args) -> _sweep.Plan:
    def case(group: str) -> str:
        c = SMOKE if args.smoke else FULL
        tokens = args.tokens or c["tokens"]
        return (f"{'smoke, ' if args.smoke else ''}pretrain.py {c['size']} Llama, project corpus {tokens / 1e6:.3g}M "
                f"tokens, B={c['batch']} T={c['seq']}, cosine, clip 1.0, bf16, base wd {args.weight_decay:g}, "
                f"AlphaDecay refresh every {args.interval or c['interval']} steps")  # fmt: skip

    return _sweep.Plan(
        script=SCRIPT,
        path=Path(__file__).resolve(),
        groups={"60m": {"alphadecay": GRID, "uniform": GRID}},
        ours="alphadecay",
        labels={"alphadecay": "AlphaDecay(AdamW)", "uniform": "AdamW, uniform decay"},
        select="val_loss",
        select_label="validation loss",
        metrics=lambda group: [("test_ppl", "test perplexity")],
        case=case,
        cost=lambda group, arm: 1.1 if arm == "alphadecay" else 1.0,
        extra_plot=alpha_plot,
        protocol="Each arm: learning rates swept at seed 0, the rate with the lowest validation loss chosen, then "
        "seeds 1 and 2 at it; mean [min, max] over the three seeds on the test split.",
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model on a tiny corpus, CPU")
    p.add_argument("--corpus", default="corpus_out", help="directory written by `hf-plugins corpus build`")
    p.add_argument("--tokens", type=int, default=None, help=f"training tokens per run (default {FULL['tokens']:,})")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same step, less memory)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="base decay of both arms (paper's AdamW table)")
    p.add_argument(
        "--interval", type=int, default=None, help=f"AlphaDecay refresh interval (default {FULL['interval']})"
    )
    _sweep.add_arguments(p, make_plan(None))
    args = p.parse_args(argv)
    return _sweep.run(make_plan(args), args, run_unit, argv)


if __name__ == "__main__":
    raise SystemExit(main())
