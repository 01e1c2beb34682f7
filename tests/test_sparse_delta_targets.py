"""Default target modules of LIFT and SEFT: one table for both, derived from PEFT's own per-model-type table of all
linear projections, with every `nn.Linear` but the output head for model types outside it (tiny models built here)."""

import pytest
import torch
from peft import get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING

import hf_plugins  # noqa: F401  (registers LIFT and SEFT)
from hf_plugins import LiftConfig, SeftConfig
from hf_plugins.pruning import prune_model
from hf_plugins.testing import tiny_model
from hf_plugins.tuners._sparse_delta import SparseDeltaLayer
from hf_plugins.tuners._sparse_delta_tuner import SPARSE_DELTA_TARGET_MODULES, default_target_modules


SEVEN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _adapted(model) -> set[str]:
    return {
        name.removeprefix("base_model.model.") for name, m in model.named_modules() if isinstance(m, SparseDeltaLayer)
    }


def _all_linears_but_the_head(model) -> set[str]:
    head = model.get_output_embeddings()
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


def _pruned(family):
    model = tiny_model(family)
    prune_model(model, "magnitude", 0.5)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_known_families_adapt_the_seven_projections_with_lift_and_seft(family):
    """`get_peft_model(model, LiftConfig())` and `SeftConfig()` adapt the same modules, q/k/v/o/gate/up/down of every
    block (LIFT used to raise for Qwen3 while SEFT did not)."""
    lift = get_peft_model(tiny_model(family), LiftConfig(r=2, task_type="CAUSAL_LM"))
    seft = get_peft_model(_pruned(family), SeftConfig(density=0.05, task_type="CAUSAL_LM"))
    assert _adapted(lift) == _adapted(seft)
    assert {n.rsplit(".", 1)[-1] for n in _adapted(lift)} == SEVEN
    assert len(_adapted(lift)) == 7 * 2


def test_an_unknown_family_gets_every_linear_but_the_output_head():
    """Phi-3 (fused qkv_proj / gate_up_proj) is not in the table: both tuners adapt every nn.Linear except lm_head."""
    assert "phi3" not in SPARSE_DELTA_TARGET_MODULES
    base = tiny_model("phi3")
    expected = _all_linears_but_the_head(base)
    assert {n.rsplit(".", 1)[-1] for n in expected} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    lift = get_peft_model(base, LiftConfig(r=2, task_type="CAUSAL_LM"))
    seft = get_peft_model(_pruned("phi3"), SeftConfig(density=0.05, task_type="CAUSAL_LM"))
    assert _adapted(lift) == expected
    assert _adapted(seft) == expected


def test_the_table_is_pefts_all_projection_table_plus_our_model_types():
    """Every PEFT row is kept as is; our model types get Llama's names; the fallback is PEFT's "all-linear"."""
    for model_type, names in TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING.items():
        assert SPARSE_DELTA_TARGET_MODULES[model_type] == list(names)
    for model_type in ("lns_llama", "lns_qwen2", "coe", "neurotrails"):
        assert set(SPARSE_DELTA_TARGET_MODULES[model_type]) == SEVEN
    assert default_target_modules("no_such_model") == "all-linear"
