"""LM evaluation on SoS items and the `hf-plugins sos` command line."""

import json

import pytest
import torch

from hf_plugins.cli.main import main
from hf_plugins.sos import evaluate_sos_model, score_answers, surface_rule
from hf_plugins.testing import tiny_model, tiny_tokenizer


def test_scores_by_hand():
    records = [
        {"answer": 1, "label": 1, "proved_label": 1, "class": "a", "tokens": 4, "seconds": 1.0},
        {"answer": 0, "label": 1, "proved_label": 0, "class": "a", "tokens": 6, "seconds": 3.0},  # mislabelled row
        {"answer": None, "label": 0, "proved_label": 0, "class": "b", "tokens": 8, "seconds": 2.0},
        {"answer": 0, "label": 0, "proved_label": None, "class": "b", "tokens": 2, "seconds": 2.0},
    ]
    m = score_answers(records)
    assert m["released"] == {
        "n": 4,
        "valid": 3,
        "correct": 2,
        "acc_valid": 2 / 3,
        "acc_total": 0.5,
        "invalid_rate": 0.25,
    }
    assert m["proved"]["n"] == 3 and m["proved"]["correct"] == 2 and m["proved"]["acc_total"] == 2 / 3
    assert m["per_class"]["a"]["released"]["correct"] == 1
    assert m["confusion"]["released"] == {
        "true 1": {"0": 1, "1": 1, "invalid": 0},
        "true 0": {"0": 1, "1": 0, "invalid": 1},
    }
    assert m["confusion"]["proved"] == {
        "true 1": {"0": 0, "1": 1, "invalid": 0},
        "true 0": {"0": 1, "1": 0, "invalid": 1},
    }
    assert m["tokens_median"] == 5 and m["seconds_mean"] == 2.0


def test_surface_rule_baseline():
    assert surface_rule("x1^3 + 1") == 0 and surface_rule("x1^2 - 1") == 0 and surface_rule("x1^2 + 1") == 1
    assert surface_rule("x1 + 2 - 7.0*x") == 1  # rejected text is guessed 1


def test_evaluate_tiny_model_matches_direct_generation():
    """Answers equal those of model.generate called directly (greedy), one prompt at a time without padding."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=0)
    items = [
        {"polynomial": "x1^2 + 1", "label": 1, "class": "q"},
        {"polynomial": "x1^3 - 2", "label": 0, "class": "odd"},
        {"polynomial": "2 + 3", "label": 1, "class": "q"},
    ]
    out = evaluate_sos_model(model, tok, items, style="plain", max_new_tokens=6, batch_size=2, max_prompt_tokens=400)
    assert out["metrics"]["released"]["n"] == 3
    from hf_plugins.sos.prompts import build_prompt

    for item, rec in zip(items, out["records"]):
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": build_prompt(item["polynomial"], "plain")}],
            tokenize=False,
            add_generation_prompt=True,
        )
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(
                **enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
            )
        new = ids[0, enc["input_ids"].shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert rec["completion"] == tok.decode(new, skip_special_tokens=True)
        assert rec["tokens"] == len(new)


def test_too_long_prompts_are_reported_not_truncated():
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=0)
    items = [{"polynomial": " + ".join(f"{i}*x1^2" for i in range(1, 200)), "label": 1}]
    out = evaluate_sos_model(model, tok, items, style="plain", max_new_tokens=4, max_prompt_tokens=50)
    assert out["records"][0]["too_long"] and out["records"][0]["answer"] is None
    assert out["metrics"]["too_long"] == 1 and out["metrics"]["released"]["acc_total"] == 0.0


def test_cli_generate_check_and_eval(tmp_path, capsys):
    pytest.importorskip("cvxpy")
    path = tmp_path / "items.jsonl"
    assert (
        main(
            [
                "sos",
                "generate",
                "--classes",
                "quadratic,odd_degree,nonneg_not_sos",
                "--per_class",
                "2",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 6 and {r["class"] for r in rows} == {"quadratic", "odd_degree", "nonneg_not_sos"}
    out_json = tmp_path / "check.json"
    assert main(["sos", "check", "--file", str(path), "--output", str(out_json)]) == 0
    summary = json.loads(out_json.read_text())
    assert summary["totals"] == {"consistent": 6}
    assert main(["sos", "check", "x1^4*x2^2 + x1^2*x2^4 + 1 - 3*x1^2*x2^2"]) == 0
    assert "not_sos" in capsys.readouterr().out
    eval_json = tmp_path / "eval.json"
    args = [
        "sos",
        "eval",
        "--model",
        "tiny",
        "--file",
        str(path),
        "--style",
        "plain",
        "--max_new_tokens",
        "4",
        "--output",
        str(eval_json),
    ]
    assert main(args) == 0
    assert json.loads(eval_json.read_text())["metrics"]["released"]["n"] == 6
    assert main(["sos", "generate", "--classes", "nope", "--out", str(path)]) == 2  # clear error, exit code 2


def test_batches_respect_item_and_token_limits():
    """Every prompt lands in exactly one batch, in length order, within `batch_size` and the padded-token budget
    (a lone over-budget prompt still gets its own batch)."""
    from hf_plugins.sos.evaluation import _batches

    lengths = [5, 40, 12, 7, 30, 100, 9]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = list(_batches(lengths, order, batch_size=3, max_batch_tokens=60, new=4))
    assert [i for b in batches for i in b] == order
    for b in batches:
        width = max(lengths[i] for i in b) + 4
        assert len(b) <= 3 and (len(b) == 1 or len(b) * width <= 60)
    # by hand: 3 x (9 + 4) = 39 <= 60; then 2 x (30 + 4) = 68 > 60, 2 x (40 + 4) = 88 > 60, 2 x (100 + 4) > 60
    assert batches == [[0, 3, 6], [2], [4], [1], [5]]
    assert list(_batches(lengths, order, batch_size=3, max_batch_tokens=None, new=4)) == [[0, 3, 6], [2, 4, 1], [5]]


def test_token_budget_batching_gives_the_same_answers():
    """Greedy answers do not depend on how the prompts are batched (left padding), and the prompt is `chat_prompt`."""
    from hf_plugins.sos import chat_prompt

    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=1)
    items = [{"polynomial": p, "label": 1} for p in ("x1^2 + 1", "x1^4 + 3*x1*x2 + 2*x2^2 + 7", "x1", "x2^2 - 4")]
    kw = {"style": "plain", "max_new_tokens": 5, "max_prompt_tokens": 400}
    wide = evaluate_sos_model(model, tok, items, batch_size=8, **kw)
    narrow = evaluate_sos_model(model, tok, items, batch_size=8, max_batch_tokens=1, **kw)  # one prompt per batch
    assert [r["completion"] for r in wide["records"]] == [r["completion"] for r in narrow["records"]]
    for item, rec in zip(items, wide["records"]):
        assert rec["prompt_tokens"] == len(
            tok(chat_prompt(tok, item["polynomial"], "plain"), add_special_tokens=False)["input_ids"]
        )
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_sos_model(model, tok, items, batch_size=0, **kw)


def test_eval_proved_uses_the_stored_labels_without_the_checker(monkeypatch, tmp_path):
    """`sos eval --proved` on the SoS1 file scores against `sos1_proved_labels` (the recorded whole-file run); it
    used to re-run the checker without the SDP on every row (9 minutes, 199 of 334 rows proved)."""
    from hf_plugins.sos import checker, sos1

    if not sos1.default_sos1_path().is_file():
        pytest.skip("SoS1 evaluation file not present")

    def no_checker(*args, **kwargs):
        raise AssertionError("the checker must not run")

    monkeypatch.setattr(checker, "check_polynomial", no_checker)
    monkeypatch.setattr(sos1, "check_polynomial", no_checker)
    out = tmp_path / "eval.json"
    args = ["sos", "eval", "--model", "tiny", "--proved", "--limit", "12", "--style", "plain", "--max-new-tokens", "2"]
    assert main([*args, "--output", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    rows = sos1.load_sos1()[:12]
    assert [r["proved_label"] for r in records] == sos1.sos1_proved_labels(rows)
    assert records[9]["proved_label"] == 0 and rows[9]["ans"] == 1  # a corrected row: not the released label


def test_eval_records_a_per_row_error_and_goes_on(tmp_path):
    """Rows without text or with a label that is not 0/1, and a broken JSON line, are reported per row; the other
    rows are still answered by the model."""
    path = tmp_path / "items.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"polynomial": "x1^2 + 1", "label": 1, "class": "q"}),
                json.dumps({"label": 1}),
                "[1, 2",
                json.dumps({"polynomial": "x1^3", "label": "0"}),
                json.dumps({"polynomial": "x1^3 + 2", "label": 0, "class": "odd"}),
            ]
        )
    )
    out = tmp_path / "eval.json"
    assert main(["sos", "eval", "--model", "tiny", "--file", str(path), "--style", "plain", "--max-new-tokens",
                 "3", "--output", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    errors = [r["error"] for r in result["records"]]
    assert errors[0] is None and errors[4] is None
    assert "no polynomial text" in errors[1] and "not valid JSON" in errors[2] and "expected 0 or 1" in errors[3]
    assert result["metrics"]["errors"] == 3 and result["metrics"]["released"]["n"] == 2
    assert result["records"][4]["tokens"] is not None  # the row after the bad ones was generated
