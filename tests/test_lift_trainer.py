"""LIFT under the stock Trainer (refresh callback, checkpoint resume), the CLI, and PEFT/transformers loading
entry points in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel, get_peft_model

import hf_plugins  # noqa: F401
from hf_plugins import LiftConfig, LiftRefreshCallback
from hf_plugins.testing import tiny_llama, tiny_text_dataset, tiny_tokenizer
from hf_plugins.tuners.lift import LiftLayer


IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7]])


def _trainer(model, out, max_steps, save_steps=0, callbacks=None):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tok = tiny_tokenizer()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=tiny_text_dataset(tok, n=16, max_length=24),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        callbacks=callbacks if callbacks is not None else [LiftRefreshCallback()],
    )


def _lift_model(**kw):
    kw = {"r": 2, "update_interval": 2, "task_type": "CAUSAL_LM", **kw}
    return get_peft_model(tiny_llama(), LiftConfig(**kw))


def _values(model):
    return torch.cat([m.lift_values["default"].detach().clone() for m in model.modules() if isinstance(m, LiftLayer)])


def _official_refresh_updates(interval: int, updates: int) -> list[int]:
    """The updates after which the official LIFT optimizer re-selects its masks, by its own counting: a counter
    incremented after every update, then a refresh when `(counter + 1) % interval == 0` (`sparseAdam.py`). The last
    update is left out (a refresh there would only rewrite the adapter)."""
    out, counter = [], 0
    for _ in range(updates):
        counter += 1
        if (counter + 1) % interval == 0 and counter < updates:
            out.append(counter)
    return out


@pytest.mark.parametrize("interval, max_steps", [(4, 9), (1, 3)])
def test_refresh_schedule_follows_the_official_counter(interval, max_steps, tmp_path):
    """The callback refreshes after updates T - 1, 2T - 1, ... (the official timing the docs promise), not after T,
    2T, ...: interval 4 over 12 updates gives 3, 7, 11."""
    callback = LiftRefreshCallback()
    _trainer(_lift_model(update_interval=interval), tmp_path, max_steps=max_steps, callbacks=[callback]).train()
    assert [r["step"] for r in callback.refreshes] == _official_refresh_updates(interval, max_steps)
    assert _official_refresh_updates(4, 12) == [3, 7, 11]


def test_trainer_with_refresh_changes_only_the_adapter_values(tmp_path):
    """3 updates with interval 2: masks selected at train begin, refreshed once after update 1 (official timing;
    not after the last update); every base parameter is bit-identical afterwards; the saved adapter reproduces the
    model."""
    model = _lift_model()
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lift_" not in n}
    callback = LiftRefreshCallback()
    trainer = _trainer(model, tmp_path / "run", max_steps=3, callbacks=[callback])
    trainer.train()
    assert [r["step"] for r in callback.refreshes] == [1]
    assert callback.refreshes[0]["matrices"] == 14
    for n, p in model.named_parameters():
        if "lift_" not in n:
            assert torch.equal(p, base_before[n]), n
    assert _values(model).abs().sum() > 0
    model.eval()
    expected = model(input_ids=IDS).logits
    trainer.save_model(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    assert torch.equal(loaded(input_ids=IDS).logits, expected)


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    """Save after update 3 (just after a refresh, so residual buffers and remapped Adam moments are in the
    checkpoint), resume, train to 5: the adapter equals the uninterrupted run's."""
    full = _lift_model()
    _trainer(full, tmp_path / "a", max_steps=5, save_steps=3).train()
    resumed = _lift_model()
    _trainer(resumed, tmp_path / "b", max_steps=5).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    torch.testing.assert_close(_values(resumed), _values(full), atol=1e-6, rtol=1e-6)
    full.eval()
    resumed.eval()
    torch.testing.assert_close(resumed(input_ids=IDS).logits, full(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)


def test_cli_method_lift(tmp_path):
    from hf_plugins import registry
    from hf_plugins.cli.main import main

    entry = registry.METHODS["lift"]
    assert entry.defaults["learning_rate"] == 2e-4
    assert isinstance(entry.callbacks({})[0], LiftRefreshCallback)
    out = tmp_path / "run"
    rc = main(
        ["train", "--model", "tiny", "--method", "lift", "--method_args", "r=2", "--method_args", "update_interval=1"]
        + ["--max_steps", "2", "--eval_size", "4", "--train_size", "16", "--max_new_tokens", "4", "--no_eval_before"]
        + ["--output_dir", str(out)]
    )
    assert rc in (0, None)
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["peft_config"]["peft_type"] == "LIFT" and run_config["peft_config"]["r"] == 2
    from safetensors.torch import load_file

    sd = load_file(out / "model" / "adapter_model.safetensors")
    assert all(bool(v) for k, v in sd.items() if k.endswith("lift_ready"))  # the callback selected the masks


def _run(code, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


LOAD = """
import torch, hf_plugins
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM
ids = torch.arange(10).unsqueeze(0)
expected = torch.load("expected.pt")
cfg = PeftConfig.from_pretrained("adapter")
assert type(cfg).__name__ == "LiftConfig" and cfg.r == 2, type(cfg)
m1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"), "adapter")
assert m1.get_model_status().peft_types == {"default": "LIFT"}
assert torch.equal(m1(ids).logits, expected)
m2 = AutoModelForCausalLM.from_pretrained("base")
m2.load_adapter("adapter")
assert torch.equal(m2(ids).logits, expected)
m3 = AutoModelForCausalLM.from_pretrained("adapter")
assert torch.equal(m3(ids).logits, expected)
print("loaded")
"""


def test_fresh_process_loading_entry_points(tmp_path):
    """After `import hf_plugins`: PeftConfig / PeftModel.from_pretrained, transformers' load_adapter and
    AutoModelForCausalLM.from_pretrained(adapter_dir) all load a LIFT adapter exactly; without the import,
    loading fails (the README says so)."""
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LiftConfig(r=2, update_interval=1, init_weights=False, task_type="CAUSAL_LM"))
    model.initialize_masks()
    model.refresh_masks()  # non-empty residual buffers, whose lengths transformers checks before loading
    model.save_pretrained(tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LIFT" and meta["residual_sizes"]
    meta["base_model_name_or_path"] = "base"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(meta))
    torch.save(model(torch.arange(10).unsqueeze(0)).logits, tmp_path / "expected.pt")
    loaded = _run(LOAD, tmp_path)
    assert loaded.returncode == 0 and "loaded" in loaded.stdout, loaded.stderr[-3000:]
    broken = _run("from peft import PeftConfig\nPeftConfig.from_pretrained('adapter')\n", tmp_path)
    assert broken.returncode != 0 and "LIFT" in broken.stderr


@pytest.mark.slow
def test_sft_trainer_with_peft_config(tmp_path):
    """TRL's SFTTrainer(peft_config=LiftConfig(...)) builds the LIFT model and trains it."""
    from trl import SFTConfig, SFTTrainer

    from hf_plugins.testing import tiny_arithmetic_dataset

    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    trainer = SFTTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=tiny_arithmetic_dataset(8),
        processing_class=tiny_tokenizer(),
        peft_config=LiftConfig(r=2, update_interval=1, task_type="CAUSAL_LM"),
        callbacks=[LiftRefreshCallback()],
    )
    trainer.train()
    assert trainer.model.get_model_status().peft_types == {"default": "LIFT"}
    assert _values(trainer.model).abs().sum() > 0
