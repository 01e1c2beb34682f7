"""Measure the curse of depth on any decoder: per-layer residual-stream variance, the angular distance
between consecutive layers' hidden states, and optionally the layer-pruning curve.

- variance of block l's output h_l over (tokens x features), padding excluded (the paper's argument: Pre-LN
  output variance grows with depth);
- angular distance d(h_l, h_{l+1}) = arccos(cos(h_l, h_{l+1})) / pi, averaged over tokens (the paper's
  measure of how much a block changes its input; small values = the block is almost an identity);
- pruning curve: perplexity after skipping each single block (the paper's layer-pruning analysis: under
  Pre-LN removing a deep block hurts little).

`h_0` is the block stack's input (the embeddings); the final norm is not included. Works on any model whose
decoder blocks are `model.model.layers` (Llama, Qwen2, Mistral, our LNS types, ...).
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import torch
from torch import nn


__all__ = ["depth_report", "format_depth_report", "layer_pruning_curve", "plot_depth_reports"]


def _blocks(model) -> nn.ModuleList:
    base = getattr(model, "get_base_model", lambda: model)()
    for path in ("model.layers", "layers", "transformer.h", "gpt_neox.layers"):
        try:
            layers = base.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder blocks of {type(base).__name__} (looked for `model.layers`)")


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def _capture(layers: nn.ModuleList):
    """Collect the input of block 0 and the output of every block (tensor or tuple outputs, any version)."""
    states: list[torch.Tensor | None] = [None] * (len(layers) + 1)

    def pre_hook(module, args, kwargs):
        states[0] = args[0] if args else kwargs["hidden_states"]

    def make_hook(i):
        def hook(module, args, output):
            states[i + 1] = _first(output)

        return hook

    handles = [layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def depth_report(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
    """Per-layer statistics of one batch.

    Returns `{"variance": [L+1 floats, h_0..h_L], "angular_distance": [L floats, d(h_l, h_{l+1})],
    "num_layers": L}`. Statistics are computed in fp64 over the non-padding tokens.
    """
    layers = _blocks(model)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    was_training = model.training
    model.eval()
    try:
        with _capture(layers) as states:
            model(
                input_ids=input_ids,
                attention_mask=None if attention_mask is None else attention_mask.to(device),
                use_cache=False,
            )
    finally:
        model.train(was_training)
    hs = [s[mask].double() for s in states]  # [tokens, hidden] each
    variance = [float(h.var(unbiased=False)) for h in hs]
    angular = []
    for a, b in itertools.pairwise(hs):
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
        angular.append(float((torch.arccos(cos) / math.pi).mean()))
    return {"num_layers": len(layers), "variance": variance, "angular_distance": angular}


@contextmanager
def _skip_block(layer: nn.Module):
    """Make `layer` return its input unchanged (the block is still computed, its output discarded)."""

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        return hidden

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _perplexity(model, input_ids, attention_mask) -> float:
    labels = input_ids.masked_fill(~attention_mask.bool(), -100)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.double()
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    return math.exp(float(nll) / max(int((labels[:, 1:] != -100).sum()), 1))  # token-weighted


@torch.no_grad()
def layer_pruning_curve(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
    """Perplexity of the full model and after skipping each single block: `{"full": ppl, "without": [L]}`."""
    layers = _blocks(model)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    was_training = model.training
    model.eval()
    try:
        full = _perplexity(model, input_ids, attention_mask)
        without = []
        for layer in layers:
            with _skip_block(layer):
                without.append(_perplexity(model, input_ids, attention_mask))
    finally:
        model.train(was_training)
    return {"full": full, "without": without}


def format_depth_report(report: dict, pruning: dict | None = None) -> str:
    """A plain-text table: one row per block."""
    lines = [f"{'layer':>5} {'variance':>12} {'ang.dist':>9}" + (f" {'ppl w/o':>10}" if pruning else "")]
    lines.append(
        f"{'emb':>5} {report['variance'][0]:12.4e} {'':>9}" + (f" {pruning['full']:10.3f}" if pruning else "")
    )
    for i in range(report["num_layers"]):
        row = f"{i + 1:>5} {report['variance'][i + 1]:12.4e} {report['angular_distance'][i]:9.4f}"
        if pruning:
            row += f" {pruning['without'][i]:10.3f}"
        lines.append(row)
    if pruning:
        lines.append("(first row of `ppl w/o`: the full model's perplexity)")
    return "\n".join(lines)


def plot_depth_reports(reports: dict[str, dict], path: str, pruning: dict[str, dict] | None = None) -> str:
    """Plot one or more named reports (e.g. {"Pre-LN": r1, "LNS": r2}) to `path` (png/pdf); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or the `plot` extra)") from exc
    ncols = 3 if pruning else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.5 * ncols, 3.6))
    for name, rep in reports.items():
        axes[0].plot(range(len(rep["variance"])), rep["variance"], marker="o", ms=3, label=name)
        axes[1].plot(range(1, rep["num_layers"] + 1), rep["angular_distance"], marker="o", ms=3, label=name)
    axes[0].set(yscale="log", xlabel="layer (0 = embeddings)", ylabel="output variance", title="residual variance")
    axes[1].set(xlabel="layer l", ylabel="arccos(cos(h_{l-1}, h_l)) / pi", title="angular distance")
    if pruning:
        for name, cur in pruning.items():
            axes[2].plot(range(1, len(cur["without"]) + 1), cur["without"], marker="o", ms=3, label=name)
            axes[2].axhline(cur["full"], ls=":", lw=1)
        axes[2].set(xlabel="removed layer", ylabel="perplexity", title="layer pruning")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
