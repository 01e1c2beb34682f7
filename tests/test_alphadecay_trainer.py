"""AlphaDecay under the stock Trainer (as an optimizer factory): exact resume, learning rate and decay taken from
TrainingArguments, alphas in the logs, and `hf-plugins train --optim alphadecay:stable_spam`."""

import json

import pytest
import torch
from _optim_trainer import tiny_args, tiny_trainer

from hf_plugins import AlphaDecay, StableSPAM, registry


def _args(out, **kw):
    return tiny_args(out, **{"weight_decay": 0.1, **kw})


_trainer = tiny_trainer


def test_trainer_resume_with_refresh_in_between(tmp_path, tiny_tok):
    """Interval 3, checkpoint at 2: the resumed run refreshes at update 3 exactly like the uninterrupted one."""
    args = _args(tmp_path / "a")
    cls_kwargs = AlphaDecay.from_args(args, min_eigs=8, interval=3)
    full = _trainer(args, tiny_tok, cls_kwargs)
    full.train()
    resumed = _trainer(_args(tmp_path / "b"), tiny_tok, cls_kwargs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for (name, pa), pb in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(pa, pb), name
    opt_a, opt_b = full.optimizer.optimizer, resumed.optimizer.optimizer
    assert opt_b.alphadecay_table() == opt_a.alphadecay_table()
    assert all(g["lr"] == 3e-3 for g in opt_b.param_groups)
    logged = [h for h in full.state.log_history if "loss" in h]
    assert all("alphadecay/alpha_median" in h and "alphadecay/wd_max" in h for h in logged)
    assert logged[-1]["alphadecay/wd_max"] == pytest.approx(0.5)  # 5 x the base decay 0.1


def test_registry_entries_read_training_arguments(tmp_path):
    args = _args(tmp_path, learning_rate=7e-4, weight_decay=0.05, adam_beta2=0.95, max_steps=50)
    cls, kw = registry.OPTIMIZERS["alphadecay"].build(args, {"interval": 100})
    assert cls is AlphaDecay
    assert kw["lr"] == 7e-4 and kw["weight_decay"] == 0.05 and kw["betas"] == (0.9, 0.95) and kw["interval"] == 100
    assert kw["base"] is torch.optim.AdamW
    cls, kw = registry.OPTIMIZERS["alphadecay:stable_spam"].build(args, {"gamma1": 0.85, "min_eigs": 8})
    assert kw["base"] is StableSPAM and kw["total_T"] == 50 and kw["gamma1"] == 0.85 and kw["lr"] == 7e-4
    with pytest.raises(ValueError, match="interval_steps"):
        registry.OPTIMIZERS["alphadecay"].build(args, {"interval_steps": 3})
    with pytest.raises(ValueError, match="fixes the base"):
        registry.OPTIMIZERS["alphadecay:stable_spam"].build(args, {"base": "adam"})


def test_cli_train_with_alphadecay_on_stable_spam(tmp_path):
    from hf_plugins.cli.main import main

    out = tmp_path / "run"
    argv = ["train", "--model", "tiny", "--method", "full", "--optim", "alphadecay:stable_spam"]
    argv += ["--optim_args", "min_eigs=8,interval=1", "--weight_decay", "0.1"]
    argv += ["--max_steps", "2", "--logging_steps", "1", "--train_size", "16", "--eval_size", "4"]
    argv += ["--max_new_tokens", "4", "--no_eval_before", "--output_dir", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    logged = [h for h in metrics["log_history"] if "loss" in h]
    assert logged and all("alphadecay/alpha_min" in h and "stable_spam/beta1" in h for h in logged)
