"""The sparse baselines SEFT is compared with, built on stock PEFT LoRA.

- **LoRA*** (the paper's baseline): dense LoRA on the pruned model, then merge and re-prune the merged model with
  Wanda back to the base's sparsity, on the same kind of calibration data. `lora_star_merge_(peft_model, ...)`
  does the post-training step in place; `LoraStarCallback` runs it in `on_train_end`.
- **SQFT-like** (Muñoz et al. 2024, second-hand description): LoRA whose delta is masked by the base's support,
  W0 + (BA) ⊙ 1_supp(W0), in training (optional, on by default) and at merge. `sqft_merge_(peft_model)` merges
  with the mask; `SqftCallback` masks the LoRA forward during training and merges at `on_train_end`.

After either merge the PeftModel computes the sparse model (its LoRA layers are marked merged);
`peft_model.unload()` returns the plain sparse model. The saved LoRA adapter is the unmasked A/B: apply the same
function after loading it.
"""

from __future__ import annotations

import logging
import types

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import TrainerCallback

from ...pruning import arithmetic_texts, calibration_windows, prunable_linears, prune_model, text_file_texts


__all__ = ["LoraStarCallback", "SqftCallback", "base_sparsity", "lora_star_merge_", "sqft_merge_"]

logger = logging.getLogger(__name__)


def _lora_layers(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def _inner_model(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def base_sparsity(model: nn.Module) -> dict[str, float]:
    """Measured sparsity of every prunable base matrix (`hf_plugins.pruning.prunable_linears` names)."""
    return {
        name: float((lin.weight == 0).sum()) / lin.weight.numel()
        for name, lin in prunable_linears(_inner_model(model)).items()
    }


@torch.no_grad()
def lora_star_merge_(
    peft_model: nn.Module,
    calibration: torch.Tensor,
    sparsity: float | dict[str, float],
    n_m: str | None = None,
    batch_size: int = 8,
):
    """LoRA*: merge the LoRA adapters into the base weights, then prune the merged weights with Wanda (per output
    row, as Wanda) to `sparsity` (a float, or the `base_sparsity(model)` dict recorded before training) or the N:M
    pattern. In place; returns the `PruningReport`."""
    peft_model.merge_adapter()
    return prune_model(
        _inner_model(peft_model), "wanda", sparsity, n_m=n_m, calibration=calibration, batch_size=batch_size
    )


@torch.no_grad()
def sqft_merge_(peft_model: nn.Module) -> dict[str, int]:
    """SQFT-like merge: W <- W0 + (BA) ⊙ 1_supp(W0) for every LoRA layer, in place. Returns non-zeros per layer."""
    out = {}
    for name, layer in _lora_layers(peft_model):
        base = layer.get_base_layer()
        support = base.weight != 0
        layer.merge()
        base.weight.masked_fill_(~support, 0)
        out[name] = int(support.sum())
    return out


def _sqft_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """LoRA forward with the delta masked by the base support: F.linear(x, W0 + s * (B A) ⊙ 1_supp(W0), b).

    The dense masked delta of this one layer is built per forward (what SQFT's sparse merge needs in training);
    LoRA dropout is not applied on this path."""
    active = [a for a in self.active_adapters if a in self.lora_A]
    if self.disable_adapters or self.merged or not active:
        return self._sqft_lora_forward(x, *args, **kwargs)
    base = self.get_base_layer()
    w0 = base.weight
    delta = None
    for a in active:
        d = (self.lora_B[a].weight @ self.lora_A[a].weight) * self.scaling[a]
        delta = d if delta is None else delta + d
    weight = w0 + (delta * (w0 != 0)).to(w0.dtype)
    return nn.functional.linear(
        x.to(weight.dtype) if not torch.is_autocast_enabled(x.device.type) else x, weight, base.bias
    )


def mask_lora_in_training_(peft_model: nn.Module) -> int:
    """Route every LoRA linear's forward through `_sqft_forward` (per instance); returns the number patched."""
    count = 0
    for _, layer in _lora_layers(peft_model):
        if isinstance(layer, LoraLinear) and not hasattr(layer, "_sqft_lora_forward"):
            layer._sqft_lora_forward = layer.forward
            layer.forward = types.MethodType(_sqft_forward, layer)
            count += 1
    return count


class SqftCallback(TrainerCallback):
    """SQFT-like baseline: masked LoRA forward during training (`mask_in_training`), masked merge at the end."""

    def __init__(self, mask_in_training: bool = True, merge_at_end: bool = True):
        self.mask_in_training = mask_in_training
        self.merge_at_end = merge_at_end

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.mask_in_training:
            logger.info("SQFT: masked the LoRA forward of %d layers", mask_lora_in_training_(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.merge_at_end:
            sqft_merge_(model)


class LoraStarCallback(TrainerCallback):
    """LoRA* baseline: records the base's per-matrix sparsity at `on_train_begin`, merges and re-prunes with Wanda
    at `on_train_end` (calibration: the embedded arithmetic text, or `calib_text`, tokenized by the trainer's
    processing class)."""

    def __init__(self, calib_text: str | None = None, nsamples: int = 32, seqlen: int = 256, n_m: str | None = None):
        self.calib_text, self.nsamples, self.seqlen, self.n_m = calib_text, nsamples, seqlen, n_m
        self.sparsity: dict[str, float] | None = None
        self.report = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.sparsity = base_sparsity(model)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if processing_class is None:
            raise ValueError("LoRA* re-pruning needs the tokenizer: pass processing_class= to the trainer")
        tok = getattr(processing_class, "tokenizer", processing_class)
        texts = text_file_texts(self.calib_text) if self.calib_text else arithmetic_texts()
        device = next(model.parameters()).device
        calib = calibration_windows(tok, texts, self.nsamples, self.seqlen).to(device)
        self.report = lora_star_merge_(model, calib, self.sparsity, n_m=self.n_m)
        logger.info("LoRA*: re-pruned the merged model with Wanda to overall sparsity %.4f", self.report.overall)
