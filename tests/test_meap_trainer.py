"""DataCollatorForMEAP inside the stock Trainer, TRL's SFTTrainer and `hf-plugins train` (2-4 steps each)."""

import json

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_plugins import DataCollatorForMEAP, MEAPCallback, add_mask_token
from hf_plugins.testing import tiny_arithmetic_dataset, tiny_llama, tiny_text_dataset, tiny_tokenizer


def _model_and_tokenizer():
    tok, model = tiny_tokenizer(), tiny_llama()
    add_mask_token(tok, model)
    return model.train(), tok


def _pretrain_trainer(tmp_path, name, max_steps, **kw):
    model, tok = _model_and_tokenizer()
    kw = {"save_strategy": "no", **kw}
    args = TrainingArguments(
        output_dir=str(tmp_path / name),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        seed=0,
        **kw,
    )
    collator = DataCollatorForMEAP(tokenizer=tok, mask_ratio=0.3, seed=0)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tiny_text_dataset(tok, n=16),
        eval_dataset=tiny_text_dataset(tok, n=8, seed=1),
        data_collator=collator,
        callbacks=[MEAPCallback()],
    )
    return trainer, collator


def test_trainer_evaluates_unmasked_and_logs_masked_counts(tmp_path):
    """The eval loss logged during training equals the loss of the same weights with the base collator, and
    differs from a masked evaluation; the logged masked-token counts add up to the collator's counter."""
    trainer, collator = _pretrain_trainer(tmp_path, "run", 2, eval_strategy="steps", eval_steps=2)
    trainer.train()
    logged = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(logged) == 1
    assert not collator.enabled  # switched off at on_train_end
    trainer.data_collator = collator.base
    reference = trainer.evaluate()["eval_loss"]
    assert logged[0] == pytest.approx(reference, rel=1e-6)
    collator.enabled = True
    trainer.data_collator = collator
    assert abs(trainer.evaluate()["eval_loss"] - reference) > 1e-4  # the check above would see masking
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(0.25 < h["meap_mask_fraction"] < 0.35 for h in train_logs)
    assert sum(h["meap_masked_tokens"] for h in train_logs) > 0


def test_trainer_resume_continues_the_mask_stream(tmp_path):
    """4 steps straight vs resuming at step 2 from a checkpoint: identical final parameters (CPU, fp32). The
    callback sets the collator's batch counter from `global_step`, so the resumed run draws the same masks."""
    straight, _ = _pretrain_trainer(tmp_path, "a", 4, save_strategy="steps", save_steps=2)
    straight.train()
    resumed, collator = _pretrain_trainer(tmp_path, "b", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert collator.num_batches >= 4
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def _sft_config(tmp_path, **kw):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        max_length=128,
        bf16=False,
        seed=0,
        **kw,
    )


def test_sft_trainer_packing_route_keeps_boundaries_and_prompts(tmp_path):
    """TRL refuses a custom collator with packing (padding-free); the supported route wraps the trainer's own
    collator after construction. On TRL-prepared completion-only data: prompt tokens are never masked, the
    original rows equal TRL's batch, the packed boundaries are TRL's; then two training steps run."""
    pytest.importorskip("trl")
    from trl import SFTTrainer

    model, tok = _model_and_tokenizer()
    ds = tiny_arithmetic_dataset(12, view="prompt_completion")
    args = _sft_config(tmp_path, packing=True)
    with pytest.raises(ValueError, match="custom data collator"):
        SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, data_collator=lambda x: x)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[MEAPCallback()])
    base = trainer.data_collator
    collator = DataCollatorForMEAP(base=base, tokenizer=tok, mode="sft", min_answer_length=10, seed=0)
    trainer.data_collator = collator

    examples = [trainer.train_dataset[i] for i in range(2)]
    assert "seq_lengths" in examples[0]
    ref, batch = base(examples), collator(examples)
    n = ref["input_ids"].shape[1]
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(batch[key][:, :n], ref[key]), key
    assert torch.equal(batch["cu_seq_lens_q"][: ref["cu_seq_lens_q"].numel()], ref["cu_seq_lens_q"])
    extra_ids, extra_labels = batch["input_ids"][0, n:], batch["labels"][0, n:]
    masked = extra_ids == tok.mask_token_id
    assert collator.last_num_masked == int(masked.sum()) > 0
    assert torch.all(extra_labels[~masked] == -100) and torch.all(extra_labels[masked] != -100)
    # every masked position is an answer token: its label in the original packed row is not -100
    flat_labels = torch.tensor([x for ex in examples for x in ex["labels"]])
    flat_ids = torch.tensor([x for ex in examples for x in ex["input_ids"]])
    prompt_ids = set(flat_ids[flat_labels == -100].tolist()) - set(flat_ids[flat_labels != -100].tolist())
    assert not set(extra_labels[masked].tolist()) & prompt_ids
    assert torch.all(batch["labels"][batch["position_ids"] == 0] == -100)

    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(h["meap_masked_tokens"] > 0 for h in logs)


def test_sft_trainer_completion_only_concat_in_constructor(tmp_path):
    """Without padding-free a MEAP collator can be passed to SFTTrainer directly (concat variant); prompt
    tokens keep label -100 in the original half and the copy supervises only its masked positions."""
    pytest.importorskip("trl")
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok = _model_and_tokenizer()
    collator = DataCollatorForMEAP(
        base=DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id),
        tokenizer=tok,
        mode="sft",
        sft_mode="concat",
        min_answer_length=10,
    )
    ds = tiny_arithmetic_dataset(8, view="prompt_completion")
    trainer = SFTTrainer(
        model=model, args=_sft_config(tmp_path), train_dataset=ds, processing_class=tok, data_collator=collator
    )
    ex = {key: trainer.train_dataset[0][key] for key in ("input_ids", "labels")}  # the columns the Trainer keeps
    batch = collator([ex])
    n = len(ex["input_ids"])
    assert batch["input_ids"].shape[1] == 2 * n
    assert batch["labels"][0, :n].tolist() == ex["labels"]
    copy_ids, copy_labels = batch["input_ids"][0, n:], batch["labels"][0, n:]
    masked = copy_ids == tok.mask_token_id
    prompt = torch.tensor(ex["labels"]) == -100
    assert masked.any() and not (masked & prompt).any()
    assert torch.equal(copy_labels[masked], torch.tensor(ex["input_ids"])[masked])
    trainer.train()
    assert trainer.state.global_step == 2


def test_cli_train_collator_meap_adds_the_mask_token(tmp_path):
    """`hf-plugins train --model tiny --collator meap`: the tiny tokenizer has no mask token, so the builder adds
    '[MASK]' and resizes the embeddings; the run logs masked-token counts and saves the tokenizer with it."""
    pytest.importorskip("trl")
    from hf_plugins.cli.main import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "tiny",
            "--collator",
            "meap",
            "--collator_args",
            "min_answer_length=10",
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--eval_size",
            "4",
            "--train_size",
            "16",
            "--max_new_tokens",
            "8",
            "--no_eval_before",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    assert any(h.get("meap_masked_tokens", 0) > 0 for h in history)
    saved = json.loads((out / "model" / "tokenizer_config.json").read_text())
    assert saved.get("mask_token") == "[MASK]"


def test_cli_builder_rejects_unknown_options():
    from hf_plugins.collators.meap.cli import build_meap_collator

    with pytest.raises(ValueError, match="unknown options"):
        build_meap_collator(tiny_tokenizer(), None, {"mask_rate": 0.2})


def test_cli_builder_picks_the_mode_from_the_base_collator():
    """TRL's collator (SFTTrainer) -> SFT mode; transformers' DataCollatorForLanguageModeling (pre-training
    path of `hf-plugins train --model-config`) -> pre-training mode; both add the mask token once."""
    from transformers import DataCollatorForLanguageModeling

    from hf_plugins.collators.meap.cli import build_meap_collator

    trl_sft = pytest.importorskip("trl.trainer.sft_trainer")
    tok, model = tiny_tokenizer(), tiny_llama()
    sft = build_meap_collator(tok, model, {"base": trl_sft.DataCollatorForLanguageModeling(pad_token_id=0)})
    assert sft.mode == "sft" and sft.mask_ratio == 0.1 and tok.mask_token_id == 115
    pre = build_meap_collator(
        tok, model, {"base": DataCollatorForLanguageModeling(tok, mlm=False), "mask_ratio_batches": 10}
    )
    assert pre.mode == "pretrain" and pre.mask_ratio(10) == pytest.approx(0.15) and pre.mask_ratio(0) == 0.0
    assert model.get_input_embeddings().weight.shape[0] == 116
