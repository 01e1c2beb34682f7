"""Pre-train a small model from scratch on the project corpus: the shared harness of the pre-training checks.

Any of our model types (llama, lns_llama, coe, neurotrails; qwen3_moe as the MoE baseline), any of our
optimizers (--optim adamw | stable_spam | alphadecay | alphadecay:stable_spam, from hf_plugins.registry) and
collators (--collator plain | meap). Fixed seeds, bf16 autocast on GPU, a token budget, periodic validation,
and a JSON result (config, versions, loss curve, final validation perplexity, tokens/s, peak memory).

Two drivers that must agree for the same config (tests/test_corpus.py checks it on CPU):
  --loop trainer  the stock transformers Trainer (what users of the plugins run)
  --loop plain    a plain PyTorch loop with the Trainer's own optimizer grouping and LR schedule

Examples:
  python benchmarks/pretrain.py --size 20m --optim adamw --tokens 20_000_000 --out runs/adamw.json
  python benchmarks/pretrain.py --size 20m --model lns_llama --optim stable_spam --collator meap
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch


# (hidden, layers, heads, kv heads, intermediate): ~20M and ~60M parameters with the 49,152-token
# SmolLM2 vocabulary and tied embeddings (embeddings are 12.6M / 25.2M of them).
SIZES = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64},
    "20m": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 688},
    "60m": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 1376},
}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="corpus_out", help="directory written by `hf-plugins corpus build`")
    p.add_argument("--model", default="llama", help="model type: llama, lns_llama, coe, neurotrails, qwen3_moe")
    p.add_argument("--size", default="20m", choices=sorted(SIZES), help="model size preset")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--optim", default="adamw", help="adamw, or a name registered in hf_plugins.registry.OPTIMIZERS")
    p.add_argument("--optim-arg", action="append", metavar="KEY=VALUE", help="option of --optim")
    p.add_argument("--collator", default="plain", help="plain, or a name registered in COLLATORS (meap)")
    p.add_argument("--collator-arg", action="append", metavar="KEY=VALUE", help="option of --collator")
    p.add_argument("--loop", default="trainer", choices=["trainer", "plain"], help="driver")
    p.add_argument("--tokens", type=int, default=20_000_000, help="training token budget")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    p.add_argument(
        "--grad-accum", type=int, default=1, help="micro-batches per step (--loop trainer; less memory, same step)"
    )
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay")
    p.add_argument("--warmup-ratio", type=float, default=0.05, help="share of steps in linear warm-up")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: 8 times per run)")
    p.add_argument("--eval-tokens", type=int, default=1_000_000, help="validation tokens per evaluation")
    p.add_argument("--test-tokens", type=int, default=0, help="test-split tokens evaluated at the end (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of every plugin")
    p.add_argument("--bf16", default="auto", choices=["auto", "yes", "no"], help="bf16 autocast (auto: on GPU)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument(
        "--esd-min-eigs",
        type=int,
        default=50,
        help="per-module power-law alphas of the nn.Linear weights with at least this many eigenvalues go into the "
        "JSON at the start and the end (`esd_start`, `esd_end`; 50 = AlphaDecay's threshold; plot them with "
        "benchmarks/alphadecay_plot.py)",
    )
    return p.parse_args(argv)


def esd_rows(model, min_eigs: int) -> list[dict]:
    """`name`, `module_type`, `layer`, `alpha` and `alphadecay` (analysed by AlphaDecay's defaults) per linear weight."""
    from hf_plugins import model_esd

    keep = ("name", "module_type", "layer", "alpha", "alphadecay")
    return [{k: r[k] for k in keep} for r in model_esd(model, min_eigs=min_eigs)]


def _options(pairs, flag):
    from hf_plugins.registry import parse_options

    return parse_options(pairs, flag)


def build_model(args, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SIZES[args.size])
    fields.update(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(args.seq_len, 128),
        tie_word_embeddings=args.model != "neurotrails",  # each NeuroTrails trail has its own output layer
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # MoE baselines and CoE at equal active compute: 16 experts a quarter of the dense MLP wide; the MoE routes
    # each token to 4 experts once, CoE to 2 experts in each of 2 iterations (paper: CoE C=2 K=4 ~ MoE K=8).
    if args.model == "qwen3_moe":
        fields.update(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=fields["intermediate_size"] // 4)
    if args.model == "coe":
        fields.update(
            num_experts=16,
            num_experts_per_tok=2,
            num_iterations=2,
            n_shared_experts=0,
            moe_intermediate_size=fields["intermediate_size"] // 4,
        )
    fields.update(_options(args.model_arg, "--model-arg"))
    config = AutoConfig.for_model(args.model, **fields)
    torch.manual_seed(args.seed)
    return AutoModelForCausalLM.from_config(config)


class _Collate:
    """Blocks are full length: labels are the inputs (the model shifts them)."""

    def __call__(self, examples):
        ids = torch.stack([e["input_ids"] for e in examples])
        return {"input_ids": ids, "labels": ids.clone()}


class _Stream(torch.utils.data.IterableDataset):
    """The training blocks in file order (already shuffled by document at build time), so both drivers see
    the same batches without depending on a sampler's random state."""

    def __init__(self, blocks, n):
        self.blocks, self.n = blocks, n

    def __iter__(self):
        for i in range(self.n):
            yield self.blocks[i % len(self.blocks)]


def _training_arguments(args, steps, eval_every, bf16, out_dir):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size // args.grad_accum,
        per_device_eval_batch_size=args.batch_size // args.grad_accum,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        warmup_steps=max(1, int(args.warmup_ratio * steps)),
        lr_scheduler_type="cosine",
        max_grad_norm=args.max_grad_norm,
        bf16=bf16,
        logging_steps=max(1, steps // 50),
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        optim="adamw_torch",  # the plain loop's AdamW is the same torch class, non-fused, for equal numbers
    )


def _build_optimizer(model, targs, optim_name, optim_opts):
    """The optimizer as the Trainer builds it: the registry's `(cls_or_factory, kwargs)`, the Trainer's own
    decay / no-decay groups for an Optimizer class, or the factory called with the model."""
    from transformers import Trainer

    from hf_plugins import registry

    spec = registry.lookup(registry.OPTIMIZERS, "--optim", optim_name).build(targs, optim_opts)
    if spec is None:
        cls, kwargs = torch.optim.AdamW, {"lr": targs.learning_rate, "betas": (0.9, 0.95), "eps": targs.adam_epsilon}
    else:
        cls, kwargs = spec
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
        decay = set(Trainer.get_decay_parameter_names(None, model))
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if n in decay], "weight_decay": targs.weight_decay},
            {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
        ]
        return cls(groups, **kwargs)
    return cls()(model, **kwargs)


@torch.no_grad()
def evaluate(model, blocks, batch_size, device, bf16):
    model.eval()
    losses = []
    for start in range(0, len(blocks), batch_size):
        batch = _Collate()([blocks[i] for i in range(start, min(start + batch_size, len(blocks)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=batch["input_ids"]).logits
        # Cross-entropy of the (averaged) logits for every model type: NeuroTrails' `.loss` sums its trails' losses
        # and CoE adds a balance term in training mode, so `.loss` is not comparable across types.
        labels = batch["labels"][:, 1:]
        losses.append(torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def run(args) -> dict:
    from transformers import AutoTokenizer, Trainer, TrainerCallback, get_scheduler

    import hf_plugins  # noqa: F401  (registers model types, optimizers, collators)
    from hf_plugins import registry
    from hf_plugins.data.corpus import PackedBlocks, read_manifest

    if args.grad_accum < 1 or args.batch_size % args.grad_accum:
        raise ValueError(f"--grad-accum must divide --batch-size {args.batch_size}, got {args.grad_accum}")
    if args.grad_accum > 1 and args.loop != "trainer":
        raise ValueError("--grad-accum needs --loop trainer")
    micro = args.batch_size // args.grad_accum
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and device.type == "cuda")
    manifest = read_manifest(args.corpus)
    tokenizer = AutoTokenizer.from_pretrained(Path(args.corpus) / "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_blocks = PackedBlocks(args.corpus, "train", args.seq_len)
    eval_blocks = PackedBlocks(args.corpus, "validation", args.seq_len, max_tokens=args.eval_tokens)
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    eval_every = args.eval_every or max(1, steps // 8)
    model = build_model(args, tokenizer).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    optim_opts = _options(args.optim_arg, "--optim-arg")
    out_dir = Path(os.environ.get("HF_PLUGINS_RUN_DIR", "/tmp/hf_plugins_pretrain"))
    targs = _training_arguments(args, steps, eval_every, bf16, out_dir)
    collate = _Collate()
    callbacks = []
    if args.collator != "plain":
        entry = registry.lookup(registry.COLLATORS, "--collator", args.collator)
        collate = entry.build(tokenizer, model, {**_options(args.collator_arg, "--collator-arg"), "base": collate})
        if entry.callbacks:
            callbacks += entry.callbacks({})
    optim_entry = registry.lookup(registry.OPTIMIZERS, "--optim", args.optim)
    if optim_entry.callbacks:
        callbacks += optim_entry.callbacks(optim_opts)
    model_cbs = getattr(model, "training_callbacks", None)  # e.g. NeuroTrails' dynamic sparsity
    if callable(model_cbs):
        callbacks += model_cbs()

    esd_start = esd_rows(model, args.esd_min_eigs)
    curve: list[dict] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    stream = _Stream(train_blocks, steps * args.batch_size)
    if args.loop == "trainer":

        class _Record(TrainerCallback):
            def on_log(self, a, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    curve.append({"step": state.global_step, "loss": float(logs["loss"])})
                if logs and "eval_loss" in logs:
                    curve.append({"step": state.global_step, "eval_loss": float(logs["eval_loss"])})

        optimizer = _build_optimizer(model, targs, args.optim, optim_opts)
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=stream,
            eval_dataset=eval_blocks,
            data_collator=collate,
            optimizers=(optimizer, None),
            callbacks=[_Record(), *callbacks],
        )
        trainer.train()
    else:
        if callbacks:
            raise ValueError("--loop plain does not run Trainer callbacks; use --loop trainer for this plugin")
        optimizer = _build_optimizer(model, targs, args.optim, optim_opts)
        scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=targs.warmup_steps, num_training_steps=steps)
        model.train()
        loader = torch.utils.data.DataLoader(stream, batch_size=args.batch_size, collate_fn=collate)
        running, count = 0.0, 0
        for step, batch in enumerate(loader, start=1):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            model.zero_grad(set_to_none=True)
            running, count = running + loss.item(), count + 1
            if step % targs.logging_steps == 0:
                curve.append({"step": step, "loss": running / count})
                running, count = 0.0, 0
            if step % eval_every == 0:
                curve.append({"step": step, "eval_loss": evaluate(model, eval_blocks, args.batch_size, device, bf16)})
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    final = evaluate(model, eval_blocks, micro, device, bf16)
    test = None
    if args.test_tokens:
        test_blocks = PackedBlocks(args.corpus, "test", args.seq_len, max_tokens=args.test_tokens)
        test = evaluate(model, test_blocks, micro, device, bf16)
    table = getattr(optimizer, "alphadecay_table", None)
    import transformers

    result = {
        "config": vars(args),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "parameters": n_params,
        "steps": steps,
        "tokens": steps * args.batch_size * args.seq_len,
        "corpus_train_sha256": manifest["splits"]["train"]["sha256"],
        "curve": curve,
        "final_eval_loss": final,
        "final_eval_perplexity": math.exp(min(final, 50.0)),
        "final_test_loss": test,
        "final_test_perplexity": None if test is None else math.exp(min(test, 50.0)),
        "seconds": seconds,
        "tokens_per_second": steps * args.batch_size * args.seq_len / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "esd_start": esd_start,
        "esd_end": esd_rows(model, args.esd_min_eigs),
        "alphadecay_end": table() if callable(table) else None,  # {module: {"alpha", "weight_decay"}} of AlphaDecay
    }
    return result


def smoke_corpus(out_dir: str | Path | None = None) -> str:
    """A tiny corpus for CPU smoke runs: arithmetic word problems (hf_plugins.data.arithmetic) tokenized with the
    in-code word-level tokenizer, 10% validation and 10% test documents. Built once (default: a folder in the
    system's temp dir, shared by every smoke run) into a temporary folder that is then renamed, so concurrent smoke
    runs never read a half-built corpus; returns the directory."""
    import shutil
    import tempfile

    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems
    from hf_plugins.data.corpus import Source, build_corpus
    from hf_plugins.testing import tiny_tokenizer

    out = Path(out_dir) if out_dir is not None else Path(tempfile.gettempdir()) / "hf_plugins_smoke_corpus"
    if not (out / "manifest.json").is_file():
        problems = generate_problems(ArithmeticConfig(seed=0, num_train=600, num_test=0))

        def extract(root):
            for i, problem in enumerate(problems):
                yield f"arithmetic/{i:05d}", problem.plain_text()

        source = Source("arithmetic", (), "generated in code", None, extract, "arithmetic word problems")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        build_corpus(tmp, tokenizer=tiny_tokenizer(), sources=[], extra_sources=[source], validation_fraction=0.1,
                     test_fraction=0.1)  # fmt: skip
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:  # built meanwhile by another process
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def sweep_run(args, cfg: dict, lr: float, seed: int, options: list[str], extra=lambda res: {}) -> dict:
    """One run of a quality check's learning-rate sweep (stable_spam_quality.py, alphadecay_quality.py): the model
    `size`, `batch`, `seq`, `eval_tokens` and `test_tokens` of `cfg`, `args.tokens` training tokens (default cfg's
    `tokens`), `args.grad_accum`, four validations per run, bf16 autocast on the GPU, on `args.corpus` (the smoke
    corpus with `args.smoke`); `options`: further flags of this script (optimizer, decay, clipping). Returns the
    sweep's record of the run: its metrics, then `extra(result)`, then its device and versions."""
    import _results  # a sibling module, as for the quality scripts that call this

    tokens = args.tokens or cfg["tokens"]
    steps = max(1, tokens // (cfg["batch"] * cfg["seq"]))
    argv = [
        "--corpus", smoke_corpus() if args.smoke else args.corpus, "--size", cfg["size"], "--lr", repr(lr),
        "--seed", str(seed), "--tokens", str(tokens), "--batch-size", str(cfg["batch"]), "--seq-len", str(cfg["seq"]),
        "--eval-tokens", str(cfg["eval_tokens"]), "--test-tokens", str(cfg["test_tokens"]),
        "--eval-every", str(max(1, steps // 4)), "--bf16", "no" if args.smoke else "auto",
        "--grad-accum", str(args.grad_accum), *options,
    ]  # fmt: skip
    res = run(parse_args(argv))
    return {
        "val_loss": res["final_eval_loss"],
        "val_ppl": res["final_eval_perplexity"],
        "test_loss": res["final_test_loss"],
        "test_ppl": res["final_test_perplexity"],
        "curve": [[c["step"], c["eval_loss"]] for c in res["curve"] if "eval_loss" in c],
        "train_loss": [[c["step"], c["loss"]] for c in res["curve"] if "loss" in c],
        "steps": res["steps"],
        "tokens": res["tokens"],
        "parameters": res["parameters"],
        "tokens_per_s": res["tokens_per_second"],
        "peak_gib": res["peak_memory_gib"],
        **extra(res),
        "device": _results.device_label(res["device"] != "cpu", args.smoke),
        "stack": f"{res['versions']['torch']} / {res['versions']['transformers']}",
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(
        f"{args.model} {args.size} optim={args.optim} collator={args.collator} loop={args.loop}: "
        f"{result['parameters'] / 1e6:.1f}M params, {result['steps']} steps, eval loss {result['final_eval_loss']:.4f} "
        f"(ppl {result['final_eval_perplexity']:.2f}), {result['tokens_per_second']:,.0f} tok/s"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
