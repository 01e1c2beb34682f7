"""Stable-SPAM vs AdamW, each at its own tuned learning rate (arXiv 2502.17055 v1/v2: Fig. 1 and 5, BF16 and 4-bit
training end lower with Stable-SPAM; Fig. 6, Adam degrades at high rates in 4-bit, Stable-SPAM does not).

Two comparison groups, each a learning-rate sweep per arm, the best rate chosen on a validation split, then three
seeds at it (benchmarks/_sweep.py):
- `corpus`: the project's 20M Llama (benchmarks/pretrain.py, stock Trainer, 18.9M parameters) pre-trained from
  scratch on the project corpus, bf16 autocast, cosine schedule, wd 0.1, betas (0.9, 0.95), B=32 x T=512.
  AdamW keeps the Trainer's gradient clipping at 1.0 (a strong baseline reported in the SPAM repository);
  Stable-SPAM runs without global clipping, as the paper's scripts (`--grad_clipping 0.0`). Selected on validation
  loss, reported: test-split perplexity. Seeds change the initialisation; the data order is the corpus order.
- `int4`: a Llama with hidden 512, 8 layers, intermediate 1376 (the 60M core) trained on the embedded arithmetic
  text with the in-code word-level tokenizer, every decoder linear layer with symmetric INT4 fake quantisation of
  weights (per output channel) and activations (per token), straight-through gradients; B=32 x T=128, warm-up 10%,
  cosine to 0.1x; no clipping for either arm (`adamw_clip1` and the AdaGN-only ablation `adagn_only` run when named
  in `--arms`). Selected on validation loss, reported: test loss and loss spikes (a loss above 1.5x the median of
  the previous 20 steps). Seeds change the initialisation and the batch order.

    python benchmarks/stable_spam_quality.py --corpus .gpu_corpus --jobs 4 --work-dir W   # GPU: both groups
    python benchmarks/stable_spam_quality.py --smoke                                     # tiny, CPU
    python benchmarks/stable_spam_quality.py --merge --work-dir W --append --plot docs/img/stable_spam_quality.png

Stable-SPAM uses its class defaults (gamma1 0.7, gamma2 0.9, theta 0.999, reset every 1000 updates, eta_min 0.5)
with total_T = the run's steps.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import types
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402
import _sweep  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


SCRIPT = "stable_spam_quality.py"
CORPUS = {"size": "20m", "tokens": 2_000_000, "batch": 32, "seq": 512, "eval_tokens": 262_144, "test_tokens": 524_288}
CORPUS_SMOKE = {"size": "tiny", "tokens": 6 * 4 * 32, "batch": 4, "seq": 32, "eval_tokens": 1024, "test_tokens": 1024}
INT4 = {
    "hidden": 512,
    "layers": 8,
    "heads": 8,
    "inter": 1376,
    "steps": 300,
    "batch": 32,
    "seq": 128,
    "problems": 20000,
}
INT4_SMOKE = {"hidden": 32, "layers": 2, "heads": 4, "inter": 64, "steps": 6, "batch": 4, "seq": 32, "problems": 200}
GRID_CORPUS = [1.5e-3, 3e-3, 6e-3]  # the earlier single-rate runs used 3e-3 for both arms
GRID_INT4 = [7.5e-4, 1.5e-3, 3e-3]


class _STEQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, dim):
        qmax = 2 ** (bits - 1) - 1
        scale = x.detach().abs().amax(dim=dim, keepdim=True).clamp_min(1e-8) / qmax
        return (x / scale).round().clamp(-qmax - 1, qmax) * scale

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def _quant_forward(self, x):
    w = _STEQuant.apply(self.weight, self.bits, 1)  # per output channel
    xq = _STEQuant.apply(x, self.bits, -1)  # per token
    return F.linear(xq, w, self.bias)


def quantise_linears(model, bits: int) -> int:
    n = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            module.bits = bits
            module.forward = types.MethodType(_quant_forward, module)
            n += 1
    return n


def make_data(tok, n_train: int, n_eval: int, seq: int, seed: int = 0) -> dict:
    """Arithmetic text as [N, seq] blocks: `train`, and `validation` / `test` from the first / second half of the
    held-out problems (never a training question)."""
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    cfg = ArithmeticConfig(seed=seed, num_train=n_train, num_test=2 * n_eval)
    held_out = generate_problems(cfg, split="test")
    parts = {
        "train": generate_problems(cfg, split="train"),
        "validation": held_out[:n_eval],
        "test": held_out[n_eval:],
    }
    out = {}
    for split, problems in parts.items():
        ids = tok(" ".join(p.plain_text() + " " + tok.eos_token for p in problems))["input_ids"]
        usable = len(ids) // seq * seq
        out[split] = torch.tensor(ids[:usable]).view(-1, seq)
    return out


_CACHE: dict = {}


def _int4_data(cfg):
    if "int4" not in _CACHE:
        from hf_plugins.testing import tiny_tokenizer

        tok = tiny_tokenizer()
        _CACHE["int4"] = (tok, make_data(tok, cfg["problems"], max(50, cfg["problems"] // 20), cfg["seq"]))
    return _CACHE["int4"]


@torch.no_grad()
def _eval_loss(model, blocks, amp, device, bsz=64) -> float:
    model.eval()
    losses = []
    for start in range(0, len(blocks), bsz):
        batch = blocks[start : start + bsz].to(device)
        with amp:
            losses.append(float(model(input_ids=batch, labels=batch).loss) * len(batch))
    model.train()
    return sum(losses) / len(blocks)  # equal-length blocks: token-weighted


def _int4_unit(arm: str, lr: float, seed: int, args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_plugins import StableSPAM, hf_param_groups

    cfg = INT4_SMOKE if args.smoke else INT4
    steps = args.int4_steps or cfg["steps"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    tok, data = _int4_data(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg["hidden"], intermediate_size=cfg["inter"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
        max_position_embeddings=cfg["seq"], pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if args.bits:
        quantise_linears(model, args.bits)
    groups = hf_param_groups(model, 0.0)
    if arm.startswith("adamw"):
        opt = torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")
    else:
        kw = {"adaclip": False, "reset_interval": None} if arm == "adagn_only" else {}
        opt = StableSPAM(groups, lr=lr, total_T=steps, **kw)  # class defaults
    clip = 1.0 if arm == "adamw_clip1" else math.inf
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))),
    )
    gen = torch.Generator().manual_seed(seed)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses, grad_norms, curve = [], [], []
    model.train()
    for step in range(1, steps + 1):
        batch = data["train"][torch.randint(0, len(data["train"]), (cfg["batch"],), generator=gen)].to(device)
        with amp:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % max(1, steps // 4) == 0 or step == steps:
            curve.append([step, _eval_loss(model, data["validation"], amp, device)])
    spikes = sum(
        1
        for i in range(20, len(losses))
        if not math.isfinite(losses[i]) or losses[i] > 1.5 * statistics.median(losses[i - 20 : i])
    )
    return {
        "val_loss": curve[-1][1],
        "test_loss": _eval_loss(model, data["test"], amp, device),
        "spikes": float(spikes),
        "max_grad_norm": max(grad_norms),
        "final_train_loss": statistics.fmean(losses[-10:]),
        "curve": curve,
        "train_loss": losses,
        "steps": steps,
        "tokens": steps * cfg["batch"] * cfg["seq"],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "device": _results.device_label(device.type == "cuda", args.smoke),
        "stack": _results.stack(),
    }


def _corpus_unit(arm: str, lr: float, seed: int, args) -> dict:
    import pretrain

    clip = 1.0 if arm == "adamw" else args.spam_max_grad_norm
    options = ["--optim", arm, "--max-grad-norm", str(clip), "--weight-decay", "0.1"]
    cfg = CORPUS_SMOKE if args.smoke else CORPUS
    return pretrain.sweep_run(args, cfg, lr, seed, options, lambda res: {"max_grad_norm": clip})


def run_unit(group: str, arm: str, lr: float, seed: int, args) -> dict:
    return (_corpus_unit if group == "corpus" else _int4_unit)(arm, lr, seed, args)


def _case(args):
    def case(group: str) -> str:
        smoke = "smoke, " if args.smoke else ""
        if group == "corpus":
            c = CORPUS_SMOKE if args.smoke else CORPUS
            return (f"{smoke}pretrain.py {c['size']} Llama, project corpus {(args.tokens or c['tokens']) / 1e6:.3g}M "
                    f"tokens, B={c['batch']} T={c['seq']}, cosine, wd 0.1, bf16; AdamW clip 1.0, Stable-SPAM clip "
                    f"{args.spam_max_grad_norm:g}")  # fmt: skip
        c = INT4_SMOKE if args.smoke else INT4
        return (f"{smoke}Llama h{c['hidden']} L{c['layers']} from scratch, arithmetic text, INT{args.bits} fake-quant "
                f"W+A, {args.int4_steps or c['steps']} steps, B={c['batch']} T={c['seq']}, no clipping")  # fmt: skip

    return case


def make_plan(args) -> _sweep.Plan:
    def metrics(group):
        if group == "corpus":
            return [("test_ppl", "test perplexity")]
        return [("test_loss", "test loss"), ("spikes", "loss spikes")]

    return _sweep.Plan(
        script=SCRIPT,
        path=Path(__file__).resolve(),
        groups={
            "corpus": {"stable_spam": GRID_CORPUS, "adamw": GRID_CORPUS},
            "int4": {"stable_spam": GRID_INT4, "adamw": GRID_INT4},
        },
        optional={"int4": {"adamw_clip1": GRID_INT4, "adagn_only": GRID_INT4}},
        ours="stable_spam",
        labels={
            "stable_spam": "Stable-SPAM",
            "adamw": "AdamW",
            "adamw_clip1": "AdamW clip 1.0",
            "adagn_only": "AdaGN only",
        },  # fmt: skip
        select="val_loss",
        select_label="validation loss",
        metrics=metrics,
        case=_case(args),
        cost=lambda group, arm: (2.0 if group == "int4" else 1.0) * (1.2 if arm != "adamw" else 1.0),
        protocol="Each arm: learning rates swept at seed 0, the rate with the lowest validation loss chosen, then "
        "seeds 1 and 2 at it; mean [min, max] over the three seeds on the test split.",
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models and data on the CPU")
    p.add_argument("--corpus", default="corpus_out", help="directory written by `hf-plugins corpus build`")
    p.add_argument(
        "--tokens", type=int, default=None, help=f"training tokens per corpus run (default {CORPUS['tokens']:,})"
    )
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per corpus step (same step, less memory)")
    p.add_argument("--int4-steps", type=int, default=None, help=f"steps per int4 run (default {INT4['steps']})")
    p.add_argument("--bits", type=int, default=4, help="fake-quantisation bits of the int4 group (0: bf16 only)")
    p.add_argument("--spam-max-grad-norm", type=float, default=0.0, help="Stable-SPAM's clipping (paper: none)")
    _sweep.add_arguments(p, make_plan(None))
    args = p.parse_args(argv)
    return _sweep.run(make_plan(args), args, run_unit, argv)


if __name__ == "__main__":
    raise SystemExit(main())
