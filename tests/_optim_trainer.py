"""The tiny stock-Trainer set-up shared by the optimizer tests (Stable-SPAM, AlphaDecay)."""

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_plugins import OptimizerStatsCallback
from hf_plugins.testing import tiny_model, tiny_text_dataset


def tiny_args(out, **kw):
    """4 steps of batch 4 on the CPU, constant lr 3e-3, a checkpoint every 2 steps, a log line every step."""
    base = {
        "output_dir": str(out),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 2,
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "seed": 0,
        "disable_tqdm": True,
    }
    base.update(kw)
    return TrainingArguments(**base)


def tiny_trainer(args, tok, optimizer_cls_and_kwargs):
    """A stock Trainer on a seeded tiny Llama with the given `optimizer_cls_and_kwargs` and the stats callback."""
    model = tiny_model("llama", seed=0)
    model.train()
    return Trainer(
        model=model,
        args=args,
        train_dataset=tiny_text_dataset(tok, n=24),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        callbacks=[OptimizerStatsCallback()],
    )
