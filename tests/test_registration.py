"""Registration of outside tuner types with PEFT, and of our models with the Auto classes.

Registration is process-global state, so the end-to-end checks run in fresh subprocesses."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


TESTS = Path(__file__).parent


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


SAVE = """
import torch, hf_plugins, _shift_tuner
from peft import get_peft_model
from hf_plugins.testing import tiny_llama
base = tiny_llama()
base.save_pretrained("base")
cfg = _shift_tuner.ShiftConfig(task_type="CAUSAL_LM", init_value=0.0)
model = get_peft_model(base, cfg)
for n, p in model.named_parameters():
    if "hfpshift_" in n:
        torch.nn.init.normal_(p, std=0.5)   # non-zero so that a lost adapter would show
model.save_pretrained("adapter")
# Point the adapter at the local base so AutoModelForCausalLM.from_pretrained(adapter) can find it.
import json
meta = json.load(open("adapter/adapter_config.json")); meta["base_model_name_or_path"] = "base"
json.dump(meta, open("adapter/adapter_config.json", "w"))
ids = torch.arange(10).unsqueeze(0)
torch.save(model(ids).logits, "expected.pt")
assert model.get_model_status().peft_types == {"default": "HFPSHIFT"}, model.get_model_status().peft_types
print("saved")
"""

LOAD = """
import torch, hf_plugins, _shift_tuner
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM
ids = torch.arange(10).unsqueeze(0)
expected = torch.load("expected.pt")
cfg = PeftConfig.from_pretrained("adapter")
assert type(cfg).__name__ == "ShiftConfig", type(cfg)
m1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"), "adapter")
torch.testing.assert_close(m1(ids).logits, expected)
m2 = AutoModelForCausalLM.from_pretrained("base")
m2.load_adapter("adapter")
torch.testing.assert_close(m2(ids).logits, expected)
m3 = AutoModelForCausalLM.from_pretrained("adapter")
torch.testing.assert_close(m3(ids).logits, expected)
merged = m1.merge_and_unload()
torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)
print("loaded")
"""


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("shift")
    saved = _run(SAVE, path)
    assert saved.returncode == 0, saved.stderr[-3000:]
    return path


def test_outside_tuner_type_round_trips_through_every_entry_point(saved_adapter):
    """PeftConfig / PeftModel.from_pretrained, transformers' load_adapter and AutoModelForCausalLM on an
    adapter directory all find a tuner type registered by `register_peft_type`, in a fresh process."""
    tmp_path = saved_adapter
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "HFPSHIFT"
    loaded = _run(LOAD, tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "loaded" in loaded.stdout


def test_loading_without_registration_fails(saved_adapter):
    """The README says `import hf_plugins` is required; without the registration PEFT cannot load the adapter."""
    tmp_path = saved_adapter
    broken = _run(
        """
        from peft import PeftConfig
        PeftConfig.from_pretrained("adapter")
        """,
        tmp_path,
    )
    assert broken.returncode != 0
    assert "HFPSHIFT" in broken.stderr


def test_registration_is_idempotent():
    out = _run(
        """
        import hf_plugins, _shift_tuner, importlib
        from peft.utils import PeftType
        a = _shift_tuner.register(); b = _shift_tuner.register()
        assert a is b is PeftType.HFPSHIFT and PeftType("HFPSHIFT") is a and a.value == "HFPSHIFT"
        assert list(PeftType).count(a) == 1
        import hf_plugins.peft_registration as reg
        assert reg.is_registered("hfpshift")
        print("ok")
        """,
        TESTS,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_conflicting_registration_is_refused():
    out = _run(
        """
        import hf_plugins, _shift_tuner
        from hf_plugins.peft_registration import register_peft_type
        class Other(_shift_tuner.ShiftConfig):
            pass
        try:
            register_peft_type("hfpshift", Other, _shift_tuner.ShiftModel)
        except ValueError as e:
            print("refused:", e)
        """,
        TESTS,
    )
    assert "refused: PEFT type HFPSHIFT is already registered" in out.stdout, out.stderr[-2000:]


def test_guard_fails_loudly_when_peft_internals_change(monkeypatch):
    """If a peft upgrade renames the mapping dicts the helper fills, registration must raise, not half-work."""
    from peft import mapping

    from hf_plugins import peft_registration

    peft_registration.check_peft_internals()  # the installed peft is as expected
    monkeypatch.delattr(mapping, "PEFT_TYPE_TO_TUNER_MAPPING")
    with pytest.raises(RuntimeError, match="PEFT_TYPE_TO_TUNER_MAPPING"):
        peft_registration.check_peft_internals()
    with pytest.raises(RuntimeError, match="peft>=0.21,<0.22"):
        peft_registration.register_peft_type("hfpguard", object, object)


def test_bad_names_are_refused():
    from hf_plugins.peft_registration import register_peft_type

    with pytest.raises(ValueError, match="lower-case"):
        register_peft_type("Lift", object, object)
