"""DeepSpeed replaces a custom optimizer when its config has an `optimizer` section: our factories refuse that
configuration (and ZeRO-3) with a clear error instead of silently training with another optimizer."""

from types import SimpleNamespace

import pytest

from hf_plugins import AlphaDecay, StableSPAM


def _args(deepspeed):
    return SimpleNamespace(
        learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, max_steps=10,
        deepspeed=deepspeed, hf_deepspeed_config=None,
    )  # fmt: skip


@pytest.mark.parametrize("factory, name", [(StableSPAM, "StableSPAM"), (AlphaDecay, "AlphaDecay")])
def test_deepspeed_optimizer_section_is_refused(factory, name):
    with pytest.raises(ValueError, match=name):
        factory.from_args(_args({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}))


@pytest.mark.parametrize("factory", [StableSPAM, AlphaDecay])
def test_zero3_is_refused_and_client_optimizer_path_is_allowed(factory):
    with pytest.raises(ValueError, match="ZeRO-3|stage 3"):
        factory.from_args(_args({"zero_optimization": {"stage": 3}}))
    cls, kwargs = factory.from_args(_args({"zero_optimization": {"stage": 2}}))  # our optimizer as client optimizer
    assert cls is factory and kwargs["lr"] == 1e-3
    assert factory.from_args(_args(None))[1]["lr"] == 1e-3
