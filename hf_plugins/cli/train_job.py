"""The body of `hf-plugins train`, usable from Python: `run_training(parse_train_args([...]))`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from trl import SFTConfig

from hf_plugins import registry
from hf_plugins.cli import common
from hf_plugins.cli.arguments import DataArguments, EvalArguments, ModelArguments, PluginArguments, PluginParser
from hf_plugins.loading import load_model, load_text_dataset, load_tokenizer, resolve_source
from hf_plugins.model_card import write_model_card


TRAIN_DATACLASSES = (ModelArguments, DataArguments, EvalArguments, PluginArguments, SFTConfig)

# Where `hf-plugins train` departs from the stock SFTConfig defaults, and why. Everything else is stock.
CLI_DEFAULTS = {
    # The main job: LIFT on SmolLM2-135M and 400 arithmetic problems in ~4 minutes on a 2-core CPU (stock: 3 epochs
    # of batch 8, 150 steps, hours there). 40 steps of batch 4 see 160 of the 400 problems.
    "max_steps": 40,
    "per_device_train_batch_size": 4,
    "logging_steps": 5,
    # SFTConfig turns bf16 on whenever fp16 is off, which fails on a CPU; fp32 numbers compare across machines.
    "bf16": False,
    # SFTConfig turns it on; the main job fits in memory without spending time on recomputing activations. None, not
    # False: transformers >= 5.25 reads None as "off" without its deprecation warning for this field's name.
    "gradient_checkpointing": None,
    # The run saves its final adapter or model under OUTPUT_DIR/model itself; intermediate checkpoints on request
    # (--save_strategy steps --save_steps N, or --save_steps N alone).
    "save_strategy": "no",
}
# Flags of earlier releases that are gone, with their replacement.
REMOVED_FLAGS = {
    "--ta": "--ta KEY=VALUE is gone: every TrainingArguments / SFTConfig field is a flag of its own, write --KEY VALUE",
}


# PEFT config fields shown in model cards (the full config is the adapter's adapter_config.json).
_CARD_PEFT_KEYS = ("peft_type", "r", "lora_alpha", "density", "update_interval", "target_modules")


def _card_value(value) -> str:
    if isinstance(value, (set, list, tuple)):
        return "+".join(sorted(map(str, value)))
    return str(getattr(value, "value", value))


@dataclass
class TrainArgs:
    """Everything `hf-plugins train` parsed: model, data, evaluation, plugins and the stock `SFTConfig`."""

    model: ModelArguments
    data: DataArguments
    eval: EvalArguments
    plugins: PluginArguments
    training: SFTConfig


def _entries(plugins: PluginArguments) -> list[registry.Entry]:
    out = [
        registry.lookup(registry.METHODS, "--method", plugins.method),
        registry.lookup(registry.OPTIMIZERS, "--optim", plugins.optim),
    ]
    if plugins.collator != "default":
        out.append(registry.lookup(registry.COLLATORS, "--collator", plugins.collator))
    return out


def make_train_parser(defaults: dict | None = None) -> PluginParser:
    parser = PluginParser(
        TRAIN_DATACLASSES,
        prog="hf-plugins train",
        usage="hf-plugins train [--config FILE.yaml] [--FIELD VALUE ...]",
        description=(
            "Fine-tune a causal LM with the stock TRL SFTTrainer (or pre-train one from scratch with the stock Trainer "
            "when --model_config is given) and one plugin per slot: --method (PEFT tuner or full), --optim, "
            "--collator. With no flags: LIFT on the embedded SmolLM2-135M-Instruct and arithmetic problems, "
            "exact-match accuracy before and after. --config FILE.yaml reads any of these fields from a file; "
            "flags override it. Writes OUTPUT_DIR: run_config.json, metrics.json and model/ (adapter or model with "
            "its model card)."
        ),
    )
    values = {**CLI_DEFAULTS, **(defaults or {})}
    dests = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise ValueError(f"training defaults name no SFTConfig field: {unknown}")
    parser.set_defaults(**values)
    return parser


def _parse(parser: PluginParser, argv: list[str]) -> TrainArgs:
    *objs, namespace, rest = parser.parse_args_and_config(list(argv), return_remaining_strings=True)
    if rest:
        raise ValueError(
            f"unknown field(s) {[r for r in rest if r.startswith('-')] or rest}; see hf-plugins train --help"
        )
    args = TrainArgs(*objs)
    args.plugins.optim = namespace.plugin_optim
    registry.lookup(registry.OPTIMIZERS, "--optim", args.plugins.optim)
    return args


def _config_keys(argv: list[str]) -> set[str]:
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return set()
    path = Path(argv[argv.index("--config") + 1])
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    data = yaml.safe_load(path.read_text())
    return set(data) - {"env"} if isinstance(data, dict) else set()


def parse_train_args(argv: list[str] | None = None) -> TrainArgs:
    """Parse `hf-plugins train` flags (and `--config FILE.yaml`). Precedence, highest first: flags, the config
    file, the chosen plugins' defaults (e.g. LIFT's learning rate), `CLI_DEFAULTS`, the stock defaults."""
    argv = list(argv or [])
    for i, token in enumerate(argv):
        flag = token.split("=", 1)[0]
        if flag in REMOVED_FLAGS:
            value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
            key, _, val = value.partition("=")
            raise ValueError(REMOVED_FLAGS[flag] + (f" (here: --{key} {val})" if key and val else ""))
    first = make_train_parser()
    explicit = first.explicit_dests(argv) | _config_keys(argv)
    # `--help` is answered by the second parser, whose defaults are those of the chosen plugins.
    parsed = _parse(first, [a for a in argv if a not in ("-h", "--help")])
    plugins = parsed.plugins
    defaults: dict = {}
    for entry in _entries(plugins):
        defaults.update(entry.defaults)
    if "save_steps" in explicit and "save_strategy" not in explicit and parsed.training.save_steps > 0:
        defaults["save_strategy"] = "steps"  # `--save_steps N` alone turns checkpoints on, as in earlier releases
    defaults["output_dir"] = f"runs/{plugins.method}-{plugins.optim}-{time.strftime('%Y%m%d-%H%M%S')}"
    return _parse(make_train_parser(defaults), argv)


def _load_data(args: TrainArgs, pretrain: bool):
    from hf_plugins.data.arithmetic import ArithmeticConfig, make_dataset

    d, e = args.data, args.eval
    if d.dataset == "arithmetic":
        cfg = ArithmeticConfig(
            seed=d.arith_seed,
            num_train=d.train_size,
            num_test=max(e.eval_size, 1),
            max_ops=d.arith_max_ops,
            max_value=d.arith_max_value,
        )
        train = make_dataset(cfg, "train", view="text" if pretrain else "prompt_completion")
        test = make_dataset(cfg, "test", view="qa") if e.eval_size > 0 else None
        return train, test
    train = load_text_dataset(
        d.dataset, config=d.dataset_config, split=d.dataset_split, cache_dir=args.model.cache_dir
    )
    cols = set(train.column_names)
    text = args.training.dataset_text_field
    usable = {"messages", text} if not pretrain else {text}
    if not (cols & usable or (not pretrain and {"prompt", "completion"} <= cols)):
        need = f"a {text!r} column" if pretrain else f"'messages', 'prompt' and 'completion', or {text!r} columns"
        raise ValueError(f"--dataset {d.dataset!r} has columns {sorted(cols)}; training needs {need}")
    return train, None


def _evaluate(model, tokenizer, test, e: EvalArguments, chat: bool):
    from hf_plugins.evaluation import evaluate_exact_match

    return evaluate_exact_match(
        model,
        tokenizer,
        test["question"],
        test["answer"],
        batch_size=e.eval_batch_size,
        max_new_tokens=e.max_new_tokens,
        use_chat_template=chat,
        progress=True,
    )


def _tokenize_text(dataset, tokenizer, max_length: int, column: str):
    def tok(batch):
        texts = [t + (tokenizer.eos_token or "") for t in batch[column]]
        return tokenizer(texts, truncation=True, max_length=max_length)

    return dataset.map(tok, batched=True, remove_columns=dataset.column_names)


def _write_card(args: TrainArgs, path: Path, peft_config, result: dict, entries) -> None:
    from hf_plugins.models.smollm2 import SMOLLM2_REPO_ID

    m, p, t = args.model, args.plugins, args.training
    pretrain = p.model_config is not None
    hub_id = None
    if not pretrain and m.model == "smollm2":
        hub_id = SMOLLM2_REPO_ID
    elif not pretrain and m.model != "tiny" and resolve_source(m.model) == "hub":
        hub_id = m.model
    papers = {p.model_config: registry.MODEL_CONFIGS[p.model_config].paper} if pretrain else {}
    papers.update({e.name: e.paper for e in entries})
    stock_optim = str(getattr(t.optim, "value", t.optim))
    adapter = peft_config.to_dict() if peft_config is not None else {}
    settings = {
        "adapter": ", ".join(f"{k}={_card_value(adapter[k])}" for k in _CARD_PEFT_KEYS if adapter.get(k) is not None)
        or None,
        "method options": " ".join(p.method_args) or None,
        "optimizer": stock_optim if p.optim == "adamw" else p.optim,
        "optimizer options": t.optim_args,
        "collator": None if p.collator == "default" else f"{p.collator} {' '.join(p.collator_args)}".strip(),
        "learning rate": t.learning_rate,
        "optimizer steps": result.get("steps"),
        "batch size": t.per_device_train_batch_size * t.gradient_accumulation_steps,
        "schedule": f"{getattr(t.lr_scheduler_type, 'value', t.lr_scheduler_type)}, {t.warmup_steps} warm-up steps",
        "weight decay": t.weight_decay,
        "max grad norm": t.max_grad_norm,
        "seed": t.seed,
        "precision": "bf16 mixed" if t.bf16 else "fp16 mixed" if t.fp16 else m.dtype,
    }
    results = {"train loss": f"{result['train_loss']:.4f}"}
    for key, label in (("eval_before", "before"), ("eval_after", "after")):
        if key in result:
            r = result[key]
            results[f"exact match {label} training ({r['n']} held-out problems)"] = f"{r['accuracy']:.3f}"
    write_model_card(
        path,
        method=f"{p.model_config} pre-training" if pretrain else p.method,
        papers=papers,
        base_model=None if pretrain else m.model,
        base_model_id=hub_id,
        dataset=args.data.dataset,
        settings=settings,
        results=results,
        is_adapter=peft_config is not None,
    )


def run_training(args: TrainArgs, eval_before: dict | None = None) -> dict:
    """Train once as `args` says; returns the metrics (and `"trainer"`). `eval_before`, when given, is reused
    instead of scoring the untrained model again (the baselines of `--compare` start from the same model)."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    m, e, p, t = args.model, args.eval, args.plugins, args.training
    pretrain = p.model_config is not None
    entries = _entries(p)
    method, optim = entries[0], entries[1]
    collator = entries[2] if len(entries) > 2 else None
    method_opts = registry.parse_options(p.method_args, "--method_args")
    # The Trainer's own optimizers (`--optim adamw_torch`, ...) read the stock --optim_args themselves.
    optim_opts = {} if p.optim == "adamw" else registry.parse_options(t.optim_args, "--optim_args")
    collator_opts = registry.parse_options(p.collator_args, "--collator_args")

    output_dir = Path(t.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed)
    if pretrain:
        model_cfg = registry.lookup(registry.MODEL_CONFIGS, "--model_config", p.model_config)
        tokenizer = load_tokenizer(
            m.tokenizer, revision=m.revision, trust_remote_code=t.trust_remote_code, cache_dir=m.cache_dir
        )
        config = model_cfg.build(tokenizer, registry.parse_options(p.model_config_args, "--model_config_args"))
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, m.dtype if m.dtype != "auto" else "float32")
        )
    else:
        if p.model_config_args:
            raise ValueError("--model_config_args only applies with --model_config (pre-training from scratch)")
        model, tokenizer = load_model(**m.load_kwargs(trust_remote_code=t.trust_remote_code))
    chat = (not pretrain) and bool(getattr(tokenizer, "chat_template", None))
    train_ds, test_ds = _load_data(args, pretrain)

    result: dict = {"output_dir": str(output_dir), "method": p.method, "optim": p.optim}
    if eval_before is not None and test_ds is not None:
        result["eval_before"] = eval_before
    elif test_ds is not None and e.eval_before:
        print(f"evaluating before training on {len(test_ds)} held-out problems ...")
        result["eval_before"] = _evaluate(model, tokenizer, test_ds, e, chat)
        print(f"accuracy before: {result['eval_before']['accuracy']:.3f}")

    peft_config = method.build(model, method_opts)
    opt_spec = optim.build(t, optim_opts)
    callbacks = []
    for entry, opts in ((method, method_opts), (optim, optim_opts), (collator, collator_opts)):
        if entry is not None and entry.callbacks is not None:
            callbacks.extend(entry.callbacks(opts))
    model_callbacks = getattr(model, "training_callbacks", None)  # model types with training-time state (NeuroTrails)
    if callable(model_callbacks):
        callbacks.extend(model_callbacks())
    trainer_kwargs = {"callbacks": callbacks or None}
    if opt_spec is not None:
        trainer_kwargs["optimizer_cls_and_kwargs"] = opt_spec

    if pretrain:  # the stock Trainer reads the TrainingArguments part of the SFTConfig
        from transformers import DataCollatorForLanguageModeling

        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        train_tok = _tokenize_text(train_ds, tokenizer, t.max_length or 1024, t.dataset_text_field)
        trainer = Trainer(
            model=model,
            args=t,
            train_dataset=train_tok,
            processing_class=tokenizer,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            **trainer_kwargs,
        )
    else:
        from trl import SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=t,
            train_dataset=train_ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            **trainer_kwargs,
        )
    if collator is not None:
        # Set after construction: SFTTrainer refuses custom collators in padding-free mode, and wrapping the
        # trainer's own collator keeps TRL's padding and completion masks.
        trainer.data_collator = collator.build(
            tokenizer, trainer.model, {**collator_opts, "base": trainer.data_collator}
        )

    t0 = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=t.resume_from_checkpoint)
    result["train_seconds"] = time.perf_counter() - t0
    result["train_loss"] = float(train_out.training_loss)
    result["steps"] = int(trainer.state.global_step)
    result["trainable_params"] = sum(q.numel() for q in trainer.model.parameters() if q.requires_grad)
    result["log_history"] = trainer.state.log_history

    if test_ds is not None:
        result["eval_after"] = _evaluate(trainer.model, tokenizer, test_ds, e, chat)
    model_dir = output_dir / "model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    _write_card(args, model_dir, peft_config, result, entries)
    run_config = {
        **dataclasses.asdict(m),
        **dataclasses.asdict(args.data),
        **dataclasses.asdict(e),
        **dataclasses.asdict(p),
        "peft_config": peft_config.to_dict() if peft_config is not None else None,
        "training_args": t.to_dict(),
    }
    common.write_json(output_dir / "run_config.json", run_config)
    metrics = {k: v for k, v in result.items() if k not in ("eval_before", "eval_after")}
    for key in ("eval_before", "eval_after"):
        if key in result:
            metrics[key] = {k: v for k, v in result[key].items() if k != "samples"}
            common.write_json(output_dir / f"{key}_samples.json", result[key]["samples"])
    common.write_json(output_dir / "metrics.json", metrics)
    result["trainer"] = trainer
    return result


def compare_args(args: TrainArgs, argv: list[str], method: str) -> TrainArgs:
    """The `--compare` run of `method`: the same flags and file, that method with its own defaults (e.g. its
    learning rate) and no options of the main method, written to OUTPUT_DIR/compare/METHOD."""
    base = Path(args.training.output_dir)
    out = parse_train_args([*argv, "--method", method, "--output_dir", str(base / "compare" / method)])
    out.plugins.method_args, out.plugins.compare = [], None
    return out
