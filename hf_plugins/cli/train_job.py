"""The body of `hf-plugins train`, usable from Python: `run_training(namespace)`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from hf_plugins import registry
from hf_plugins.cli import common


# CLI flag -> TrainingArguments/SFTConfig field, for the flags that map one to one.
_DIRECT_FIELDS = (
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "max_grad_norm",
    "logging_steps",
    "seed",
    "bf16",
)


def _training_kwargs(args, output_dir: Path, defaults: dict, fields: set[str]) -> dict:
    kw = {name: getattr(args, name) for name in _DIRECT_FIELDS}
    if args.gradient_checkpointing:  # only when asked: the field is renamed in newer transformers releases
        kw["gradient_checkpointing"] = True
    kw["learning_rate"] = args.learning_rate if args.learning_rate is not None else defaults.get("learning_rate", 5e-5)
    for key, value in defaults.items():
        if key != "learning_rate" and key in fields:
            kw.setdefault(key, value)
    kw.update(
        output_dir=str(output_dir / "trainer"),
        report_to="none",
        save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=args.save_steps if args.save_steps > 0 else 500,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    extra = registry.parse_options(args.ta, "--ta")
    unknown = sorted(set(extra) - fields)
    if unknown:
        raise ValueError(f"--ta names no TrainingArguments/SFTConfig field: {unknown}")
    kw.update(extra)
    return kw


def _load_data(args, pretrain: bool):
    from hf_plugins.data.arithmetic import ArithmeticConfig, make_dataset

    if args.dataset == "arithmetic":
        cfg = ArithmeticConfig(
            seed=args.arith_seed,
            num_train=args.train_size,
            num_test=max(args.eval_size, 1),
            max_ops=args.arith_max_ops,
            max_value=args.arith_max_value,
        )
        train = make_dataset(cfg, "train", view="text" if pretrain else "prompt_completion")
        test = make_dataset(cfg, "test", view="qa") if args.eval_size > 0 else None
        return train, test
    path = Path(args.dataset)
    if not path.is_file() or path.suffix not in (".json", ".jsonl"):
        raise FileNotFoundError(f"--dataset {args.dataset!r} is neither 'arithmetic' nor a local .json/.jsonl file")
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train"), None


def _evaluate(model, tokenizer, test, args, chat: bool):
    from hf_plugins.evaluation import evaluate_exact_match

    return evaluate_exact_match(
        model,
        tokenizer,
        test["question"],
        test["answer"],
        batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        use_chat_template=chat,
        progress=True,
    )


def _tokenize_text(dataset, tokenizer, max_length: int):
    def tok(batch):
        texts = [t + (tokenizer.eos_token or "") for t in batch["text"]]
        return tokenizer(texts, truncation=True, max_length=max_length)

    return dataset.map(tok, batched=True, remove_columns=dataset.column_names)


def run_training(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    import hf_plugins  # noqa: F401  (fills the registries)

    pretrain = args.model_config is not None
    if args.method is None:  # from scratch every weight trains; fine-tuning defaults to LoRA
        args.method = "full" if pretrain else "lora"
    method = registry.lookup(registry.METHODS, "--method", args.method)
    optim = registry.lookup(registry.OPTIMIZERS, "--optim", args.optim)
    collator = None if args.collator == "default" else registry.lookup(registry.COLLATORS, "--collator", args.collator)
    method_opts = registry.parse_options(args.method_arg, "--method-arg")
    optim_opts = registry.parse_options(args.optim_arg, "--optim-arg")
    collator_opts = registry.parse_options(args.collator_arg, "--collator-arg")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    output_dir = Path(args.output_dir or f"runs/{args.method}-{args.optim}-{stamp}")
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    if pretrain:
        model_cfg = registry.lookup(registry.MODEL_CONFIGS, "--model-config", args.model_config)
        tokenizer = common.load_tokenizer(args.tokenizer)
        config = model_cfg.build(tokenizer, registry.parse_options(args.model_arg, "--model-arg"))
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    else:
        if args.model_arg:
            raise ValueError("--model-arg only applies with --model-config (pre-training from scratch)")
        model, tokenizer = common.load_model(args.model, args.dtype)
    chat = (not pretrain) and bool(getattr(tokenizer, "chat_template", None))
    train_ds, test_ds = _load_data(args, pretrain)

    result: dict = {"output_dir": str(output_dir), "method": args.method, "optim": args.optim}
    if test_ds is not None and not args.no_eval_before:
        print(f"evaluating before training on {len(test_ds)} held-out problems ...")
        result["eval_before"] = _evaluate(model, tokenizer, test_ds, args, chat)
        print(f"accuracy before: {result['eval_before']['accuracy']:.3f}")

    peft_config = method.build(model, method_opts)
    defaults = {**method.defaults, **optim.defaults, **(collator.defaults if collator else {})}
    if pretrain:
        fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        targs = TrainingArguments(**_training_kwargs(args, output_dir, defaults, fields))
    else:
        from trl import SFTConfig

        fields = {f.name for f in dataclasses.fields(SFTConfig)}
        kw = _training_kwargs(args, output_dir, defaults, fields)
        kw.setdefault("max_length", args.max_length)
        targs = SFTConfig(**kw)
    opt_spec = optim.build(targs, optim_opts)
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

    if pretrain:
        from transformers import DataCollatorForLanguageModeling

        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        train_tok = _tokenize_text(train_ds, tokenizer, args.max_length)
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=train_tok,
            processing_class=tokenizer,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            **trainer_kwargs,
        )
    else:
        from trl import SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=targs,
            train_dataset=train_ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            **trainer_kwargs,
        )
    if collator is not None:
        # Set after construction: SFTTrainer refuses custom collators in padding-free mode, and wrapping the
        # trainer's own collator keeps TRL's padding / completion masks (spec hf_integration.md section 5).
        trainer.data_collator = collator.build(
            tokenizer, trainer.model, {**collator_opts, "base": trainer.data_collator}
        )

    t0 = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    result["train_seconds"] = time.perf_counter() - t0
    result["train_loss"] = float(train_out.training_loss)
    result["steps"] = int(trainer.state.global_step)
    result["log_history"] = trainer.state.log_history

    trainer.save_model(str(output_dir / "model"))
    tokenizer.save_pretrained(str(output_dir / "model"))
    if test_ds is not None:
        result["eval_after"] = _evaluate(trainer.model, tokenizer, test_ds, args, chat)
    run_config = {k: v for k, v in vars(args).items() if k != "func"}
    run_config["peft_config"] = peft_config.to_dict() if peft_config is not None else None
    common.write_json(output_dir / "run_config.json", run_config)
    metrics = {k: v for k, v in result.items() if k not in ("eval_before", "eval_after")}
    for key in ("eval_before", "eval_after"):
        if key in result:
            metrics[key] = {k: v for k, v in result[key].items() if k != "samples"}
            common.write_json(output_dir / f"{key}_samples.json", result[key]["samples"])
    common.write_json(output_dir / "metrics.json", metrics)
    result["trainer"] = trainer
    return result
