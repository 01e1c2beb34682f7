"""LayerNorm Scaling vs Pre-LN, each at its own tuned learning rate, at 12 and 24 layers (arXiv 2502.05795, Table 1:
LLaMA-130M 26.73 -> 25.76, -3.6%; larger gains for the 24-layer models), with the paper's depth diagnostics.

Per depth, a learning-rate sweep per arm, the best rate chosen on the validation split, then three seeds at it
(benchmarks/_sweep.py). Reported on the test split, mean [min, max] over the seeds:
- perplexity (token-weighted);
- output-variance growth: variance of the last block's output over that of the embeddings (the paper's argument:
  under Pre-LN the residual-stream variance grows with depth, under LNS it stays bounded);
- deep-layer removal: perplexity after skipping one block of the deeper half over the full model's, averaged over
  those blocks (the paper's layer-pruning analysis: under Pre-LN deep blocks are nearly idle, removing one hurts
  little; under LNS they contribute more);
- deep-layer angular distance: arccos(cos(h_l-1, h_l)) / pi averaged over tokens and the deeper half's blocks
  (small = the block is close to an identity).
A second figure shows the per-layer variance, angular distance and pruning curve at the chosen rates (seed 0).

Setup (the official recipe, narrow): Llamas with hidden 256, 4 heads, intermediate 688, untied embeddings, init std
0.02, on the project corpus (B=64 x T=256, the paper's sequence length); Adam without weight decay and without
clipping, linear warm-up over 10% of the steps, cosine to 0.1x. bf16 autocast with fp32 master weights for both arms
(the paper trained pure bf16). Same data order for every run; seeds change the initialisation.

    python benchmarks/lns_quality.py --corpus .gpu_corpus --jobs 4 --work-dir W    # GPU
    python benchmarks/lns_quality.py --smoke                                      # tiny, CPU
    python benchmarks/lns_quality.py --merge --work-dir W --append --plot docs/img/lns_quality.png
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402
import _sweep  # noqa: E402
import torch  # noqa: E402


SCRIPT = "lns_quality.py"
FULL = {"hidden": 256, "intermediate": 688, "heads": 4, "depths": [12, 24], "steps": 100, "batch": 64, "seq": 256,
        "val_tokens": 131_072, "test_tokens": 262_144, "curve_blocks": 128, "prune_blocks": 64}  # fmt: skip
SMOKE = {"hidden": 32, "intermediate": 64, "heads": 4, "depths": [2, 4], "steps": 6, "batch": 4, "seq": 32,
         "val_tokens": 512, "test_tokens": 512, "curve_blocks": 8, "prune_blocks": 8}  # fmt: skip


def grid(depth: int) -> list[float]:
    """Paper: 1e-3 at 130M/250M. Deeper models get lower rates (the earlier 24-layer Pre-LN at 1e-3 trained badly)."""
    return [5e-4, 1e-3, 2e-3] if depth <= 12 else [2.5e-4, 5e-4, 1e-3]


_CACHE: dict = {}


def _data(args, cfg) -> dict:
    """train / validation / test LongTensors [N, seq] and the vocabulary size."""
    if "data" not in _CACHE:
        import pretrain
        from transformers import AutoTokenizer

        from hf_plugins.data.corpus import PackedBlocks

        corpus = pretrain.smoke_corpus() if args.smoke else args.corpus
        steps = args.steps or cfg["steps"]

        def blocks(split, max_tokens=None, n=None):
            data = PackedBlocks(corpus, split, cfg["seq"], max_tokens=max_tokens)
            return torch.stack([data[i]["input_ids"] for i in range(min(len(data), n or len(data)))])

        _CACHE["data"] = {
            "train": blocks("train", n=cfg["batch"] * steps),
            "validation": blocks("validation", max_tokens=cfg["val_tokens"]),
            "test": blocks("test", max_tokens=cfg["test_tokens"]),
            "vocab": len(AutoTokenizer.from_pretrained(Path(corpus) / "tokenizer")),
        }
    return _CACHE["data"]


def _model(lns: bool, layers: int, vocab: int, cfg, seed: int, device):
    from transformers import AutoConfig, AutoModelForCausalLM

    import hf_plugins  # noqa: F401  (registers lns_llama)

    fields = {
        "vocab_size": vocab, "hidden_size": cfg["hidden"], "intermediate_size": cfg["intermediate"],
        "num_hidden_layers": layers, "num_attention_heads": cfg["heads"],
        "max_position_embeddings": max(cfg["seq"], 128),
        "tie_word_embeddings": False,  # untied, as the official LLaMA configs
        "initializer_range": 0.02,  # no depth-scaled init
    }  # fmt: skip
    config = AutoConfig.for_model("lns_llama" if lns else "llama", **fields)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).to(device)


@torch.no_grad()
def _ppl(model, blocks, device, bf16, skip: int | None = None, bsz: int = 16) -> float:
    """Token-weighted perplexity; `skip` makes that block return its input (the layer-pruning curve)."""
    from hf_plugins.models.lns.diagnostics import _skip_block

    was = model.training
    model.eval()
    nll, count = 0.0, 0
    ctx = _skip_block(model.model.layers[skip]) if skip is not None else None
    if ctx:
        ctx.__enter__()
    try:
        for start in range(0, len(blocks), bsz):
            ids = blocks[start : start + bsz].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=ids, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            nll += float(loss)
            count += ids[:, 1:].numel()
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    model.train(was)
    return math.exp(min(nll / count, 50.0))


def run_unit(group: str, arm: str, lr: float, seed: int, args) -> dict:
    from hf_plugins.models.lns.diagnostics import depth_report

    cfg = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    bf16 = device.type == "cuda"
    data = _data(args, cfg)
    layers = int(group.rstrip("L"))
    steps = args.steps or cfg["steps"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = _model(arm == "lns", layers, data["vocab"], cfg, seed, device)
    probe = data["validation"][:8]
    depth_init = depth_report(model, probe)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, int(steps * 0.1))

    def lr_at(s):  # linear warm-up, cosine to 0.1x peak (official training_utils)
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    train, losses, curve = data["train"], [], []
    model.train()
    for s in range(steps):
        ids = train[torch.arange(s * cfg["batch"], (s + 1) * cfg["batch"]) % len(train)].to(device)  # same order
        step_loss = 0.0
        for chunk in ids.chunk(args.grad_accum):  # equal-length blocks: the mean of the chunks' means
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=chunk, labels=chunk, use_cache=False).loss / args.grad_accum
            loss.backward()  # no gradient clipping (official scripts)
            step_loss += float(loss.detach())
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if (s + 1) % max(1, steps // 4) == 0 and s + 1 < steps:
            curve.append([s + 1, math.log(_ppl(model, data["validation"][: cfg["curve_blocks"]], device, bf16))])
    val = _ppl(model, data["validation"], device, bf16)
    curve.append([steps, math.log(_ppl(model, data["validation"][: cfg["curve_blocks"]], device, bf16))])
    prune = data["test"][: cfg["prune_blocks"]]
    full = _ppl(model, prune, device, bf16)
    without = [_ppl(model, prune, device, bf16, skip=i) for i in range(layers)]
    trained = depth_report(model, probe)
    half = layers // 2
    return {
        "val_ppl": val,
        "test_ppl": _ppl(model, data["test"], device, bf16),
        "var_growth": trained["variance"][-1] / trained["variance"][0],
        "var_growth_init": depth_init["variance"][-1] / depth_init["variance"][0],
        "deep_drop": statistics.fmean(w / full for w in without[half:]),
        "deep_angular": statistics.fmean(trained["angular_distance"][half:]),
        "pruning": {"full": full, "without": without},
        "depth_init": depth_init,
        "depth_trained": trained,
        "curve": curve,
        "train_loss": losses,
        "final_train_loss": statistics.fmean(losses[-5:]),
        "steps": steps,
        "tokens": steps * cfg["batch"] * cfg["seq"],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "device": _results.device_label(device.type == "cuda", args.smoke),
        "stack": _results.stack(),
    }


def depth_plot(summary: dict, args, plot_path: str) -> list[str]:
    """Per-layer variance, angular distance and pruning curve of every depth and arm at the chosen rate, seed 0."""
    try:
        from hf_plugins.models.lns.diagnostics import plot_depth_reports

        reports, pruning = {}, {}
        for group, arms in summary.items():
            for arm, lane in arms.items():
                if lane["best_runs"]:
                    run = lane["best_runs"][0]
                    name = f"{'LNS' if arm == 'lns' else 'Pre-LN'} {group} lr {_sweep.lr_key(lane['best_lr'])}"
                    reports[name], pruning[name] = run["depth_trained"], run["pruning"]
        path = str(Path(plot_path).with_name(Path(plot_path).stem + "_depth.png"))
        return [plot_depth_reports(reports, path, pruning=pruning)] if reports else []
    except ImportError as exc:
        print(f"no depth plot: {exc}", flush=True)
        return []


def make_plan(args) -> _sweep.Plan:
    cfg = SMOKE if args is not None and args.smoke else FULL
    depths = (args.depths if args is not None and args.depths else None) or cfg["depths"]

    def case(group: str) -> str:
        c = SMOKE if args.smoke else FULL
        steps = args.steps or c["steps"]
        return (f"{'smoke, ' if args.smoke else ''}{group} x {c['hidden']} Llama, project corpus "
                f"{steps * c['batch'] * c['seq'] / 1e6:.3g}M tokens ({steps} steps, B={c['batch']} T={c['seq']}), "
                "Adam, no wd, no clipping")  # fmt: skip

    return _sweep.Plan(
        script=SCRIPT,
        path=Path(__file__).resolve(),
        groups={f"{d}L": {"lns": grid(d), "pre_ln": grid(d)} for d in depths},
        ours="lns",
        labels={"lns": "LNS", "pre_ln": "Pre-LN"},
        select="val_ppl",
        select_label="validation perplexity",
        metrics=lambda group: [
            ("test_ppl", "test perplexity"),
            ("var_growth", "last-block / embedding output variance"),
            ("deep_drop", "test ppl ratio removing one deep-half block"),
            ("deep_angular", "angular distance of deep-half blocks"),
        ],
        case=case,
        curve_label="validation loss (first blocks)",
        cost=lambda group, arm: int(group.rstrip("L")),
        extra_plot=depth_plot,
        protocol="Each arm and depth: learning rates swept at seed 0, the rate with the lowest validation perplexity "
        "chosen, then seeds 1 and 2 at it; mean [min, max] over the three seeds on the test split.",
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models on a tiny corpus, CPU")
    p.add_argument("--corpus", default="corpus_out", help="directory written by `hf-plugins corpus build`")
    p.add_argument("--depths", type=int, nargs="+", default=None, help="numbers of layers (default 12 24)")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default {FULL['steps']})")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same step, less memory)")
    _sweep.add_arguments(p, make_plan(None))
    args = p.parse_args(argv)
    if args.grad_accum < 1 or (SMOKE if args.smoke else FULL)["batch"] % args.grad_accum:
        p.error(f"--grad-accum must divide the batch of {(SMOKE if args.smoke else FULL)['batch']} sequences")
    return _sweep.run(make_plan(args), args, run_unit, argv)


if __name__ == "__main__":
    raise SystemExit(main())
