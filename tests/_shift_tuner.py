"""A minimal outside-PEFT tuner type ("HFPSHIFT": a trainable output shift per linear layer), used only to
test `register_peft_type` independently of the real methods. Imported by test subprocesses."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from torch import nn

from hf_plugins.peft_registration import register_peft_type


@dataclass
class ShiftConfig(PeftConfig):
    target_modules: list[str] | str | None = field(default=None)
    exclude_modules: list[str] | str | None = field(default=None)
    modules_to_save: list[str] | None = field(default=None)
    trainable_token_indices: list[int] | None = field(default=None)
    init_value: float = field(default=0.0)

    def __post_init__(self):
        super().__post_init__()
        from peft.utils import PeftType

        self.peft_type = PeftType.HFPSHIFT


class ShiftLayer(BaseTunerLayer):
    adapter_layer_names = ("hfpshift_bias",)

    def __init__(self, base_layer: nn.Linear):
        self.base_layer = base_layer
        self.hfpshift_bias = nn.ParameterDict({})
        self._disable_adapters = False
        self.merged_adapters = []


class ShiftLinear(nn.Module, ShiftLayer):
    def __init__(self, base_layer, adapter_name, init_value):
        super().__init__()
        ShiftLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, init_value)

    def update_layer(self, adapter_name, init_value):
        out = self.get_base_layer().out_features
        self.hfpshift_bias[adapter_name] = nn.Parameter(torch.full((out,), float(init_value)))
        self.set_adapter(self.active_adapters)

    def get_delta_bias(self, adapter):
        return self.hfpshift_bias[adapter]

    def merge(self, safe_merge=False, adapter_names=None):
        base = self.get_base_layer()
        for name in check_adapters_to_merge(self, adapter_names):
            if base.bias is None:
                base.bias = nn.Parameter(torch.zeros(base.out_features, dtype=base.weight.dtype), requires_grad=False)
            base.bias.data += self.get_delta_bias(name).to(base.bias.dtype)
            self.merged_adapters.append(name)

    def unmerge(self):
        base = self.get_base_layer()
        while self.merged_adapters:
            base.bias.data -= self.get_delta_bias(self.merged_adapters.pop()).to(base.bias.dtype)

    def forward(self, x, *args, **kwargs):
        out = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return out
        for name in self.active_adapters:
            if name in self.hfpshift_bias:
                out = out + self.hfpshift_bias[name].to(out.dtype)
        return out


class ShiftModel(BaseTuner):
    prefix = "hfpshift_"
    tuner_layer_cls = ShiftLayer
    target_module_mapping = {"llama": ["q_proj", "v_proj"]}

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, ShiftLayer):
            target.update_layer(adapter_name, config.init_value)
            return
        new = ShiftLinear(target, adapter_name, config.init_value)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)


def register():
    return register_peft_type("hfpshift", ShiftConfig, ShiftModel)


register()
