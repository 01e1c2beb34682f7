"""The `hf-plugins` CLI: stock-field parsing, YAML configs, the old-flag table, the train/eval job on a tiny model,
model cards, clear one-line errors."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from trl import SFTConfig

from hf_plugins.cli.arguments import make_parser
from hf_plugins.cli.main import commands, main, parse
from hf_plugins.cli.train_job import CLI_DEFAULTS, make_train_parser, parse_train_args


ROOT = Path(__file__).resolve().parents[1]
# Fields whose value depends on the moment or the output directory, not on the defaults.
_VOLATILE = {"output_dir", "run_name", "logging_dir"}


def _leaves():
    for name, command in commands().items():
        for leaf in command.actions or (command,):
            yield f"hf-plugins {name}" + (f" {leaf.name}" if command.actions else ""), leaf


def _training_dict(args) -> dict:
    return {k: v for k, v in args.training.to_dict().items() if k not in _VOLATILE}


def test_help_describes_every_flag():
    assert {"train", "eval", "esd", "prune", "sos", "recipe", "depth-report", "corpus"} <= set(commands())
    for prog, leaf in _leaves():
        parser = make_train_parser() if leaf.name == "train" else make_parser(leaf, prog)
        for action in parser._actions:
            if action.dest != "help":
                assert action.help, f"`{prog}` flag {action.option_strings} has no help text"


def test_train_help_shows_every_stock_field(capsys):
    """`hf-plugins train --help` lists every SFTConfig field under its own name, beside the plugin slots."""
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(SFTConfig):
        if f.init:
            assert f"--{f.name} " in out or f"--{f.name}," in out, f.name
    for flag in ("--method", "--collator", "--model_config", "--compare", "--dataset_config", "--dataset_split"):
        assert flag in out
    assert "stable_spam" in out  # --optim also lists the plugin optimizers


def test_no_flag_defaults_are_stock_except_the_documented_ones():
    """The defaults of `hf-plugins train` are SFTConfig's own, except CLI_DEFAULTS and LIFT's registered defaults
    (rebuilt here by hand from those two tables), and they select the main job."""
    from hf_plugins import registry

    args = parse_train_args([])
    assert (args.model.model, args.data.dataset, args.plugins.method, args.plugins.optim) == (
        "smollm2", "arithmetic", "lift", "adamw",
    )  # fmt: skip
    expected = SFTConfig(output_dir="x", **{**CLI_DEFAULTS, **registry.METHODS["lift"].defaults})
    got, want = _training_dict(args), {k: v for k, v in expected.to_dict().items() if k not in _VOLATILE}
    assert got == want
    assert args.training.learning_rate == registry.METHODS["lift"].defaults["learning_rate"]
    assert args.training.save_strategy == "no" and args.training.bf16 is False


def test_example_yaml_reproduces_the_main_job():
    """`hf-plugins train --config examples/main_job.yaml` parses to exactly the no-flag main job."""
    out = ["--output_dir", "runs/x"]
    from_file = parse_train_args(["--config", str(ROOT / "examples" / "main_job.yaml"), *out])
    default = parse_train_args(out)
    for part in ("model", "data", "eval", "plugins"):
        assert getattr(from_file, part) == getattr(default, part), part
    assert from_file.training.to_dict() == default.training.to_dict()


def test_flags_override_the_config_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: tiny\nmax_steps: 7\nlearning_rate: 3.0e-3\noptim: stable_spam\noptim_args: gamma1=0.5\n")
    args = parse_train_args(["--config", str(cfg), "--max_steps", "2"])
    assert args.model.model == "tiny" and args.training.max_steps == 2 and args.training.learning_rate == 3e-3
    assert args.plugins.optim == "stable_spam" and args.training.optim_args == "gamma1=0.5"
    assert str(args.training.optim.value) == "adamw_torch_fused"  # the stock field keeps the stock optimizer
    cfg.write_text("not_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        parse_train_args(["--config", str(cfg)])


def test_plugin_defaults_yield_to_explicit_values():
    """A method's default learning rate applies only where neither the flags nor the file set one."""
    assert parse_train_args(["--method", "lora"]).training.learning_rate == 1e-3
    assert parse_train_args(["--method", "lora", "--learning_rate", "0.01"]).training.learning_rate == 0.01
    assert parse_train_args(["--method", "full"]).training.learning_rate == 5e-5
    assert parse_train_args(["--model_config", "coe"]).plugins.method == "full"


# Every flag of the earlier `hf-plugins train`: (argv, where the value lands, value).
OLD_TRAIN_FLAGS = [
    (["--model", "tiny"], "model.model", "tiny"),
    (["--model-config", "coe"], "plugins.model_config", "coe"),
    (["--model-config", "coe", "--model-arg", "a=1", "--model-arg", "b=2"], "plugins.model_config_args", ["a=1", "b=2"]),
    (["--tokenizer", "tiny"], "model.tokenizer", "tiny"),
    (["--dtype", "bfloat16"], "model.dtype", "bfloat16"),
    (["--dataset", "data.jsonl"], "data.dataset", "data.jsonl"),
    (["--train-size", "16"], "data.train_size", 16),
    (["--arith-seed", "3"], "data.arith_seed", 3),
    (["--arith-max-ops", "1"], "data.arith_max_ops", 1),
    (["--arith-max-value", "9"], "data.arith_max_value", 9),
    (["--max-length", "48"], "training.max_length", 48),
    (["--method", "lora"], "plugins.method", "lora"),
    (["--method-arg", "r=2", "--method-arg", "update_interval=1"], "plugins.method_args", ["r=2", "update_interval=1"]),
    (["--optim", "alphadecay:stable_spam"], "plugins.optim", "alphadecay:stable_spam"),
    (["--optim", "stable_spam", "--optim-arg", "gamma1=0.5", "--optim-arg", "theta=0.9"], "training.optim_args",
     "gamma1=0.5,theta=0.9"),
    (["--collator", "meap"], "plugins.collator", "meap"),
    (["--collator", "meap", "--collator-arg", "mask_ratio=0.2"], "plugins.collator_args", ["mask_ratio=0.2"]),
    (["--output-dir", "out"], "training.output_dir", "out"),
    (["--max-steps", "3"], "training.max_steps", 3),
    (["--num-train-epochs", "2"], "training.num_train_epochs", 2.0),
    (["--learning-rate", "0.01"], "training.learning_rate", 0.01),
    (["--per-device-train-batch-size", "2"], "training.per_device_train_batch_size", 2),
    (["--gradient-accumulation-steps", "2"], "training.gradient_accumulation_steps", 2),
    (["--weight-decay", "0.1"], "training.weight_decay", 0.1),
    (["--warmup-steps", "2"], "training.warmup_steps", 2),
    (["--lr-scheduler-type", "cosine"], "training.lr_scheduler_type", "cosine"),
    (["--max-grad-norm", "0"], "training.max_grad_norm", 0.0),
    (["--logging-steps", "1"], "training.logging_steps", 1),
    (["--save-steps", "10"], "training.save_strategy", "steps"),  # alone, it still turns checkpoints on
    (["--resume-from-checkpoint", "ckpt"], "training.resume_from_checkpoint", "ckpt"),
    (["--seed", "5"], "training.seed", 5),
    (["--gradient-checkpointing"], "training.gradient_checkpointing", True),
    (["--eval-size", "4"], "eval.eval_size", 4),
    (["--eval-batch-size", "2"], "eval.eval_batch_size", 2),
    (["--max-new-tokens", "4"], "eval.max_new_tokens", 4),
    (["--no-eval-before"], "eval.eval_before", False),
]  # fmt: skip


@pytest.mark.parametrize("argv, where, value", OLD_TRAIN_FLAGS, ids=[c[0][-2] if len(c[0]) > 1 else c[0][0]
                                                                      for c in OLD_TRAIN_FLAGS])  # fmt: skip
def test_old_train_flags_keep_working(argv, where, value):
    args = parse_train_args(argv)
    part, name = where.split(".")
    got = getattr(getattr(args, part), name)
    assert getattr(got, "value", got) == value


def test_old_bf16_flag_keeps_working():
    assert make_train_parser().parse_known_args(["--bf16"])[0].bf16 is True  # (a CPU refuses to build it)


def test_removed_flag_fails_with_one_line_naming_its_replacement(capsys):
    assert main(["train", "--model", "tiny", "--ta", "adam_beta2=0.95"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--adam_beta2 0.95" in err and "Traceback" not in err


# The earlier flags of the other subcommands: (argv, dataclass index, field, value).
OLD_OTHER_FLAGS = [
    (["esd", "tiny", "--min-eigs", "8", "--output-dir", "o", "--no-plot", "--xmin-pos", "3"], 1, "min_eigs", 8),
    (["esd", "tiny", "--min-eigs", "8"], 0, "model", "tiny"),
    (["prune", "--model", "tiny", "--n-m", "2:4", "--per-row", "--calib-text", "f", "--output-dir", "o"], 1, "n_m",
     "2:4"),
    (["prune", "--sparsity", "0.3", "--nsamples", "4", "--seqlen", "32", "--output-dir", "o"], 1, "seqlen", 32),
    (["depth-report", "tiny", "--num-samples", "4", "--compare-lns", "--max-length", "16"], 1, "compare_lns", True),
    (["eval", "--run", "r", "--eval-size", "4", "--arith-seed", "1", "--eval-batch-size", "2"], 3, "run", "r"),
    (["eval", "--model", "tiny", "--adapter", "a", "--max-new-tokens", "4"], 3, "adapter", "a"),
    (["recipe", "srlm", "--method-arg", "r=2", "--method-arg", "lora_alpha=4"], 1, "method_args",
     ["r=2", "lora_alpha=4"]),
    (["recipe", "srlm", "--stage-arg", "kd.max_length=64", "--sft-steps", "1", "--kd-kind", "logit"], 1, "stage_args",
     ["kd.max_length=64"]),
    (["recipe", "srlm", "--eval-max-new-tokens", "4", "--num-problems", "4", "--teacher", "tiny"], 1, "teacher",
     "tiny"),
    (["sos", "check", "x1^2 + 1", "--no-sdp", "--max-basis", "10"], 0, "polynomial", "x1^2 + 1"),
    (["sos", "generate", "--per-class", "2", "--num-vars", "2", "--out", "f.jsonl"], 0, "per_class", 2),
    (["sos", "eval", "--model", "tiny", "--max-new-tokens", "4", "--batch-size", "2"], 1, "batch_size", 2),
    (["corpus", "build", "--validation-fraction", "0.1", "--test-fraction", "0.1", "--out", "c"], 0,
     "validation_fraction", 0.1),
    (["corpus", "show", "--out", "c"], 0, "out", "c"),
]  # fmt: skip


@pytest.mark.parametrize(
    "argv, index, name, value", OLD_OTHER_FLAGS, ids=[" ".join(c[0][:2]) for c in OLD_OTHER_FLAGS]
)
def test_old_flags_of_other_commands_keep_working(argv, index, name, value):
    command, parsed = parse(argv)
    assert getattr(parsed[index], name) == value


def test_other_commands_read_yaml_configs(tmp_path):
    cfg = tmp_path / "esd.yaml"
    cfg.write_text("model: tiny\nmin_eigs: 9\n")
    _, (model_args, esd_args) = parse(["esd", "--config", str(cfg), "--min_eigs", "12"])
    assert model_args.model == "tiny" and esd_args.min_eigs == 12


def test_train_then_eval_on_tiny_model(tmp_path, capsys):
    """The main job end to end on a tiny model with LIFT: the run directory holds the config, metrics and the
    adapter with its model card, the adapter differs from the base (training happened), and `eval --run` scores the
    same model."""
    from huggingface_hub import ModelCard

    run = tmp_path / "run"
    rc = main(
        ["train", "--model", "tiny", "--max_steps", "3", "--train_size", "16", "--eval_size", "4",
         "--per_device_train_batch_size", "4", "--max_new_tokens", "8", "--output_dir", str(run)]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["eval_before"]["n"] == 4 and metrics["eval_after"]["n"] == 4
    config = json.loads((run / "run_config.json").read_text())
    assert config["method"] == "lift" and config["peft_config"]["peft_type"] == "LIFT"
    assert config["training_args"]["learning_rate"] == 2e-4
    from safetensors.torch import load_file

    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert any(v.is_floating_point() and v.abs().sum() > 0 for v in adapter.values())
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "peft" and "lift" in card.data.tags
    assert "arXiv 2506.00772" in card.text and "| exact match after training (4 held-out problems) |" in card.text
    assert "| adapter | peft_type=LIFT, r=128, update_interval=400, target_modules=" in card.text
    assert f"{metrics['eval_after']['accuracy']:.3f}" in card.text and "| learning rate | 0.0002 |" in card.text
    out = capsys.readouterr().out
    assert "accuracy before:" in out and "accuracy after:" in out
    assert main(["eval", "--run", str(run), "--eval_size", "4", "--max_new_tokens", "8"]) == 0
    assert f"accuracy: {metrics['eval_after']['accuracy']:.3f}" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_adds_baselines_side_by_side(tmp_path, capsys):
    run = tmp_path / "cmp"
    argv = ["train", "--model", "tiny", "--max_steps", "2", "--train_size", "8", "--eval_size", "2",
            "--max_new_tokens", "4", "--compare", "lora,full", "--output_dir", str(run)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((run / "comparison.json").read_text())
    assert [r["method"] for r in rows] == ["lift", "lora", "full"]
    assert len({r["eval_before"] for r in rows}) == 1  # one start, scored once
    assert (run / "compare" / "lora" / "model" / "adapter_config.json").exists()
    assert (run / "compare" / "full" / "model" / "model.safetensors").exists()
    table = capsys.readouterr().out.split("acc after")[-1]
    assert all(m in table for m in ("lift", "lora", "full"))


def test_full_fine_tuning_changes_weights_and_cards_the_model(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    from hf_plugins.testing import tiny_model

    run = tmp_path / "full"
    rc = main(
        ["train", "--model", "tiny", "--method", "full", "--max_steps", "2", "--train_size", "8",
         "--eval_size", "0", "--learning_rate", "1e-2", "--per_device_train_batch_size", "4", "--output_dir", str(run)]
    )  # fmt: skip
    assert rc == 0
    trained = AutoModelForCausalLM.from_pretrained(run / "model")
    diffs = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), tiny_model().parameters())]
    assert max(diffs) > 1e-4
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "transformers" and "| optimizer steps | 2 |" in card.text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "tiny", "--method", "nope"], "unknown --method 'nope'"),
        (["train", "--model", "tiny", "--optim", "nope"], "invalid choice: 'nope'"),
        (["train", "--model", "/does/not/exist"], "does not exist locally and is not a Hub id"),
        (["train", "--model", "tiny", "--not_a_field", "1", "--eval_size", "0"], "not_a_field"),
        (["train", "--model", "tiny", "--max_steps", "x"], "invalid int value: 'x'"),
        (["train", "--model", "tiny", "--method_args", "r", "--max_steps", "1", "--eval_size", "0"], "KEY=VALUE"),
        (["train", "--model", "tiny", "--method", "full", "--method_args", "r=2", "--eval_size", "0"], "takes no"),
        (["train", "--model", "tiny", "--compare", "lora,nope"], "unknown --compare 'nope'"),
        (["nope"], "unknown command 'nope'"),
        (["sos", "nope"], "unknown action 'nope'"),
    ],
)
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path):
    rc = main([*argv, "--output_dir", str(tmp_path / "r")] if argv[0] == "train" else argv)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and "\n" not in err


def test_eval_matches_a_direct_computation():
    """`evaluate_exact_match` scores exactly the completions that contain the right final number."""
    from hf_plugins.evaluation import evaluate_exact_match
    from hf_plugins.rewards.answers import extract_final_number
    from hf_plugins.testing import tiny_model, tiny_tokenizer

    tok, model = tiny_tokenizer(), tiny_model()
    questions = ["Ava has 3 apples . How many apples does Ava have now ?"] * 3
    result = evaluate_exact_match(model, tok, questions, [1, 2, 3], max_new_tokens=6)
    expected = sum(extract_final_number(s["completion"]) == a for s, a in zip(result["samples"], [1, 2, 3]))
    assert result["correct"] == expected and result["n"] == 3
    # greedy decoding is deterministic: the same question gives the same completion
    assert len({s["completion"] for s in result["samples"]}) == 1
    assert torch.is_grad_enabled()


@pytest.mark.slow
def test_smollm2_loads_and_answers_in_chat_format():
    """The embedded real model: a real tokenizer with a chat template and sensible greedy output."""
    from hf_plugins.evaluation import generate_completions
    from hf_plugins.models.smollm2 import load_smollm2

    model, tok = load_smollm2()
    assert model.config.model_type == "llama" and len(tok) == 49152
    assert tok.chat_template and tok.pad_token is not None
    out = generate_completions(model, tok, ["What is 2 + 3? Answer with a number."], max_new_tokens=20)
    assert "5" in out[0]


def test_missing_smollm2_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_PLUGINS_SMOLLM2_DIR", str(tmp_path))
    from hf_plugins.models.smollm2 import smollm2_path

    with pytest.raises(FileNotFoundError, match="smol"):
        smollm2_path()


def test_model_card_round_trips_through_huggingface_hub(tmp_path):
    """The card is what `huggingface_hub.ModelCard` reads back: metadata, the tables, a loading snippet that loads
    a Hub base from the Hub and an embedded base through hf_plugins."""
    from huggingface_hub import ModelCard

    from hf_plugins.model_card import write_model_card

    kw = {"papers": {"lift": "arXiv 2506.00772", "adamw": ""}, "settings": {"steps": 3}, "results": {"acc": "0.5"}}
    write_model_card(
        tmp_path / "a", method="lift", base_model="Qwen/Qwen2.5-0.5B", base_model_id="Qwen/Qwen2.5-0.5B", **kw
    )
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B" and card.data.library_name == "peft"
    assert card.data.tags == ["hf_plugins", "lift"] and "| lift | arXiv 2506.00772 |" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")' in card.text and "| acc | 0.5 |" in card.text
    write_model_card(
        tmp_path / "b", method="lift", base_model="smollm2", base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct", **kw
    )
    text = ModelCard.load(tmp_path / "b" / "README.md").text
    assert 'hf_plugins.load_model("smollm2")' in text and "derived from `HuggingFaceTB/SmolLM2-135M-Instruct`" in text
