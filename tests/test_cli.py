"""The `hf-plugins` CLI: help texts, the train/eval main job on a tiny model, clear errors."""

import json
import subprocess
import sys

import pytest
import torch

from hf_plugins.cli.main import build_parser, main


def test_help_describes_every_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"train", "eval"} <= set(sub.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"`hf-plugins {name}` flag {action.option_strings} has no help text"


def test_console_script_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "hf_plugins.cli.main", "train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--method" in out.stdout and "--optim" in out.stdout


def test_train_then_eval_on_tiny_model(tmp_path, capsys):
    """The main job end to end on a tiny model: the run directory holds the config, metrics and the adapter,
    the adapter differs from the base (training happened), and `eval --run` scores the same model."""
    run = tmp_path / "run"
    rc = main(
        ["train", "--model", "tiny", "--max-steps", "3", "--train-size", "16", "--eval-size", "4",
         "--per-device-train-batch-size", "4", "--max-new-tokens", "8", "--output-dir", str(run)]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["eval_before"]["n"] == 4 and metrics["eval_after"]["n"] == 4
    assert (run / "model" / "adapter_config.json").exists()
    from safetensors.torch import load_file

    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    config = json.loads((run / "run_config.json").read_text())
    assert config["method"] == "lora" and config["peft_config"]["r"] == 16
    out = capsys.readouterr().out
    assert "accuracy before:" in out and "accuracy after:" in out
    assert main(["eval", "--run", str(run), "--eval-size", "4", "--max-new-tokens", "8"]) == 0
    assert "accuracy:" in capsys.readouterr().out


def test_full_fine_tuning_changes_weights(tmp_path):
    run = tmp_path / "full"
    from hf_plugins.testing import tiny_model

    rc = main(
        ["train", "--model", "tiny", "--method", "full", "--max-steps", "2", "--train-size", "8",
         "--eval-size", "0", "--learning-rate", "1e-2", "--per-device-train-batch-size", "4", "--output-dir", str(run)]
    )  # fmt: skip
    assert rc == 0
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(run / "model")
    base = tiny_model()
    diffs = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), base.parameters())]
    assert max(diffs) > 1e-4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "tiny", "--method", "nope"], "unknown --method 'nope'"),
        (["train", "--model", "tiny", "--optim", "nope"], "unknown --optim 'nope'"),
        (["train", "--model", "/does/not/exist"], "neither 'smollm2', 'tiny' nor a local directory"),
        (["train", "--model", "tiny", "--ta", "not_a_field=1", "--eval-size", "0"], "not_a_field"),
        (["train", "--model", "tiny", "--method-arg", "r"], "KEY=VALUE"),
        (["train", "--model", "tiny", "--method", "full", "--method-arg", "r=2", "--eval-size", "0"], "takes no"),
    ],
)
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path):
    rc = main([*argv, "--output-dir", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_matches_a_direct_computation(tmp_path):
    """`evaluate_exact_match` scores exactly the completions that contain the right final number."""
    from hf_plugins.evaluation import evaluate_exact_match
    from hf_plugins.testing import tiny_model, tiny_tokenizer

    tok, model = tiny_tokenizer(), tiny_model()
    questions = ["Ava has 3 apples . How many apples does Ava have now ?"] * 3
    result = evaluate_exact_match(model, tok, questions, [1, 2, 3], max_new_tokens=6)
    from hf_plugins.rewards.answers import extract_final_number

    expected = sum(extract_final_number(s["completion"]) == a for s, a in zip(result["samples"], [1, 2, 3]))
    assert result["correct"] == expected and result["n"] == 3
    # greedy decoding is deterministic: the same question gives the same completion
    assert len({s["completion"] for s in result["samples"]}) == 1
    assert torch.is_grad_enabled()


@pytest.mark.slow
def test_smollm2_loads_and_answers_in_chat_format():
    """The embedded real model: a real tokenizer with a chat template and sensible greedy output."""
    from hf_plugins.models.smollm2 import load_smollm2

    model, tok = load_smollm2()
    assert model.config.model_type == "llama" and len(tok) == 49152
    assert tok.chat_template and tok.pad_token is not None
    from hf_plugins.evaluation import generate_completions

    out = generate_completions(model, tok, ["What is 2 + 3? Answer with a number."], max_new_tokens=20)
    assert "5" in out[0]


def test_missing_smollm2_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_PLUGINS_SMOLLM2_DIR", str(tmp_path))
    from hf_plugins.models.smollm2 import smollm2_path

    with pytest.raises(FileNotFoundError, match="smol"):
        smollm2_path()
