"""Stable-SPAM under the stock Trainer: resume from a checkpoint continues the run exactly, the learning rate and
betas come from TrainingArguments, the stats reach the logs, and `hf-plugins train --optim stable_spam` runs."""

import json

import pytest
import torch
from _optim_trainer import tiny_args, tiny_trainer

from hf_plugins import StableSPAM, registry


def _args(out, **kw):
    return tiny_args(out, **{"max_grad_norm": 0.0, **kw})


_trainer = tiny_trainer


def _losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_trainer_resume_continues_the_run_exactly(tmp_path, tiny_tok):
    """Run 4 steps with a checkpoint every 2; a second Trainer resumes from checkpoint-2: its losses at steps 3-4
    and its final weights equal the uninterrupted run's (T, t, s and the fp32 statistics were restored)."""
    args = _args(tmp_path / "a")
    cls_kwargs = StableSPAM.from_args(args, reset_interval=3, gamma1=0.85)
    full = _trainer(args, tiny_tok, cls_kwargs)
    full.train()
    resumed = _trainer(_args(tmp_path / "b"), tiny_tok, cls_kwargs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))

    la, lb = _losses(full), _losses(resumed)
    assert 3 in lb and 4 in lb  # (steps 1-2 come from the checkpoint's trainer_state.json)
    assert lb[3] == la[3] and lb[4] == la[4]
    for (name, pa), pb in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(pa, pb), name
    opt = resumed.optimizer.optimizer
    assert opt.param_groups[0]["T"] == 4 and opt.param_groups[0]["lr"] == 3e-3
    assert opt.param_groups[0]["gamma1"] == 0.85
    # the Trainer's groups: decay on matrices and embeddings, none on norms
    assert [g["weight_decay"] for g in opt.param_groups] == [args.weight_decay, 0.0]
    logged = [h for h in full.state.log_history if "loss" in h]
    assert all("stable_spam/clipped_entries" in h and "stable_spam/norm_scale_mean" in h for h in logged)


def test_from_args_reads_training_arguments(tmp_path):
    args = _args(tmp_path, learning_rate=7e-4, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, max_steps=123)
    cls, kw = registry.OPTIMIZERS["stable_spam"].build(args, {"gamma1": 0.85, "theta": 0.99})
    assert cls is StableSPAM
    assert kw == {
        "lr": 7e-4,
        "betas": (0.8, 0.95),
        "eps": 1e-6,
        "weight_decay": 0.0,
        "total_T": 123,
        "gamma1": 0.85,
        "theta": 0.99,
    }
    with pytest.raises(ValueError, match="gamma7"):
        registry.OPTIMIZERS["stable_spam"].build(args, {"gamma7": 1})


@pytest.mark.slow  # the default run covers the same CLI path with --optim alphadecay:stable_spam
def test_cli_train_with_stable_spam(tmp_path):
    from hf_plugins.cli.main import main

    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model",
            "tiny",
            "--method",
            "full",
            "--optim",
            "stable_spam",
            "--optim_args",
            "reset_interval=2",
            "--learning_rate",
            "2e-3",
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--train_size",
            "16",
            "--eval_size",
            "4",
            "--max_new_tokens",
            "4",
            "--no_eval_before",
            "--output_dir",
            str(out),
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    logged = [h for h in metrics["log_history"] if "loss" in h]
    assert logged and all("stable_spam/beta1" in h for h in logged)
    assert metrics["steps"] == 2
