"""The one RMSNorm of hf_plugins' model types (CoE, LNS, NeuroTrails), with an optional fixed output scale.

LayerNorm Scaling (arXiv 2502.05795, its LNS equation) multiplies the output of block l's pre-attention
and pre-MLP norm by 1/sqrt(l), l the 1-based block index. `ScaledRMSNorm` carries that factor as a Python float and
folds it into the learnable gain. Every model type builds its block-input norms from this class, switched by its
config's `layernorm_scaling` flag.

This file is saved next to the modeling file of every CoE / LNS / NeuroTrails checkpoint (transformers copies the
files a modeling file imports relatively), so it imports only torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


__all__ = ["ScaledRMSNorm", "layernorm_scale"]


def layernorm_scale(layer_idx: int) -> float:
    """1/sqrt(l) for the 0-based `layer_idx` (l = layer_idx + 1 counts blocks, not sub-layers; arXiv 2502.05795,
    LayerNorm Scaling equation)."""
    if layer_idx < 0:
        raise ValueError(f"`layer_idx` must be >= 0, got {layer_idx}")
    return 1.0 / math.sqrt(layer_idx + 1)


class ScaledRMSNorm(nn.Module):
    """RMSNorm whose output is multiplied by a fixed `scale`: `(weight * scale) * x / rms(x)`.

    Same parameter name (`weight`), eps and fp32 normalisation as transformers' `LlamaRMSNorm`; with `scale=1.0` it
    computes exactly what `LlamaRMSNorm` computes. It is deliberately not a subclass of `LlamaRMSNorm`: that class is
    tagged with `use_kernel_forward_from_hub("RMSNorm")`, and with the `kernels` package and `use_kernels=True`
    transformers replaces the `forward` of every module whose class carries the tag (an inherited tag included) by a
    hub kernel that knows nothing of `scale`. The class name contains "RMSNorm", so
    `PreTrainedModel._init_weights` initialises `weight` to ones.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        # The scale is a Python float, not a buffer: transformers v5 builds models on the meta device and only
        # `_init_weights` re-initialises tensors, so a buffer filled in __init__ would come back empty (the same
        # failure made LayerNorm Scaling silently wrong in allenai/OLMo-core PR #698).
        self.scale = float(scale)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        # The factor goes into the H-sized gain, not onto the activations: no extra pass over [B, T, H].
        weight = self.weight if self.scale == 1.0 else self.weight * self.scale
        return weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, scale={self.scale:.6g}"
