"""`hf-plugins recipe srlm` on the tiny model."""

import json

from hf_plugins.cli.main import main


def test_recipe_cli_runs_stages_and_writes_the_report(tmp_path):
    out = tmp_path / "run"
    rc = main(
        ["recipe", "srlm", "--model", "tiny", "--stages", "sft,kd", "--sft_steps", "1", "--kd_steps", "1",
         "--batch_size", "2", "--num_problems", "4", "--eval_size", "2", "--eval_max_new_tokens", "4",
         "--stage_args", "kd.max_length=64", "--output_dir", str(out)]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["sft", "kd"]
    assert report["stages"][1]["config"]["max_length"] == 64 and report["stages"][0]["config"]["max_length"] == 512
    assert report["eval_before"]["n"] == 2 and "strict_accuracy" in report["stages"][1]["eval"]
    assert set(json.loads((out / "summary.json").read_text())) == {"base", "0:sft", "1:kd"}


def test_recipe_cli_errors_are_one_clear_line(capsys, tmp_path):
    assert main(["recipe", "srlm", "--model", "tiny", "--stages", "sft,dpo", "--output_dir", str(tmp_path)]) == 2
    assert "unknown SRLM stage name(s) ['dpo']" in capsys.readouterr().err
    assert (
        main(["recipe", "srlm", "--model", "tiny", "--stage_args", "rl.beta=0.1", "--output_dir", str(tmp_path)]) == 2
    )
    assert "RlStageConfig has no field(s) ['beta']" in capsys.readouterr().err
    assert main(["recipe", "srlm", "--model", "tiny", "--method", "nope", "--output_dir", str(tmp_path)]) == 2
    assert "unknown --method 'nope'" in capsys.readouterr().err
