"""Helpers shared by the SEFT tests: a SEFT model on a copy of a base, its layers by name, a custom training loop."""

import copy

import torch
from peft import get_peft_model

from hf_plugins import SeftConfig
from hf_plugins.tuners.seft import SeftLayer


def seft_model(model, **kw):
    """SEFT (test defaults: density 0.05, a cycle every 2 steps) on a copy of `model`."""
    kw = {"density": 0.05, "update_interval": 2, "accumulation_steps": 1, "task_type": "CAUSAL_LM", **kw}
    return get_peft_model(copy.deepcopy(model), SeftConfig(**kw))


def seft_layers(pm):
    """`{module name: SeftLayer}` of a SEFT model."""
    return {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if isinstance(m, SeftLayer)}


def seft_train(pm, batch, steps, lr=1e-2, total=100, check=None):
    """`steps` AdamW steps on `batch` with the custom-loop calls; `total` is the run length SEFT schedules over
    (100: no step of a short test is the last one); `check(pm, counts)` runs after every cycle."""
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        pm.seft_prepare_step(step, total)
        pm(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        out = pm.seft_after_optimizer_step(opt, step, total)
        if out is not None and check is not None:
            check(pm, out)
        opt.zero_grad()
    return opt
