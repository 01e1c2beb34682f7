"""LNS diagnostics, `hf-plugins depth-report`, and `--model-config lns_llama` / `llama` in `hf-plugins train`."""

import json
import math

import torch

import hf_plugins  # noqa: F401
from hf_plugins.models.lns import LnsLlamaForCausalLM, to_lns
from hf_plugins.models.lns.diagnostics import depth_report, layer_pruning_curve
from hf_plugins.testing import tiny_model


def _batch():
    ids = torch.randint(6, 90, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


@torch.no_grad()
def test_depth_report_matches_transformers_hidden_states():
    """Our hooks vs transformers' `output_hidden_states` (whose entries 0..L-1 are the embeddings and the
    block outputs before the last), statistics recomputed here over the non-padding tokens."""
    model = to_lns(tiny_model("llama", num_hidden_layers=4, dtype=torch.float64))
    ids, mask = _batch()
    rep = depth_report(model, ids, mask)
    hs = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    keep = mask.bool()
    for i in range(4):  # h_0 .. h_3; the recorded last entry may be after the final norm depending on version
        h = hs[i][keep]
        assert math.isclose(rep["variance"][i], float(((h - h.mean()) ** 2).mean()), rel_tol=1e-10)
    for i in range(3):
        a, b = hs[i][keep], hs[i + 1][keep]
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        assert math.isclose(rep["angular_distance"][i], float((torch.arccos(cos) / math.pi).mean()), rel_tol=1e-9)
    assert len(rep["variance"]) == 5 and len(rep["angular_distance"]) == 4


@torch.no_grad()
def test_pruning_curve_equals_deleting_the_block():
    """Skipping block i through our hook equals the model rebuilt without block i (reference: a ModuleList
    with that block removed and num_hidden_layers reduced)."""
    model = tiny_model("lns_llama", num_hidden_layers=3, dtype=torch.float64)
    ids, mask = _batch()
    curve = layer_pruning_curve(model, ids, mask)
    layers = model.model.layers
    for i in range(3):
        model.model.layers = torch.nn.ModuleList([lay for j, lay in enumerate(layers) if j != i])
        model.config.num_hidden_layers = 2
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(ids, attention_mask=mask, labels=labels, use_cache=False).loss  # token-weighted mean
        assert math.isclose(curve["without"][i], math.exp(float(loss)), rel_tol=1e-6)  # HF loss is fp32
        model.model.layers, model.config.num_hidden_layers = layers, 3
    assert math.isclose(
        curve["full"], math.exp(float(model(ids, attention_mask=mask, labels=labels).loss)), rel_tol=1e-6
    )


def test_depth_report_cli(tmp_path, capsys):
    from hf_plugins.cli.main import main

    out = tmp_path / "report.json"
    rc = main(["depth-report", "tiny", "--num_samples", "4", "--compare_lns", "--output", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["reports"]) == {"tiny", "tiny (LNS on)"}
    pre, lns = data["reports"]["tiny"], data["reports"]["tiny (LNS on)"]
    assert pre["variance"][0] == lns["variance"][0] and pre["variance"][1] == lns["variance"][1]  # block 1: scale 1
    assert "angular" not in capsys.readouterr().err


def test_train_cli_pretrains_lns_and_its_baseline(tmp_path):
    """`--model-config lns_llama` and `--model-config llama` build the same sizes; only the flag differs."""
    from hf_plugins.cli.main import main

    tiny = [
        "--model_config_args",
        "hidden_size=32",
        "--model_config_args",
        "intermediate_size=64",
        "--model_config_args",
        "num_hidden_layers=3",
    ]
    for name in ("lns_llama", "llama"):
        rc = main(
            ["train", "--model_config", name, "--tokenizer", "tiny", "--method", "full", *tiny, "--max_steps", "2",
             "--train_size", "16", "--eval_size", "0", "--max_length", "48", "--logging_steps", "1",
             "--output_dir", str(tmp_path / name)]
        )  # fmt: skip
        assert rc == 0
    lns = LnsLlamaForCausalLM.from_pretrained(tmp_path / "lns_llama" / "model")
    assert lns.config.num_hidden_layers == 3 and lns.model.layers[2].input_layernorm.scale == 1 / math.sqrt(3)
    base = json.loads((tmp_path / "llama" / "model" / "config.json").read_text())
    assert base["model_type"] == "llama" and base["hidden_size"] == 32


def test_model_config_rejects_unknown_fields(tiny_tok):
    import pytest

    from hf_plugins.registry import MODEL_CONFIGS

    cfg = MODEL_CONFIGS["lns_llama"].build(tiny_tok, {})
    assert cfg.vocab_size == len(tiny_tok) and cfg.layernorm_scaling and cfg.num_hidden_layers == 12
    with pytest.raises(ValueError, match="hiden_size"):
        MODEL_CONFIGS["llama"].build(tiny_tok, {"hiden_size": 8})
